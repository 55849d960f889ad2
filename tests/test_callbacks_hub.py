"""RecycleCallback and the Hub: privacy of the merge, the Trainer's token, what the Trainer's own
push uploads, and no absolute local path in anything pushed (real Trainer runs, local Hub)."""

# ruff: noqa: F811  (the fixtures base_dir and local_hub come from test_callbacks)

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from test_callbacks import _NoSaveAtLastStep, _recipe, _trainer, base_dir, local_hub  # noqa: F401

from hf_recycle.errors import HubPushError, RecycleCallbackError
from hf_recycle.testing import models

# an absolute POSIX path in text: "/" + a name + "/" not preceded by a word, ":" or "/" (URLs, "1/3", a/b)
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])/[\w.~-]+/")


def _model(base_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)


def _pushed_files(hub, repo: str, tmp_path: Path) -> dict[str, bytes]:
    """Every file of the head of ``main`` of ``repo``, downloaded from the Hub with the hub's token."""
    from huggingface_hub import snapshot_download

    folder = Path(
        snapshot_download(
            repo, endpoint=hub.endpoint, token=hub.token, cache_dir=tmp_path / "scan-cache", local_dir=None
        )
    )
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _local_path_leaks(files: dict[str, bytes], *paths: Path) -> list[str]:
    """``file: what`` for each file that holds one of ``paths`` (as given or resolved) or any absolute path."""
    needles = {str(p) for p in paths} | {str(p.resolve()) for p in paths}
    leaks = []
    for name, data in files.items():
        leaks += [f"{name}: {n}" for n in needles if n.encode() in data]
        if Path(name).suffix in (".json", ".md", ".yaml", ".txt"):
            leaks += [f"{name}: {m}" for m in _ABSOLUTE.findall(data.decode("utf-8"))]
    return leaks


@pytest.mark.slow
def test_private_training_repo_makes_the_merge_private(tmp_path, base_dir, local_hub):
    from hf_recycle import RecycleCallback

    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path, push_to="me/run-recycled")
    trainer = _trainer(
        _model(base_dir),
        tmp_path / "run",
        callback,
        max_steps=8,
        save_steps=4,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_private_repo=True,
        hub_strategy="end",  # the checkpoints stay local: the Trainer's repo alone makes it private
    )
    trainer.train()

    api = local_hub.api()
    assert api.repo_info("me/run").private
    assert api.repo_info("me/run-recycled").private
    assert "README.md" in api.list_repo_files("me/run-recycled")
    assert not local_hub.api(token=False).repo_exists("me/run-recycled")  # invisible without a token


def test_explicit_private_false_overrides_the_trainer_repo(tmp_path):
    from transformers import TrainingArguments

    from hf_recycle import RecycleCallback

    recipe = _recipe(tmp_path)
    callback = RecycleCallback(recipe, base_dir=tmp_path, push_to="me/run-recycled", private=False)
    assert callback.recipe.push.private is False
    args = TrainingArguments(output_dir=str(tmp_path / "run"), push_to_hub=True, hub_model_id="me/run")
    assert callback._push_recipe(args).push.private is False  # explicit: the Trainer's repo is not asked
    assert RecycleCallback(recipe, push_to="me/r").recipe.push.private is None  # unset, not False
    with pytest.raises(RecycleCallbackError, match="private=True applies to a push"):
        RecycleCallback(recipe, private=True)


