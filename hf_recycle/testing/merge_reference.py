"""Independent whole-state-dict reference merges: each method's formula in plain torch.

Written from the methods' definitions (see :mod:`hf_recycle._merge.methods`), not from the
engine's code: whole tensors, stacked, no buffers, no row blocks. The DARE masks come from
the engine's seeded mask stream (:func:`~hf_recycle._merge.methods.dare_keep_mask`), which
is part of the method's definition (the same inputs and seed drop the same entries); what
is done with them is computed here independently.

A reference is ``reference(states, base, weights, params) -> state dict``: ``states`` the
inputs' float32 state dicts, ``base`` the base's (``None`` for a method without one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from hf_recycle._merge.methods import MethodParams

State = dict[str, torch.Tensor]
Reference = Callable[[Sequence[State], "State | None", Sequence[float], "MethodParams"], State]


def ref_linear(states: Sequence[State], weights: Sequence[float], normalize: bool = True) -> State:
    """θ = Σ wᵢθᵢ, divided by Σ wᵢ when ``normalize``."""
    out = {}
    for k in states[0]:
        acc = sum(w * s[k] for w, s in zip(weights, states, strict=True))
        out[k] = acc / sum(weights) if normalize else acc
    return out


def ref_topk(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the k = max(1, ⌊density·n⌋) largest |delta| (ties: first in flat order)."""
    if density >= 1:
        return delta
    flat = delta.reshape(-1)
    k = max(1, int(density * flat.numel()))
    order = torch.sort(flat.abs(), descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(flat)
    mask[order] = 1
    return (flat * mask).view_as(delta)


def ref_dare(delta: torch.Tensor, index: int, key: str, density: float, seed: int) -> torch.Tensor:
    """Drop entries of input ``index``'s task vector with the method's seeded mask; rescale by 1/density."""
    from hf_recycle._merge.methods import dare_keep_mask

    if density >= 1:
        return delta
    mask = dare_keep_mask(seed, key, index, delta.numel(), 0, delta.numel(), density).view_as(delta)
    return torch.where(mask, delta / density, torch.zeros_like(delta))


def ref_task_vectors(
    states: Sequence[State],
    base: State,
    weights: Sequence[float],
    *,
    lam: float = 1.0,
    normalize: bool = False,
    consensus: bool = False,
    sparsify: Callable[[torch.Tensor, int, str], torch.Tensor] | None = None,
) -> State:
    """θ_base + λ·mixed of the (sparsified, weighted) task vectors; TIES sign election when ``consensus``."""
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


def _task_vector_reference(consensus: bool, sparsify: str | None) -> Reference:
    def reference(states, base, weights, params):
        if base is None:
            raise ValueError("a task-vector method needs the base's state dict")
        cut = None
        if sparsify == "magnitude":

            def cut(d, i, k):
                return ref_topk(d, params.density)

        elif sparsify == "random":

            def cut(d, i, k):
                return ref_dare(d, i, k, params.density, params.seed)

        return ref_task_vectors(
            states,
            base,
            weights,
            lam=params.lambda_,
            normalize=params.normalize,
            consensus=consensus,
            sparsify=cut,
        )

    return reference


#: The built-in methods' references, by registered name.
REFERENCES: dict[str, Reference] = {
    "linear": lambda states, base, weights, params: ref_linear(states, weights, params.normalize),
    "task_arithmetic": _task_vector_reference(consensus=False, sparsify=None),
    "ties": _task_vector_reference(consensus=True, sparsify="magnitude"),
    "dare_linear": _task_vector_reference(consensus=False, sparsify="random"),
    "dare_ties": _task_vector_reference(consensus=True, sparsify="random"),
}
