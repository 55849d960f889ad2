"""The method registry (``--method`` names) and validation of user parameters."""

from __future__ import annotations

from hf_recycle.errors import MergeConfigError
from hf_recycle.merge.methods._base import MergeMethod, MethodParams
from hf_recycle.merge.methods.dare import DareLinear, DareTies
from hf_recycle.merge.methods.linear import Linear
from hf_recycle.merge.methods.task_arithmetic import TaskArithmetic
from hf_recycle.merge.methods.ties import Ties

#: Registry: ``--method`` name -> method object.
METHODS: dict[str, MergeMethod] = {
    m.name: m for m in (Linear(), TaskArithmetic(), Ties(), DareLinear(), DareTies())
}


def get_method(name: str) -> MergeMethod:
    """The method registered as ``name``.

    Raises:
        MergeConfigError: No such method.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise MergeConfigError(f"unknown merge method '{name}': use one of {', '.join(METHODS)}") from None


def resolve_params(
    method: MergeMethod,
    *,
    density: float | None = None,
    lambda_: float = 1.0,
    normalize: bool | None = None,
    seed: int = 0,
) -> MethodParams:
    """Validate user parameters for ``method`` and fill in its defaults.

    Raises:
        MergeConfigError: density outside (0, 1], density given to a method that has
            none, or a non-finite lambda.
    """
    import math

    if density is not None:
        if not method.uses_density:
            users = ", ".join(m.name for m in METHODS.values() if m.uses_density)
            raise MergeConfigError(
                f"--density does not apply to method '{method.name}': it is used by {users}"
            )
        if not (isinstance(density, int | float) and 0 < density <= 1):
            raise MergeConfigError(
                f"density must be in (0, 1], got {density}: it is the fraction of entries kept"
            )
    if not math.isfinite(lambda_):
        raise MergeConfigError(f"lambda must be a finite number, got {lambda_}")
    return MethodParams(
        density=1.0 if density is None else float(density),
        lambda_=float(lambda_),
        normalize=method.default_normalize if normalize is None else bool(normalize),
        seed=int(seed),
    )