def test_private_push_into_an_existing_public_repo_fails_before_training(tmp_path, base_dir, local_hub):
    from hf_recycle import RecycleCallback
    from hf_recycle.recipe import PushSpec

    local_hub.api().create_repo("me/public-merges")
    recipe = _recipe(tmp_path).model_copy(update={"push": PushSpec(repo="me/public-merges", private=True)})
    callback = RecycleCallback(recipe, base_dir=tmp_path, push=True)
    trainer = _trainer(_model(base_dir), tmp_path / "run", callback, max_steps=4, save_steps=2)
    with pytest.raises(RecycleCallbackError, match="'me/public-merges' exists and is public"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not local_hub.api().repo_info("me/public-merges").private


def _published_pool(hub, tmp_path: Path, repo: str, private: bool) -> list[str]:
    """Two tiny fine-tunes (with the char tokenizer) on branches a and b of ``repo``; their specs."""
    _, ckpts = models.build_pool(tmp_path / "pool", "llama", n=2, seed=7, scale=0.2)
    tokenizer = models.build_char_tokenizer()
    for branch, folder in zip("ab", ckpts, strict=True):
        tokenizer.save_pretrained(folder)
        hub.publish(folder, repo, branch=branch, private=private)
    return [f"{repo}@a", f"{repo}@b"]


@pytest.mark.slow
def test_run_pushes_private_when_a_source_repo_is_private_unless_told(tmp_path, local_hub):
    from hf_recycle.pipeline import run

    specs = _published_pool(local_hub, tmp_path, "me/secret-run", private=True)
    recipe = _recipe(tmp_path).model_copy(update={"checkpoints": specs})

    def push_to(repo: str, **push):
        from hf_recycle.recipe import PushSpec

        with_push = recipe.model_copy(update={"push": PushSpec(repo=repo, **push)})
        run(with_push, push=True, output_dir=tmp_path / repo.replace("/", "-"), base_dir=tmp_path)
        return local_hub.api().repo_info(repo).private

    assert push_to("me/inherits") is True
    assert push_to("me/published", private=False) is False  # explicit false: published on purpose


def test_push_into_an_existing_repo_keeps_its_visibility(tmp_path, local_hub):
    from hf_recycle.hub.push import push_folder

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "README.md").write_text("# merged\n")
    api = local_hub.api()
    api.create_repo("me/kept-private", private=True)
    push_folder(folder, "me/kept-private", private=False)
    assert api.repo_info("me/kept-private").private

    api.create_repo("me/kept-public")
    before = api.list_repo_commits("me/kept-public")
    with pytest.raises(HubPushError, match="'me/kept-public' is public and this push is private") as info:
        push_folder(folder, "me/kept-public", private=True)
    assert "retry with" not in str(info.value)  # retrying would not help
    assert not api.repo_info("me/kept-public").private
    assert api.list_repo_commits("me/kept-public") == before  # nothing uploaded


@pytest.mark.slow
def test_hub_token_is_used_for_every_call_and_never_written(
    tmp_path, base_dir, local_hub, monkeypatch, caplog, capsys
):
    from hf_recycle import RecycleCallback

    token = local_hub.token
    monkeypatch.delenv("HF_TOKEN")  # only the Trainer's hub_token
    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path, push_to="me/run-recycled")
    # checkpoint-4 is rotated away: it comes back from the private repo, with the Trainer's token
    trainer = _trainer(
        _model(base_dir),
        out,
        callback,
        max_steps=8,
        save_steps=4,
        save_total_limit=1,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_private_repo=True,
        hub_strategy="all_checkpoints",
        hub_token=token,
    )
    with caplog.at_level(logging.DEBUG, logger="hf_recycle"):
        trainer.train()

    assert "HF_TOKEN" not in os.environ
    assert [c["repo_id"] for c in callback.results["checkpoints"]] == ["me/run", None]
    api = local_hub.api()
    assert api.repo_info("me/run-recycled").private
    card = (out / "_recycled/model/README.md").read_text()
    results = (out / "_recycled/results.json").read_text()
    captured = capsys.readouterr()
    assert token not in card + results + caplog.text + captured.out + captured.err
    # no file under output_dir holds it, but the Trainer's own pickle of its arguments
    holding = [p for p in out.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert holding and {p.name for p in holding} == {"training_args.bin"}
    assert not any("_recycle" in p.relative_to(out).as_posix() for p in holding)
    assert not any(
        token.encode() in data for data in _pushed_files(local_hub, "me/run-recycled", tmp_path).values()
    )


@pytest.mark.slow
def test_trainer_push_to_hub_leaves_out_the_recycled_files(tmp_path, base_dir, local_hub):
    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path, keep_checkpoints=True)
    trainer = _trainer(
        _model(base_dir),
        out,
        callback,
        max_steps=10,
        save_steps=4,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_strategy="every_save",
    )
    trainer.add_callback(_NoSaveAtLastStep())  # so the callback saves the final weights under _recycle
    trainer.train()
    trainer.push_to_hub()  # the Trainer's final push of output_dir

    files = local_hub.api().list_repo_files("me/run")
    assert "model.safetensors" in files and "README.md" in files
    recycled = [f for f in files if "recycle" in f or f.endswith((".db", "pool.json", "results.json"))]
    assert recycled == []
    assert (out / "_recycled/model/model.safetensors").is_file() and (out / "_recycle/final").is_dir()


