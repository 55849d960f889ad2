"""A conformance suite for merge methods: the search's candidate == the streaming merge == a reference.

Every method registered in :mod:`hf_recycle._merge.methods` is used in two places: the
streaming engine (``hf-recycle merge``, the final merge of a search) and the search's live
candidate model (:class:`~hf_recycle._search.resident.ResidentModel`, which computes linear
methods as one weighted sum per tensor and the others through the method's ``combine``).
:func:`check_method` merges one pool both ways, for the method's defaults and for each
option it takes (:func:`option_sets`), and compares both with an independent reference
(:data:`hf_recycle.testing.merge_reference.REFERENCES` for the built-in methods). A new
method's test calls it with the method's own reference::

    def test_my_method_conforms(tmp_path):
        pool = conformance.build_pool(tmp_path / "pool")
        for options in conformance.option_sets(get_method("my_method")):
            conformance.check_method("my_method", my_reference, pool, tmp_path / "out", options)
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf_recycle._merge.methods import MergeMethod, get_method, resolve_params
from hf_recycle.testing.merge_reference import Reference

#: Weights of the three checkpoints of the pool: unequal, summing to 1.
WEIGHTS = (0.5, 0.3, 0.2)
#: Weights that do not sum to 1 (what normalization changes).
UNNORMALIZED_WEIGHTS = (0.6, 0.3, 0.4)


def build_pool(folder: str | Path, *, arch: str = "llama", seed: int = 0) -> tuple[Path, list[Path]]:
    """``(base, [three fine-tunes])`` of a tiny model under ``folder`` (reused when present)."""
    from hf_recycle.testing import models

    folder = Path(folder)
    done = folder / ".done"
    if done.is_file():
        base = folder / "base"
        return base, sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "base")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    pool = models.build_pool(folder, arch, n=3, seed=seed)
    done.write_text("ok\n")
    return pool


def option_sets(method: MergeMethod) -> list[dict[str, Any]]:
    """The defaults, then each option the method takes changed on its own."""
    sets: list[dict[str, Any]] = [{}, {"normalize": not method.default_normalize}]
    if method.needs_base:
        sets.append({"lambda_": 0.7})
    if method.uses_density:
        sets += [{"density": 0.5}, {"density": 0.6, "seed": 5}]
    return sets


def check_method(
    name: str,
    reference: Reference,
    pool: tuple[Path, Sequence[Path]],
    workdir: str | Path,
    options: dict[str, Any] | None = None,
    *,
    atol: float = 1e-5,
) -> None:
    """Merge ``pool`` with method ``name`` three ways and assert they agree.

    Args:
        name: A registered method.
        reference: ``reference(states, base, weights, params)`` computing the merge independently.
        pool: ``(base, checkpoints)`` folders (:func:`build_pool`).
        workdir: A folder for the streaming merge's output (replaced).
        options: ``normalize``, ``lambda_``, ``density``, ``seed`` (unset: the method's defaults).
        atol: Absolute tolerance (float32 sums in different orders).

    Raises:
        AssertionError: Naming the method, the options, the two paths that differ and the tensor.
    """
    import torch

    from hf_recycle._merge.engine import merge
    from hf_recycle._merge.sources import SafetensorsSource
    from hf_recycle._search.resident import ResidentModel
    from hf_recycle.testing import models

    options = dict(options or {})
    method = get_method(name)
    base_dir, ckpts = pool
    density = options.get("density")
    params = resolve_params(
        method,
        density=density,
        lambda_=options.get("lambda_", 1.0),
        normalize=options.get("normalize"),
        seed=options.get("seed", 0),
    )
    weights = list(UNNORMALIZED_WEIGHTS if not params.normalize else WEIGHTS)
    states = [{k: v.float() for k, v in models.load_state_dict(p).items()} for p in ckpts]
    base_state = {k: v.float() for k, v in models.load_state_dict(base_dir).items()}
    want = reference(states, base_state if method.needs_base else None, weights, params)

    out = Path(workdir) / f"{name}-merged"
    shutil.rmtree(out, ignore_errors=True)
    merge(
        [str(p) for p in ckpts],
        out,
        method=name,
        weights=weights,
        base=str(base_dir) if method.needs_base else None,
        device="cpu",
        **options,
    )
    streamed = models.load_state_dict(out)
    shutil.rmtree(out, ignore_errors=True)

    resident = ResidentModel(
        [SafetensorsSource(p) for p in ckpts],
        base=SafetensorsSource(base_dir) if method.needs_base else None,
        method=name,
        lambda_=params.lambda_,
        normalize=options.get("normalize"),
        seed=params.seed,
        device="cpu",
    )
    resident.set_weights([0.1, 0.1, 0.8], density)  # a first candidate must leave no trace
    resident.set_weights(weights, density)
    candidate = resident.state_dict()

    what = f"method '{name}' with {options or 'its defaults'}"
    moved = 0
    for key, expected in want.items():
        for label, got in (("streaming merge", streamed), ("search candidate", candidate)):
            assert key in got, f"{what}: the {label} has no tensor '{key}'"
            torch.testing.assert_close(
                got[key].float(),
                expected,
                atol=atol,
                rtol=1e-5,
                msg=lambda m, label=label, key=key: f"{what}: {label} != reference on '{key}': {m}",
            )
        moved += bool((expected - base_state[key]).abs().max() > 1e-4)
    assert moved >= len(want) // 2, f"{what}: the merge left most tensors at the base (a vacuous check)"
