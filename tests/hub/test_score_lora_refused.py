"""``hf-recycle score`` on a LoRA adapter: the same clear refusal for a local folder and a Hub spec."""

from __future__ import annotations

import shutil

import pytest

from hf_recycle import cli
from hf_recycle._score.api import score
from hf_recycle.errors import CheckpointFormatError

RECIPE = """\
name: only-tasks
tasks:
  - name: sums
    data: {path: json, data_files: data.jsonl}
    prompt: "{q}"
    target: "{a}"
"""


@pytest.fixture
def recipe(tmp_path):
    (tmp_path / "data.jsonl").write_text('{"q": "1+1=", "a": "2"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


@pytest.mark.parametrize("where", ["local", "hub"])
def test_score_refuses_a_lora_adapter_with_the_same_message(local_hub, recipe, capsys, where):
    spec = str(local_hub.folders["lora"]) if where == "local" else "org/lora"
    assert cli.main(["score", spec, "--recipe", str(recipe), "--endpoint", local_hub.endpoint]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: '{spec}' is a LoRA adapter: score takes full weights")
    assert f"hf-recycle merge {spec} --base BASE --output DIR" in err and "then score DIR" in err
    assert "config.json" not in err and "Traceback" not in err
    with pytest.raises(CheckpointFormatError, match="is a LoRA adapter"):
        score(spec, recipe, endpoint=local_hub.endpoint)


def test_full_weights_next_to_adapter_files_are_scored(local_hub, recipe, tmp_path):
    """A folder with full weights *and* adapter files (peft saved next to a model) is full weights."""
    folder = tmp_path / "full-and-adapter"
    shutil.copytree(local_hub.ckpts[0], folder)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(local_hub.folders["lora"] / name, folder / name)
    report = score(folder, recipe, device="cpu")
    assert list(report.results) == ["sums"]
