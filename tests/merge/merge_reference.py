"""Independent whole-state-dict reference computations and checkpoint editing for the merge tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from hf_recycle.testing import models
from hf_recycle.testing.merge_reference import ref_linear, ref_task_vectors, ref_topk  # noqa: F401 (re-exported)


def copy_checkpoint(
    src: Path,
    dst: Path,
    edit: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
    config_edit: Callable[[dict], dict] | None = None,
) -> Path:
    """Copy a checkpoint folder as a single model.safetensors, optionally editing its tensors/config."""
    dst.mkdir(parents=True)
    for file in src.iterdir():
        if file.suffix != ".safetensors" and file.name != "model.safetensors.index.json":
            shutil.copyfile(file, dst / file.name)
    state = models.load_state_dict(src)
    if edit is not None:
        state = edit(state)
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(dst / "model.safetensors"),
        metadata={"format": "pt"},
    )
    if config_edit is not None:
        config = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps(config_edit(config)))
    return dst


def f32_states(paths) -> list[dict[str, torch.Tensor]]:
    return [{k: v.float() for k, v in models.load_state_dict(p).items()} for p in paths]


def assert_state_close(got: dict, want: dict, atol=1e-6, rtol=1e-5):
    assert set(got) == set(want), set(got) ^ set(want)
    for k in want:
        torch.testing.assert_close(
            got[k].float(), want[k].float(), atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}"
        )
