"""Independent whole-state-dict reference computations and checkpoint editing for the merge tests."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from hf_recycle.testing import models


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


def ref_linear(states, weights, normalize=True):
    out = {}
    for k in states[0]:
        acc = sum(w * s[k] for w, s in zip(weights, states, strict=True))
        out[k] = acc / sum(weights) if normalize else acc
    return out


def ref_topk(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, floor(density*n)) largest |delta| (ties: first in flat order)."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    k = max(1, int(density * flat.numel()))
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat)
    mask[order] = 1
    return (flat * mask).view_as(delta)


def ref_task_vectors(states, base, weights, *, lam=1.0, normalize=False, consensus=False, sparsify=None):
    """Whole-state-dict reference of task_arithmetic / ties (sparsify: callable(delta, i, key) -> delta)."""
    out = {}
    for k in base:
        deltas = []
        for i, s in enumerate(states):
            d = s[k] - base[k]
            if sparsify is not None:
                d = sparsify(d, i, k)
            deltas.append(d * weights[i])
        d = torch.stack(deltas)
        w = torch.tensor(weights).view(-1, *([1] * base[k].dim()))
        if consensus:
            elected = torch.where(d.sum(0) >= 0, 1.0, -1.0)
            mask = (torch.sign(d) == elected).float()
            mixed = (d * mask).sum(0)
            div = (w * mask).sum(0)
            div[div == 0] = 1
        else:
            mixed = d.sum(0)
            div = w.sum(0)
            if div.abs() < 1e-8:
                div = torch.ones_like(div)
        if normalize:
            mixed = mixed / div
        out[k] = base[k] + lam * mixed
    return out


def assert_state_close(got: dict, want: dict, atol=1e-6, rtol=1e-5):
    assert set(got) == set(want), set(got) ^ set(want)
    for k in want:
        torch.testing.assert_close(
            got[k].float(), want[k].float(), atol=atol, rtol=rtol, msg=lambda m, k=k: f"{k}: {m}"
        )
