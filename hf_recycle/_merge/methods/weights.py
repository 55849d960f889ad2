"""Merge weights: one per checkpoint (validated), or one row per group of tensors."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from hf_recycle._merge.methods._base import MergeMethod
from hf_recycle.errors import MergeConfigError


def check_weights(weights: Sequence[float], count: int, method: MergeMethod, normalize: bool) -> list[float]:
    """Validate one weight per checkpoint.

    Raises:
        MergeConfigError: Wrong count, a non-finite weight, or weights that sum to 0
            under a normalized linear merge.
    """
    import math

    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise MergeConfigError(
            f"got {len(weights)} weight{'s' if len(weights) != 1 else ''} for {count} checkpoint"
            f"{'s' if count != 1 else ''}: pass exactly one weight per checkpoint, in the same order "
            "(or none for uniform weights)"
        )
    if not all(math.isfinite(w) for w in weights):
        raise MergeConfigError(f"weights must be finite numbers, got {weights}")
    if method.name == "linear" and normalize and abs(sum(weights)) < 1e-12:
        raise MergeConfigError(
            f"the weights {weights} sum to 0, so a normalized linear merge is undefined: "
            "change the weights or pass --no-normalize"
        )
    return weights


@dataclass(frozen=True)
class GroupWeights:
    """Weights that depend on the tensor: one row of weights (one per checkpoint) per group of tensors.

    A ``granularity: layers:N`` search finds one row per group (embeddings, each block of
    N layers, head); pass this as ``weights`` to :func:`hf_recycle._merge.engine.merge`.

    Attributes:
        rows: Group name -> its weights, one per checkpoint, in model order.
        group_of: Tensor name -> group name, or a function that builds that mapping from
            the model's tensor names (called once, when the merge knows them).
    """

    rows: Mapping[str, Sequence[float]]
    group_of: Mapping[str, str] | Callable[[Sequence[str]], Mapping[str, str]]

    def assign(self, names: Sequence[str]) -> dict[str, str]:
        """Each tensor's group, for the model's tensor names.

        Raises:
            MergeConfigError: A tensor has no group, or a group has no row of weights.
        """
        group_of = dict(self.group_of(names) if callable(self.group_of) else self.group_of)
        missing = [n for n in names if n not in group_of]
        if missing:
            shown = ", ".join(f"'{n}'" for n in missing[:5]) + (
                f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            )
            raise MergeConfigError(f"tensor(s) {shown} belong to no weight group: give every tensor a group")
        unknown = sorted({g for g in group_of.values() if g not in self.rows})
        if unknown:
            raise MergeConfigError(
                f"weight group(s) {unknown} have no row of weights (groups with weights: {list(self.rows)})"
            )
        return {n: group_of[n] for n in names}

    def to_json(self) -> dict[str, list[float]]:
        """``{group: weights}`` for ``merge_config.json``."""
        return {g: [float(w) for w in row] for g, row in self.rows.items()}