@pytest.mark.slow
def test_pushed_files_name_checkpoints_by_hub_pin_and_hold_no_local_path(tmp_path, base_dir, local_hub):
    from huggingface_hub import ModelCard

    from hf_recycle import RecycleCallback

    out = tmp_path / "run"
    callback = RecycleCallback(_recipe(tmp_path), base_dir=tmp_path, push_to="me/run-recycled")
    # saves at 4 and 8, each pushed (hub_always_push: even while the previous upload runs) and read
    # from its folder, and the final weights at step 10, which only the callback saved (local)
    trainer = _trainer(
        _model(base_dir),
        out,
        callback,
        max_steps=10,
        save_steps=4,
        push_to_hub=True,
        hub_model_id="me/run",
        hub_strategy="all_checkpoints",
        hub_always_push=True,
    )
    trainer.add_callback(_NoSaveAtLastStep())
    trainer.train()

    commits = {c.title: c.commit_id for c in local_hub.api().list_repo_commits("me/run")}
    shas = [commits[f"Training in progress, step {n}, checkpoint"] for n in (4, 8)]
    on_hub = [f"me/run@{sha}:checkpoint-{n}" for sha, n in zip(shas, (4, 8), strict=True)]
    # the search read local folders only
    assert [c.get("repo_id") for c in callback.results["checkpoints"]] == [None, None, None]

    files = _pushed_files(local_hub, "me/run-recycled", tmp_path)
    assert {"README.md", "recipe.yaml", "results.json", "results.md", "checkpoints.lock.json"} <= set(files)
    assert {"merge_config.json", "plots/weights.png"} <= set(files)
    assert _local_path_leaks(files, tmp_path, Path.cwd(), Path.home()) == []

    lock = json.loads(files["checkpoints.lock.json"])
    assert [(c["repo_id"], c["commit"], c["subfolder"]) for c in lock["checkpoints"][:2]] == [
        ("me/run", sha, f"checkpoint-{n}") for sha, n in zip(shas, (4, 8), strict=True)
    ]
    final = lock["checkpoints"][2]
    assert (final["repo_id"], final["path"], final["spec"]) == (None, "./_recycle/final", "./_recycle/final")
    results = json.loads(files["results.json"])
    assert [c["spec"] for c in results["checkpoints"]] == [*on_hub, "./_recycle/final"]
    assert results["study"]["storage"] == "sqlite:///_recycled/study.db"
    assert yaml.safe_load(files["recipe.yaml"])["checkpoints"] == [*on_hub, "./_recycle/final"]
    merge_config = json.loads(files["merge_config.json"])
    assert [c.get("commit") for c in merge_config["checkpoints"]] == [*shas, None]
    assert [c.get("path") for c in merge_config["checkpoints"]] == [None, None, "./_recycle/final"]

    card = ModelCard(files["README.md"].decode())
    assert card.data.base_model == ["me/run"] and card.data["base_model_relation"] == "merge"
    for sha, n in zip(shas, (4, 8), strict=True):
        assert f"| `me/run` | `{sha}` | `{sha}` | `checkpoint-{n}` |" in card.text
    assert "| `./_recycle/final` (local) |" in card.text
    assert "A source marked (local) was a folder on the machine that made this merge" in card.text


def test_portable_names_of_a_recipe_file_and_its_pins(tmp_path):
    from hf_recycle.hub.pins import PinnedCheckpoint
    from hf_recycle.portable import PortableNames
    from hf_recycle.recipe import Recipe

    run, sha = tmp_path / "run", "a" * 40
    (tmp_path / "data").mkdir()
    (tmp_path / "data/t.jsonl").write_text('{"q": "1", "a": "2"}\n')
    text = f"""# hf-recycle run recipe.yaml
name: x
checkpoints: [{run}/checkpoint-4, {run}/checkpoint-8, /elsewhere/ckpt]
search: {{storage: "sqlite:///{run}/study.db"}}
tasks:
  - {{name: t, data: {{path: json, data_files: {tmp_path}/data/t.jsonl}}, search_split: train,
     kind: loglikelihood, prompt: "{{q}}=", target: "{{a}}"}}
"""
    recipe = Recipe.from_text(text)
    names = PortableNames((run, tmp_path), {str(run / "checkpoint-8"): f"me/run@{sha}:checkpoint-8"})
    portable = names.recipe_text(text, recipe)
    assert str(tmp_path) not in portable and portable.startswith("# hf-recycle run recipe.yaml\n")
    again = Recipe.from_text(portable.replace("data/t.jsonl", str(tmp_path / "data/t.jsonl")))
    assert again.checkpoints == ["./checkpoint-4", f"me/run@{sha}:checkpoint-8", "./ckpt"]
    assert again.search.storage == "sqlite:///study.db"
    assert "data_files: data/t.jsonl" in portable
    assert names.recipe(recipe).checkpoints == again.checkpoints
    local = PinnedCheckpoint(
        None, None, None, None, "full", str(run / "checkpoint-8"), str(run / "checkpoint-8")
    )
    assert names.pin(local) == PinnedCheckpoint(
        "me/run", sha, sha, "checkpoint-8", "full", f"me/run@{sha}:checkpoint-8"
    )
    final = PinnedCheckpoint(
        None, None, None, None, "lora", str(run / "_recycle/final"), str(run / "_recycle/final")
    )
    assert (names.pin(final).spec, names.pin(final).local_path) == ("./_recycle/final", "./_recycle/final")
