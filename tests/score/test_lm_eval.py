"""The ``lm_eval`` task kind: lm-evaluation-harness tasks scored on the live model, offline.

The tasks are the custom ones in tests/data/lm_eval_tasks (a multiple-choice and a generation
task over local jsonl, found through ``include_path``); their YAMLs name their data relative
to the repository root, as ``lm_eval`` reads them from the current folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from score_reference import reference_generate, reference_logprob

from hf_recycle import cli
from hf_recycle._score.api import load_model, score
from hf_recycle._score.lm_eval_scorer import LmEvalScorer
from hf_recycle._score.tasks import TaskSpec
from hf_recycle.errors import TaskError
from hf_recycle.preflight import check_file

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tests" / "data" / "lm_eval_tasks"
LIMIT = 8  # search split docs[:8], test split docs[8:] (each task has 12 documents)


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / f"{name}.jsonl").read_text().splitlines()]


def lm_eval_task(name: str, task: str, metric: str, **fields) -> dict:
    lm_eval = {"task": task, "include_path": str(TASKS), **fields.pop("lm_eval", {})}
    return {"name": name, "kind": "lm_eval", "lm_eval": lm_eval, "metric": metric,
            "search_split": f"docs[:{LIMIT}]", "test_split": f"docs[{LIMIT}:]", **fields}  # fmt: skip


def write_recipe(folder: Path, tasks: list[dict], **top) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "lm-eval", "tasks": tasks, **top}))
    return path


@pytest.fixture
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.fixture(scope="module")
def lm_eval_cli(llama_pool, tmp_path_factory):
    """``lm_eval --model hf ... --limit 8 --num_fewshot 2 --log_samples`` on the pool's base, once:
    ``(base folder, results by task, logged samples by task)``."""
    base = llama_pool[0]
    out = tmp_path_factory.mktemp("lm-eval-cli")
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={base}",
               "--tasks", "hfr_mc,hfr_gen", "--include_path", str(TASKS), "--limit", str(LIMIT),
               "--num_fewshot", "2", "--output_path", str(out), "--log_samples"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    samples = {
        task: [
            json.loads(line) for line in next(out.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()
        ]
        for task in ("hfr_mc", "hfr_gen")
    }
    return base, results, samples


@pytest.mark.slow
def test_score_equals_the_lm_eval_command(lm_eval_cli, tmp_path, capsys, at_repo_root):
    base, results, samples = lm_eval_cli
    few = {"lm_eval": {"num_fewshot": 2}, "batch_size": 1}  # lm_eval's defaults: batch size 1
    recipe = write_recipe(
        tmp_path,
        [
            lm_eval_task("mc", "hfr_mc", "acc,none", **few),
            lm_eval_task("mc_norm", "hfr_mc", "acc_norm,none", **few),
            lm_eval_task("gen", "hfr_gen", "exact_match,none", **few),
            lm_eval_task("gen_chrf", "hfr_gen", "chrf,none", **few),  # a corpus metric
            lm_eval_task("gen_ter", "hfr_gen", "ter,digits", **few),  # lower is better, another filter
        ],
    )
    assert cli.main(["score", str(base), "--recipe", str(recipe), "--split", "search", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)["scores"]
    assert scores == {
        "mc": results["hfr_mc"]["acc,none"],
        "mc_norm": results["hfr_mc"]["acc_norm,none"],
        "gen": results["hfr_gen"]["exact_match,none"],
        "gen_chrf": results["hfr_gen"]["chrf,none"],
        "gen_ter": results["hfr_gen"]["ter,digits"],
    }
    assert 0 < scores["mc"] < 1 and scores["mc"] != scores["mc_norm"]  # not a degenerate comparison
    # per document: the answers and metric values that lm_eval logged
    report = score(base, recipe, split="search")
    mc_logged = [s for s in samples["hfr_mc"] if s["filter"] == "none"]
    gen_logged = [s for s in samples["hfr_gen"] if s["filter"] == "none"]
    assert [s["doc_id"] for s in mc_logged] == list(range(LIMIT))
    assert list(report.results["mc"].per_example) == [s["acc"] for s in mc_logged]
    assert list(report.results["mc_norm"].per_example) == [s["acc_norm"] for s in mc_logged]
    assert list(report.results["gen"].predictions) == [s["filtered_resps"][0] for s in gen_logged]
    assert report.results["gen_ter"].higher_is_better is False
    assert report.mean == pytest.approx(
        (sum(v for k, v in scores.items() if k != "gen_ter") - scores["gen_ter"]) / 5
    )


def test_choice_and_generation_against_plain_forwards(llama_pool, tmp_path, at_repo_root):
    """No few-shot: each option's log-likelihood after the question decides the answer (acc), and
    the generation is the model's greedy continuation, cut at the newline."""
    model, tokenizer = load_model(llama_pool[0], device="cpu")
    mc = LmEvalScorer(TaskSpec.model_validate(lm_eval_task("mc", "hfr_mc", "acc,none")), tokenizer, "test")
    result = mc.score(model)
    rows = _rows("mc_test")[LIMIT:]
    picked = []
    for row in rows:
        lls = [reference_logprob(model, tokenizer, row["question"], " " + c)[0] for c in row["choices"]]
        picked.append(max(range(len(lls)), key=lls.__getitem__))
    assert list(result.predictions) == picked
    assert list(result.per_example) == [float(p == r["label"]) for p, r in zip(picked, rows, strict=True)]
    assert result.value == sum(result.per_example) / len(rows)

    gen = LmEvalScorer(
        TaskSpec.model_validate(lm_eval_task("gen", "hfr_gen", "chrf,none")), tokenizer, "test"
    )
    result = gen.score(model)
    expected = [
        reference_generate(model, tokenizer, r["question"], 6, stop=("\n",))
        for r in _rows("gen_test")[LIMIT:]
    ]
    assert [p.strip() for p in result.predictions] == expected
    import sacrebleu

    references = [r["answer"] for r in _rows("gen_test")[LIMIT:]]
    assert result.value == sacrebleu.corpus_chrf(list(result.predictions), [references]).score


