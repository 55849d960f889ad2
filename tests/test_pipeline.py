"""``hf-recycle run`` end to end against the local Hub server.

The recipe's checkpoints are ``step-*`` branches of a repo on the server; the run searches
a few trials, merges the winner, writes the card and lock file and pushes to the server.
The test then downloads the pushed repo and the pinned checkpoints with huggingface_hub and
checks the weights against Σ wᵢ θᵢ computed here, the card's metadata and shas, and the lock.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from recipe_runs import STEPS, download_state, write_recipe

from hf_recycle.cli import main


@pytest.mark.slow
def test_run_push_and_verify_against_the_pinned_checkpoints(tiny_lm_hub, tmp_path, capsys):
    from huggingface_hub import ModelCard

    server, shas = tiny_lm_hub
    recipe = write_recipe(tmp_path, "recycled")
    assert main(["run", str(recipe), "--dry-run", "--endpoint", server.endpoint]) == 0
    plan = capsys.readouterr().out
    assert all(shas[s] in plan for s in STEPS) and "8 trials" in plan and "nothing was downloaded" in plan
    assert not (tmp_path / "out" / "recycled").exists()

    assert main(["-q", "run", str(recipe), "--push", "--endpoint", server.endpoint]) == 0
    out = capsys.readouterr().out
    out_dir = tmp_path / "out" / "recycled"
    results = json.loads((out_dir / "results.json").read_text())
    assert results["trials"] == 8
    assert f"pushed to demo/recycled@main: {server.endpoint}/demo/recycled/commit/" in out

    # the pushed weights are Σ wᵢ θᵢ of the pinned checkpoints, each downloaded independently here
    weights = results["winner"]["weights"]
    assert [c["commit"] for c in results["checkpoints"]] == [shas[s] for s in STEPS]
    pushed_dir, pushed = download_state("demo/recycled", "main", server.endpoint, tmp_path)
    sources = [download_state("demo/tiny-lm", shas[s], server.endpoint, tmp_path)[1] for s in STEPS]
    assert set(pushed) == set(sources[0])
    for key, tensor in pushed.items():
        expected = sum(w * s[key].double() for w, s in zip(weights, sources, strict=True)) / sum(weights)
        torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=1e-5)

    # the card: metadata intact, shas, held-out results
    card = ModelCard.load(f"{pushed_dir}/README.md")
    assert card.data.base_model == ["demo/tiny-lm"]
    assert card.data["base_model_relation"] == "merge"
    assert card.data.tags == ["merge", "hf-recycle", "linear"]
    assert card.data.license == "apache-2.0" and card.data.library_name == "transformers"
    held_out = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    assert held_out == {t: results["winner"]["test"][t] for t in ("addition", "reversal")}
    for step in STEPS:
        assert shas[step] in card.text and f"`{step}`" in card.text
    # named relative to the recipe's folder: nothing pushed holds an absolute local path
    assert f"hf-recycle run {recipe.name} --endpoint {server.endpoint} --push" in card.text
    assert str(tmp_path) not in card.text
    assert "name: recycled" in card.text

    # the lock file: every pin with its revision name and commit
    lock = json.loads(open(f"{pushed_dir}/checkpoints.lock.json").read())
    assert [(p["revision"], p["commit"]) for p in lock["checkpoints"]] == [(s, shas[s]) for s in STEPS]
    # a linear merge of full checkpoints does not use the recipe's base: no base pin, and the
    # run's lock agrees with the one its search wrote
    assert lock["base"] is None
    search_lock = json.loads((out_dir / "checkpoints.lock.json").read_text())
    assert {k: v for k, v in search_lock.items() if k != "created"} == {
        k: v for k, v in lock.items() if k != "created"
    }
    files = set(server.api().list_repo_files("demo/recycled"))
    assert {"recipe.yaml", "results.json", "results.md", "plots/history.png", "merge_config.json"} <= files
    assert "study.db" not in files

    # re-running resumes: same study, the merge on disk is kept
    weights_file = out_dir / "model" / "model.safetensors"
    mtime = weights_file.stat().st_mtime_ns
    assert main(["-q", "run", str(recipe), "--endpoint", server.endpoint]) == 0
    assert json.loads((out_dir / "results.json").read_text())["winner"] == results["winner"]
    assert weights_file.stat().st_mtime_ns == mtime


def test_push_without_push_section_is_a_recipe_error(tiny_lm_hub, tmp_path, capsys):
    server, _ = tiny_lm_hub
    recipe = write_recipe(tmp_path, "nopush")
    data = yaml.safe_load(recipe.read_text())
    del data["push"]
    recipe.write_text(yaml.safe_dump(data))
    assert main(["run", str(recipe), "--push", "--dry-run", "--endpoint", server.endpoint]) == 1
    assert "has no push: section" in capsys.readouterr().err


@pytest.mark.slow
def test_pareto_members_are_merged_and_pushed_to_their_own_branches(tiny_lm_hub, tmp_path):
    from huggingface_hub import ModelCard

    from hf_recycle.pipeline import run

    server, shas = tiny_lm_hub
    recipe = write_recipe(tmp_path, "front", search={"sampler": "nsga2", "trials": 8, "objective": "pareto"})
    result = run(recipe, push=True, endpoint=server.endpoint)
    front, winner = result.results["pareto"], result.results["winner"]
    # the first folder (pushed to main) is the winner: a front member, or the baseline none of them
    # beat (with 4 examples per task, usually the latter: see tests/search/test_selection.py)
    baseline = winner.get("baseline") is not None
    assert front and len(result.model_dirs) == len(front) + baseline
    assert result.model_dirs[0].name == ("model" if baseline else f"trial-{winner['trial']}")
    branches = {b.name for b in server.api().list_repo_refs("demo/front").branches}
    assert {f"pareto-trial-{m['trial']}" for m in front} | {"main"} <= branches
    sources = [download_state("demo/tiny-lm", shas[s], server.endpoint, tmp_path)[1] for s in STEPS]
    member = front[-1]
    folder, merged = download_state(
        "demo/front", f"pareto-trial-{member['trial']}", server.endpoint, tmp_path
    )
    w = member["weights"]
    for key, tensor in merged.items():
        expected = sum(x * s[key].double() for x, s in zip(w, sources, strict=True)) / sum(w)
        torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=1e-5)
    card = ModelCard.load(f"{folder}/README.md")
    assert f"trial {member['trial']}" in card.text and card.data["base_model_relation"] == "merge"
    assert [r.metric_value for r in card.data.eval_results] == [
        member["test"]["addition"],
        member["test"]["reversal"],
    ]


@pytest.mark.slow
def test_base_dir_resolves_relative_task_data_paths(tiny_lm_hub, tmp_path, monkeypatch):
    from hf_recycle.errors import RecipeError
    from hf_recycle.pipeline import run
    from hf_recycle.recipe import Recipe

    server, _ = tiny_lm_hub
    home = tmp_path / "home"  # holds data/reversal.jsonl, which the recipe names relatively
    path = write_recipe(home, "based", search={"sampler": "random", "trials": 2, "baselines": ["uniform"]})
    data = yaml.safe_load(path.read_text())
    data["tasks"] = data["tasks"][1:]  # one task keeps this test fast
    elsewhere = tmp_path / "elsewhere"  # no data/ folder here
    elsewhere.mkdir()
    moved = elsewhere / "based.yaml"
    moved.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(elsewhere)
    recipe = Recipe.from_yaml(moved)

    # by default: the recipe file's folder, or the current folder for a Recipe object; neither has the data
    for target in (moved, recipe):  # refused by the preflight checks, before anything is downloaded
        with pytest.raises(RecipeError, match="based.yaml:.*data file 'data/reversal.jsonl' does not exist"):
            run(target, endpoint=server.endpoint, output_dir=tmp_path / "failed")
        assert not (tmp_path / "failed").exists()
    # base_dir= points both at the folder that has it
    for i, target in enumerate((moved, recipe)):
        result = run(target, endpoint=server.endpoint, output_dir=tmp_path / f"out-{i}", base_dir=home)
        assert result.results["trials"] == 2
        assert (result.model_dirs[0] / "model.safetensors").is_file()
