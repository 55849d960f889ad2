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

from hf_recycle.cli import main
from hf_recycle.testing import models
from hf_recycle.testing.local_hub import LocalHub

STEPS = ["step-1", "step-2", "step-10"]


def _write_data(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "addition.jsonl").write_text(
        "".join(json.dumps({"question": f"{i}+{i + 1}", "answer": str(2 * i + 1)}) + "\n" for i in range(8))
    )
    words = ["abc", "hello", "merge", "tiny", "model", "step", "data", "soup"]
    (folder / "reversal.jsonl").write_text(
        "".join(json.dumps({"word": w, "reversed": w[::-1]}) + "\n" for w in words)
    )


def _recipe(tmp_path, name, **overrides):
    recipe = {
        "name": name,
        "checkpoints": ["demo/tiny-lm@step-*"],
        "base": "demo/tiny-lm@base",
        "merge": {"method": "linear", "dtype": "float32", "device": "cpu"},
        "search": {"sampler": "cmaes", "trials": 8, "seed": 0},
        "tasks": [
            {
                "name": "addition",
                "data": {"path": "json", "data_files": "data/addition.jsonl"},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "generate",
                "prompt": "{question}=",
                "target": "{answer}",
                "max_new_tokens": 2,
            },
            {
                "name": "reversal",
                "data": {"path": "json", "data_files": "data/reversal.jsonl"},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "loglikelihood",
                "prompt": "{word}>",
                "target": "{reversed}",
            },
        ],
        "output": {"dir": str(tmp_path / "out" / name)},
        "push": {"repo": f"demo/{name}"},
    }
    for key, value in overrides.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) and key in recipe else value
    _write_data(tmp_path / "data")
    path = tmp_path / f"{name}.yaml"
    path.write_text("# hf-recycle run " + path.name + " --push\n" + yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A local Hub with demo/tiny-lm: branch base, and step-* branches holding three fine-tunes."""
    import huggingface_hub.constants as c

    root = tmp_path_factory.mktemp("pipeline-models")
    base, ckpts = models.build_pool(root / "pool", "llama", n=3, seed=5, scale=0.2)
    for folder in [base, *ckpts]:
        (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    with LocalHub() as hub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(c, "HF_HUB_OFFLINE", False)
        shas = {"base": hub.publish(base, "demo/tiny-lm", branch="base")}
        for step, ckpt in zip(STEPS, ckpts, strict=True):
            shas[step] = hub.publish(ckpt, "demo/tiny-lm", branch=step)
        yield hub, shas


@pytest.fixture
def hub(served, monkeypatch):
    import huggingface_hub.constants as c

    server, shas = served
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", server.token)  # pushes need the server's token
    monkeypatch.setattr(c, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return server, shas


def _download_state(repo, revision, endpoint, tmp_path):
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo, revision=revision, endpoint=endpoint, cache_dir=tmp_path / "verify-cache"
    )
    return folder, models.load_state_dict(folder)


def test_run_push_and_verify_against_the_pinned_checkpoints(hub, tmp_path, capsys):
    from huggingface_hub import ModelCard

    server, shas = hub
    recipe = _recipe(tmp_path, "recycled")
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
    pushed_dir, pushed = _download_state("demo/recycled", "main", server.endpoint, tmp_path)
    sources = [_download_state("demo/tiny-lm", shas[s], server.endpoint, tmp_path)[1] for s in STEPS]
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


def test_layer_groups_merge_each_group_with_its_weights(hub, tmp_path):
    from hf_recycle.pipeline import run
    from hf_recycle.search.space import group_tensors

    server, shas = hub
    recipe = _recipe(
        tmp_path, "layered", search={"sampler": "random", "trials": 7, "granularity": "layers:1"}
    )
    data = yaml.safe_load(recipe.read_text())
    data["tasks"] = data["tasks"][1:]  # one task keeps this test fast
    recipe.write_text(yaml.safe_dump(data))
    result = run(recipe, endpoint=server.endpoint)
    layer_weights = result.results["winner"]["layer_weights"]
    assert list(layer_weights) == ["embeddings", "layers.0-0", "layers.1-1", "head"]
    merged = models.load_state_dict(result.model_dirs[0])
    sources = [_download_state("demo/tiny-lm", shas[s], server.endpoint, tmp_path)[1] for s in STEPS]
    groups, group_of = group_tensors(list(merged), 1)
    for key, tensor in merged.items():
        row = layer_weights[groups[group_of[key]]]
        expected = sum(w * s[key].double() for w, s in zip(row, sources, strict=True)) / sum(row)
        torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=1e-5)
    assert "Weights per layer group" in (result.model_dirs[0] / "README.md").read_text()


def test_push_without_push_section_is_a_recipe_error(hub, tmp_path, capsys):
    server, _ = hub
    recipe = _recipe(tmp_path, "nopush")
    data = yaml.safe_load(recipe.read_text())
    del data["push"]
    recipe.write_text(yaml.safe_dump(data))
    assert main(["run", str(recipe), "--push", "--dry-run", "--endpoint", server.endpoint]) == 1
    assert "has no push: section" in capsys.readouterr().err


def test_pareto_members_are_merged_and_pushed_to_their_own_branches(hub, tmp_path):
    from huggingface_hub import ModelCard

    from hf_recycle.pipeline import run

    server, shas = hub
    recipe = _recipe(tmp_path, "front", search={"sampler": "nsga2", "trials": 8, "objective": "pareto"})
    result = run(recipe, push=True, endpoint=server.endpoint)
    front = result.results["pareto"]
    assert front and len(result.model_dirs) == len(front)
    assert result.model_dirs[0].name == f"trial-{result.results['winner']['trial']}"
    branches = {b.name for b in server.api().list_repo_refs("demo/front").branches}
    assert {f"pareto-trial-{m['trial']}" for m in front} | {"main"} <= branches
    sources = [_download_state("demo/tiny-lm", shas[s], server.endpoint, tmp_path)[1] for s in STEPS]
    member = front[-1]
    folder, merged = _download_state(
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


def test_base_dir_resolves_relative_task_data_paths(hub, tmp_path, monkeypatch):
    from hf_recycle.errors import RecipeError
    from hf_recycle.pipeline import run
    from hf_recycle.recipe import Recipe

    server, _ = hub
    home = tmp_path / "home"  # holds data/reversal.jsonl, which the recipe names relatively
    path = _recipe(home, "based", search={"sampler": "random", "trials": 2, "baselines": ["uniform"]})
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