def test_limit_and_resume_give_a_fresh_score(llama_pool, at_repo_root):
    model, tokenizer = load_model(llama_pool[1][0], device="cpu")
    spec = TaskSpec.model_validate(lm_eval_task("gen", "hfr_gen", "chrf,none", lm_eval={"num_fewshot": 1}))
    scorer = LmEvalScorer(spec, tokenizer, "search")
    fresh = scorer.score(model)
    first = scorer.score(model, limit=3)
    assert first.per_example == fresh.per_example[:3] and first.predictions == fresh.predictions[:3]
    resumed = scorer.score(model, resume=first)
    assert resumed == fresh and resumed.predictions == fresh.predictions  # the corpus chrf over all 8
    model.train()
    scorer.score(model, limit=1)
    assert model.training  # given back in its mode
    with pytest.raises(TaskError, match="not an earlier, shorter result"):
        scorer.score(model, limit=2, resume=fresh)


def test_splits_that_share_documents_are_refused_when_the_task_loads(llama_pool, at_repo_root):
    """docs[-5:] and docs[:8] cannot be compared without the document count: the scorer checks them."""
    spec = TaskSpec.model_validate(
        {**lm_eval_task("mc", "hfr_mc", "acc,none"), "search_split": "docs[-5:]", "test_split": "docs[:8]"}
    )
    with pytest.raises(TaskError, match=r"share 1 of the task's 12 documents \(from document 7\)"):
        LmEvalScorer(spec, None, "search")


def test_schema_problems():
    def problems(**fields):
        with pytest.raises(ValueError) as info:
            TaskSpec.model_validate({**lm_eval_task("t", "hfr_mc", "acc,none"), **fields})
        return str(info.value)

    assert "write docs, docs[:200]" in problems(search_split="train[:8]")
    assert "overlaps search_split 'docs[:8]' (rows 4 to 7 of 'docs' are in both)" in problems(
        test_split="docs[4:]"
    )
    assert 'write the metric and its filter as lm-eval reports them, like "acc,none"' in problems(
        metric="acc"
    )
    assert "kind 'lm_eval' needs 'metric'" in problems(metric=None)
    assert "'prompt' does not apply to kind 'lm_eval'" in problems(prompt="{q}")
    assert "'chat_template' is not supported for kind 'lm_eval'" in problems(chat_template=True)
    with pytest.raises(ValueError, match="'lm_eval' is only for kind 'lm_eval', not 'generate'"):
        TaskSpec.model_validate(
            {"name": "g", "data": "json", "prompt": "a", "target": "b", "lm_eval": {"task": "x"}}
        )
    # the direction is lm-eval's metadata of the metric
    assert TaskSpec.model_validate(lm_eval_task("t", "hfr_gen", "ter,none")).larger_is_better is False
    assert TaskSpec.model_validate(lm_eval_task("t", "hfr_mc", "acc,none")).larger_is_better is True


def test_validate_finds_tasks_and_metric_keys_offline(tmp_path):
    group = tmp_path / "tasks"
    group.mkdir()
    (group / "both.yaml").write_text("group: hfr_both\ntask: [hfr_mc, hfr_gen]\n")
    for name in ("hfr_mc.yaml", "hfr_gen.yaml"):
        (group / name).write_text((TASKS / name).read_text())
    recipe = write_recipe(
        tmp_path,
        [
            # include_path relative to the recipe's folder
            lm_eval_task("ok", "hfr_mc", "acc_norm,none", lm_eval={"include_path": "tasks"}),
            lm_eval_task("typo", "hfr_mcc", "acc,none", lm_eval={"include_path": "tasks"}),
            lm_eval_task("metric", "hfr_gen", "exact_match,digit", lm_eval={"include_path": "tasks"}),
            lm_eval_task("group", "hfr_both", "acc,none", lm_eval={"include_path": "tasks"}),
            lm_eval_task("folder", "hfr_mc", "acc,none", lm_eval={"include_path": "nowhere"}),
        ],
        checkpoints=["a", "b"],
    )
    report = check_file(recipe)
    errors = {report.where(loc).split(": ", 1)[1]: msg for loc, msg in report.errors}
    assert set(errors) == {"tasks[1].lm_eval.task", "tasks[2].metric", "tasks[3].lm_eval.task",
                           "tasks[4].lm_eval.include_path"}  # fmt: skip
    assert (
        "no task 'hfr_mcc'" in errors["tasks[1].lm_eval.task"]
        and "did you mean hfr_mc" in errors["tasks[1].lm_eval.task"]
    )
    assert "reports no metric 'exact_match,digit'" in errors["tasks[2].metric"]
    assert "did you mean 'exact_match,digits'?" in errors["tasks[2].metric"]
    assert "'hfr_both' is a group of tasks (hfr_mc, hfr_gen)" in errors["tasks[3].lm_eval.task"]
    assert "is not a folder" in errors["tasks[4].lm_eval.include_path"]
