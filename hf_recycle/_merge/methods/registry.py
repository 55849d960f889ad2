"""The method registry: every merge method, found in its own module of this package.

A merge method is one module of :mod:`hf_recycle._merge.methods` defining a
:class:`~hf_recycle._merge.methods._base.MergeMethod` subclass with a ``name``: its class
attributes are the table row (name, pretty name, reference, whether it needs a base,
uses a density, is linear in each ΔW, its normalize default) that the recipe
schema, the command line, the search's candidate model, the LoRA output and the model
card all read. Importing the registry does not import torch. Adding a method is adding
one module (and its test: :mod:`hf_recycle.testing.conformance` checks it end to end).
"""

from __future__ import annotations

from hf_recycle._merge.methods._base import MergeMethod, MethodParams
from hf_recycle.errors import MergeConfigError

#: Modules of this package that hold machinery, not methods.
_NOT_METHODS = frozenset({"registry", "sparsify", "weights"})


def _discover() -> dict[str, MergeMethod]:
    from hf_recycle.plugins import discover

    return {cls.name: cls() for cls in discover("hf_recycle._merge.methods", MergeMethod, _NOT_METHODS)}


#: Registry: ``--method`` name -> method object, in listing order.
METHODS: dict[str, MergeMethod] = _discover()
#: The method names, in listing order (``--method`` choices, the recipe schema).
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
#: Methods that mix in a base checkpoint (task vectors).
NEEDS_BASE: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.needs_base)
#: Methods whose result is base + Σ cᵢ·ΔWᵢ (no entry trimmed or dropped).
LINEAR_IN_DELTA: tuple[str, ...] = tuple(name for name, m in METHODS.items() if m.linear_in_delta)


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
