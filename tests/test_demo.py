"""The demo: committed task data match the generator, training is reproducible, and a reduced
demo runs end to end (train, publish, search, push, re-score the pushed model, table, picture).

The reduced demo trains a quarter of the steps and runs 20 trials, so it does not assert the
paper's effect (the full ``make demo`` shows it); it asserts what must hold at any size.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hf_recycle.demo.pool import DEMO_PLAN, TRUNK, Stage, scaled_plan, train_pool
from hf_recycle.demo.run import WEIGHT_THRESHOLD, format_summary, returned_label, summarize
from hf_recycle.demo.tasks import (
    SEARCH_SIZE,
    TASK_NAMES,
    TASKS,
    TEST_SIZE,
    VALIDATION_SIZE,
    TrainingStream,
    eval_examples,
    mixture_of,
    write_task_data,
)
from hf_recycle.recipe import Recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_committed_data_match_the_generator(tmp_path):
    for path in write_task_data(tmp_path):
        assert path.read_text() == (RECIPES / "data" / path.name).read_text()


def test_task_answers_are_right():
    rng = random.Random(0)
    for _ in range(200):
        q, a = TASKS["sorting"].make(rng)
        assert sorted(q) == list(a) and a == "".join(sorted(a)) and len(q) == len(a)
        q, a = TASKS["reversal"].make(rng)
        assert a[::-1] == q


def test_demo_recipe_matches_the_tasks():
    recipe = Recipe.from_yaml(RECIPES / "demo.yaml")
    assert [t.name for t in recipe.tasks] == list(TASK_NAMES)
    for spec in recipe.tasks:
        task = TASKS[spec.name]
        assert spec.prompt == task.prompt
        # room for the longest answer and its EOS: a correct answer must also stop
        assert spec.max_new_tokens == task.max_answer_chars + 1
        assert spec.search_split == f"train[:{SEARCH_SIZE}]"
        assert spec.validation_split == f"train[{SEARCH_SIZE}:{SEARCH_SIZE + VALIDATION_SIZE}]"
        assert spec.test_split == f"train[{SEARCH_SIZE + VALIDATION_SIZE}:]"
    assert all(len(eval_examples(t)) == SEARCH_SIZE + VALIDATION_SIZE + TEST_SIZE for t in TASK_NAMES)
    # every baseline trial (uniform, K singles, K - 1 greedy soups), then at least ten
    # generations of CMA-ES (population 4 + floor(3 ln K)) of its own
    k = len(DEMO_PLAN)
    assert recipe.search.trials >= 1 + k + (k - 1) + 10 * (4 + int(3 * math.log(k)))


def test_training_never_draws_an_evaluation_question():
    held_out = {q for task in TASK_NAMES for q, _ in eval_examples(task)}
    stream = TrainingStream(seed=0)
    prompts = [stream.sample(mixture_of(0.5))[0][:-1] for _ in range(4000)]
    assert not held_out.intersection(prompts)


def test_mixture_decides_the_tasks_drawn():
    stream = TrainingStream(seed=1)
    only_sorting = {stream.sample(mixture_of(1.0))[0][-1] for _ in range(200)}
    only_reversal = {stream.sample(mixture_of(0.0))[0][-1] for _ in range(200)}
    assert only_sorting == {":"} and only_reversal == {">"}
    with pytest.raises(ValueError):
        mixture_of(1.5)


def test_training_is_reproducible(tmp_path):
    plan = (
        Stage(TRUNK, None, 4, 3e-3, mixture_of(0.5), warmup=2, seed=1),
        Stage("step-1", TRUNK, 3, 3e-3, mixture_of(1.0), warmup=1, seed=2),
    )
    first = train_pool(tmp_path / "a", plan)
    second = train_pool(tmp_path / "b", plan)
    for name in ("step-0", "step-1"):
        a = load_file(first[name] / "model.safetensors")
        b = load_file(second[name] / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    trunk, branch = (
        load_file(first["step-0"] / "model.safetensors"),
        load_file(first["step-1"] / "model.safetensors"),
    )
    assert any(not (trunk[k] == branch[k]).all() for k in trunk)  # the branch did train
    with pytest.raises(ValueError, match="does not come before it"):
        train_pool(tmp_path / "c", plan[::-1])


def test_summary_counts_weights_and_margins():
    results = {
        "winner": {"weights": [0.5, 0.3, 0.19, 0.01], "test": {"mean": 0.8}},
        "baselines": {"uniform": {"test": {"mean": 0.7}}, "greedy_soup": {"test": {"mean": 0.8}}},
    }
    summary = summarize(results)
    assert summary["checkpoints_used"] == 3 and summary["checkpoints"] == 4
    assert summary["weight_threshold"] == WEIGHT_THRESHOLD
    assert summary["beats"] == {"uniform": True, "greedy_soup": False}
    assert summary["margins"]["uniform"] == pytest.approx(0.1)
    text = format_summary(summary)
    assert (
        "optimized merge 0.800 vs greedy soup 0.800: +0.000 (not better)" in text
        and "3 of 4 checkpoints" in text
    )
    results["winner"]["baseline"] = "greedy_soup"  # no optimized merge beat it: the output says so
    assert "returned: greedy soup 0.800 vs uniform soup" in format_summary(summarize(results))


@pytest.mark.slow
def test_reduced_demo_runs_end_to_end(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from hf_recycle.demo.run import REPO_ID, run_demo
    from hf_recycle.testing.local_hub import LocalHub

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)  # the demo serves its own Hub on 127.0.0.1

    printed: list[str] = []
    out = tmp_path / "demo"
    result = run_demo(out, steps_scale=0.25, trials=20, echo=lambda *a: printed.append(" ".join(map(str, a))))

    # results.json: the search issue's schema, every number a real score
    saved = json.loads((out / "results.json").read_text())
    assert saved == result.results
    assert [t["name"] for t in saved["tasks"]] == list(TASK_NAMES)
    assert saved["trials"] + saved["trials_pruned"] == 20  # racing stops some trials early
    assert saved["examples_scored"]["trials"] == 20 and len(saved["checkpoints"]) == len(DEMO_PLAN)
    assert [c["revision"] for c in saved["checkpoints"]] == [s.name for s in DEMO_PLAN]
    winner = saved["winner"]
    assert len(winner["weights"]) == len(DEMO_PLAN) and sum(winner["weights"]) == pytest.approx(1.0)
    assert min(winner["weights"]) >= 0
    assert set(saved["baselines"]) == {"uniform", "best_single", "greedy_soup"}
    returned = winner.get("baseline")
    for entry in [winner, *saved["baselines"].values()]:
        for split in ("search", "test"):
            assert set(entry[split]) == {*TASK_NAMES, "mean"}
            assert all(0.0 <= v <= 1.0 for v in entry[split].values())
    if returned is None:  # an optimized merge beat the best baseline (selection in results.json)
        assert winner["search"]["mean"] > saved["baselines"][saved["selection"]["baseline"]]["search"]["mean"]
    else:  # no optimized merge did: the winner is that baseline
        assert saved["selection"]["baseline_returned"]
        assert winner["trial"] == saved["baselines"][returned]["trial"]

    # pushed to the local Hub, and the pushed model is the one the search measured
    assert result.push_url and f"{REPO_ID}-recycled/commit/" in result.push_url
    assert result.pushed_test == winner["test"]
    with LocalHub(root=out / "hub") as hub:  # the server keeps its repos across restarts
        api = hub.api()
        refs = api.list_repo_refs(REPO_ID)
        assert {b.name for b in refs.branches} >= {"base", *(s.name for s in DEMO_PLAN)}
        files = set(api.list_repo_files(f"{REPO_ID}-recycled"))
        assert {"config.json", "README.md", "model.safetensors", "checkpoints.lock.json"} <= files

    # the table: every checkpoint, the three baselines and the merge, printed
    kinds = [row["kind"] for row in result.table]
    assert kinds == ["checkpoint"] * len(DEMO_PLAN) + ["baseline"] * 3 + ["merge"]
    assert any(line.startswith("| model | sorting | reversal | mean |") for line in printed)
    assert any(f"**{returned_label(saved)}**" in line for line in printed)
    assert any(f"checkpoints have merge weight >= {WEIGHT_THRESHOLD:g}" in line for line in printed)
    assert result.summary == summarize(saved)
    demo = json.loads((out / "demo.json").read_text())
    assert demo["summary"] == result.summary and demo["tasks"] == list(TASK_NAMES)
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scaled_plan_keeps_the_lineage():
    plan = scaled_plan(DEMO_PLAN, 0.25)
    assert [(s.name, s.parent) for s in plan] == [(s.name, s.parent) for s in DEMO_PLAN]
    assert all(s.steps == max(1, round(d.steps * 0.25)) for s, d in zip(plan, DEMO_PLAN, strict=True))
