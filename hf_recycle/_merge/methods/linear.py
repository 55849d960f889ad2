"""``linear``: the weighted average of the checkpoints (model soups)."""

from __future__ import annotations

from hf_recycle._merge.methods._base import MergeMethod, prepare


class Linear(MergeMethod):
    """Weighted average of the checkpoints (model soups)."""

    name = "linear"
    linear_in_delta = True
    order = 0
    pretty_name = "Linear"
    reference_url = "https://arxiv.org/abs/2203.05482"
    needs_base = False
    default_normalize = True
    weighted_sum = True

    def linear_coefficients(self, weights, params):
        total = float(sum(weights))
        if params.normalize:
            return [float(w) / total for w in weights], 0.0
        return [float(w) for w in weights], 0.0

    def combine(
        self,
        tensors,
        weights,
        base,
        params,
        key,
        *,
        rows=None,
        numel=None,
        stats=None,
        out=None,
        workspace=None,
    ):
        ws, out = prepare(tensors, out, workspace)
        out.copy_(tensors[0])
        if float(weights[0]) != 1.0:  # x·1 and x/1 are exact: skip those passes
            out.mul_(float(weights[0]))
        for tensor, weight in zip(tensors[1:], weights[1:], strict=True):
            out.add_(tensor, alpha=float(weight))  # promotes to float32 inside the kernel
        total = float(sum(weights))
        if params.normalize and total != 1.0:
            out.div_(total)
        return out
