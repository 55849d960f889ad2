"""``hf-recycle search`` over LoRA adapters: the recipe's ``base:`` is used whatever the method."""

from __future__ import annotations

import json

import pytest
import torch
from synthetic import write_sums_recipe

from hf_recycle.cli import main
from hf_recycle.hub.lock import read_lock, read_lock_base
from hf_recycle.testing.models import build_lora_adapter


@pytest.fixture(scope="module")
def adapters(llama_pool, tmp_path_factory):
    """Two real PEFT adapters over the pool's base whose adapter_config.json names no base."""
    base, _ = llama_pool
    root = tmp_path_factory.mktemp("search-lora")
    paths = [
        build_lora_adapter(base, root / f"lora-{i}", seed=10 + i, scale=0.3, base_model_name_or_path=None)
        for i in range(2)
    ]
    for path in paths:
        assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] is None
    return base, paths


def _write_recipe(tmp_path, checkpoints, base):
    return write_sums_recipe(
        tmp_path, checkpoints, name="lora-search", trials=4, base=base, merge={"method": "linear"}
    )


def _peft_merged(base, adapter):
    """peft's own full weights of ``base`` + ``adapter`` (from_pretrained + merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def _score(base, state_dict, recipe_path, split):
    """Score the model of ``state_dict`` (the base's architecture) on the recipe's task."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_recycle._score.scorer import TaskScorer
    from hf_recycle.recipe import Recipe

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.load_state_dict(state_dict)
    spec = Recipe.from_yaml(recipe_path).tasks[0]
    tokenizer = AutoTokenizer.from_pretrained(base)
    return TaskScorer(spec, tokenizer, split, base_dir=recipe_path.parent).score(model.eval()).value


@pytest.mark.slow
def test_linear_search_over_adapters_uses_the_recipe_base(adapters, tmp_path, capsys):
    base, paths = adapters
    recipe = _write_recipe(tmp_path, paths, base)
    # the reported reproduction: creating the study used to fail with "pass --base ... (or the recipe's base:)"
    assert main(["search", str(recipe), "--create-only"]) == 0, capsys.readouterr().err
    assert main(["search", str(recipe), "--json"]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert [c["kind"] for c in results["checkpoints"]] == ["lora", "lora"]
    assert results["trials"] == 4
    # independent check against peft: a single adapter's scores are those of peft's merged model,
    # the uniform soup's those of the mean of the two merged models
    merged = [_peft_merged(base, p) for p in paths]
    uniform = {k: (merged[0][k] + merged[1][k]) / 2 for k in merged[0]}
    assert results["baselines"]["uniform"]["weights"] == pytest.approx([0.5, 0.5])
    best = results["baselines"]["best_single"]["checkpoint"]
    for split in ("search", "test"):
        assert results["baselines"]["uniform"][split]["sums"] == pytest.approx(
            _score(base, uniform, recipe, split), rel=1e-5
        )
        assert results["baselines"]["best_single"][split]["sums"] == pytest.approx(
            _score(base, merged[best], recipe, split), rel=1e-5
        )
    # the pins, the base included, are written next to the results
    assert [p.local_path for p in read_lock(out)] == [str(p.resolve()) for p in paths]
    assert read_lock_base(out).local_path == str(base.resolve())


def test_adapters_without_any_base_are_refused_clearly(adapters, tmp_path, capsys):
    _, paths = adapters
    recipe = _write_recipe(tmp_path, paths, None)
    assert main(["search", str(recipe), "--create-only"]) == 1
    err = capsys.readouterr().err
    assert "needs the base model it was trained on" in err and "base:" in err
    assert not (tmp_path / "out" / "checkpoints.lock.json").exists()


@pytest.mark.slow
def test_adapters_naming_their_base_are_scored_with_its_tokenizer(adapters, tmp_path, capsys):
    """No recipe base: each adapter is read over the base its adapter_config.json names, and the
    candidates are scored with that base's tokenizer (the adapter folders have none)."""
    base, _ = adapters
    named = [
        build_lora_adapter(base, tmp_path / f"named-{i}", seed=20 + i, base_model_name_or_path=str(base))
        for i in range(2)
    ]
    assert not any(p.name.startswith("tokenizer") for p in named[0].iterdir())
    recipe = _write_recipe(tmp_path, named, None)
    assert main(["search", str(recipe)]) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    merged = [_peft_merged(base, p) for p in named]
    uniform = {k: (merged[0][k] + merged[1][k]) / 2 for k in merged[0]}
    assert results["baselines"]["uniform"]["search"]["sums"] == pytest.approx(
        _score(base, uniform, recipe, "search"), rel=1e-5
    )
    # the base they name is the merge's base: recorded in results.json and the lock file
    assert results["base"]["path"] == str(base.resolve())
    assert read_lock_base(tmp_path / "out").local_path == str(base.resolve())


@pytest.mark.slow
def test_run_over_adapters_naming_their_base_records_it_everywhere(adapters, tmp_path, capsys):
    """``run`` without a recipe base: the merged model is base + the weighted deltas, and the
    top-level lock, the model folder's lock, merge_config.json and the card all name that base."""
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file

    base, _ = adapters
    named = [
        build_lora_adapter(base, tmp_path / f"named-{i}", seed=30 + i, base_model_name_or_path=str(base))
        for i in range(2)
    ]
    recipe = _write_recipe(tmp_path, named, None)
    assert main(["run", str(recipe)]) == 0, capsys.readouterr().err
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    model = out / "model"
    assert read_lock_base(out).local_path == str(base.resolve())
    assert [p.local_path for p in read_lock(out)] == [str(p.resolve()) for p in named]
    # the model folder (what is pushed) names them without an absolute local path
    assert read_lock_base(model).local_path == "./base"
    assert [p.local_path for p in read_lock(model)] == ["./named-0", "./named-1"]
    assert json.loads((model / "merge_config.json").read_text())["base"]["path"] == "./base"
    # independent check: the winner's weights applied to peft's own merged models
    weights = results["winner"]["weights"]
    merged = [_peft_merged(base, p) for p in named]
    got = load_file(model / "model.safetensors")
    for key, value in got.items():
        want = sum(w * m[key] for w, m in zip(weights, merged, strict=True)) / sum(weights)
        torch.testing.assert_close(value.float(), want.float(), rtol=1e-4, atol=1e-5)
    card = ModelCard.load(model / "README.md")
    assert "| base | `./base` (local) |" in card.text and str(tmp_path) not in card.text
    assert "over the base `./base`" in card.text


def test_no_tokenizer_anywhere_is_a_clear_error(adapters, tmp_path, capsys):
    import shutil

    base, paths = adapters
    bare = tmp_path / "bare-base"
    shutil.copytree(base, bare, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "vocab*"))
    recipe = _write_recipe(tmp_path, paths, bare)
    capsys.readouterr()
    assert main(["search", str(recipe)]) == 1
    err = " ".join(capsys.readouterr().err.split())  # the message is wrapped, never inside a word
    assert f"no tokenizer to score candidates with: '{bare}', '{paths[0]}'" in err
    assert "hold no tokenizer files" in err and "Traceback" not in err
    assert "resident model" not in err  # refused before the checkpoints are loaded
    assert not (tmp_path / "out" / "results.json").exists()
