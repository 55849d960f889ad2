"""Merge LoRA adapters into one LoRA adapter (``--output-format lora``).

When every input is a LoRA adapter over the same base, the linear merge methods give
base + Σ cᵢ·ΔWᵢ, with cᵢ the weights after the full merge's normalization (linear:
wᵢ/Σw; task_arithmetic: λ·wᵢ, divided by Σw when normalize). With ΔWᵢ = Uᵢ @ Vᵢ,

    Σ cᵢ·ΔWᵢ = [c₁U₁ | c₂U₂ | …] @ [V₁; V₂; …]

so concatenating the factors is exact, with rank Σ rᵢ (``lora_rank="exact"``). Note that
peft's ``add_weighted_adapter(combination_type="linear")`` mixes A and B separately,
which adds cross terms cᵢcⱼ·BᵢAⱼ; this module does not. With ``lora_rank=R`` each module
is truncated to rank R by an SVD of the concatenated factors (QR of both sides, SVD of
the small core: never the dense ΔW), and its relative Frobenius error
‖ΔW − ΔW_R‖ / ‖ΔW‖ is recorded.

Tensors that adapters save whole (``modules_to_save``, trained biases) are merged the
same way (base + Σ cᵢ(Tᵢ − base)) and written under the names PEFT loads them from.
The output loads with ``PeftModel.from_pretrained(base_model, folder)``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hf_recycle._merge.adapter_config import ADAPTER_CONFIG, ADAPTER_SAFETENSORS, PEFT_PREFIX
from hf_recycle._merge.lora import LoraModule, LoraSource
from hf_recycle._merge.methods import LINEAR_IN_DELTA, MergeMethod, MethodParams
from hf_recycle._merge.sources import TensorSource
from hf_recycle._merge.streaming import one_cpu_thread
from hf_recycle.errors import IncompatibleCheckpointsError, MergeConfigError
from hf_recycle.hub.files import TOKENIZER_FILES

logger = logging.getLogger(__name__)


def parse_lora_rank(value: str | int | None) -> str | int:
    """``"exact"`` or a positive int, from ``--lora-rank`` (``None`` means exact).

    Raises:
        MergeConfigError: Anything else.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "exact"):
        return "exact"
    try:
        rank = int(value)
    except (TypeError, ValueError):
        rank = 0
    if rank <= 0 or (isinstance(value, float) and not value.is_integer()):
        raise MergeConfigError(f"--lora-rank must be 'exact' or a positive integer, got {value!r}")
    return rank


def delta_coefficients(method: MergeMethod, weights: Sequence[float], params: MethodParams) -> list[float]:
    """The cᵢ with merged = base + Σ cᵢ·ΔWᵢ, under the same normalization as the full merge.

    Raises:
        MergeConfigError: The method is not linear in ΔW (ties, dare_*), or a linear merge
            without normalization whose weights do not sum to 1 (its result is not base + ΔW).
    """
    if not method.linear_in_delta:
        raise MergeConfigError(
            f"--output-format lora supports the methods {' and '.join(LINEAR_IN_DELTA)}, whose result is "
            f"base + Σ cᵢ·ΔWᵢ; '{method.name}' trims or drops entries of each ΔW, which no low-rank adapter "
            "holds: use --output-format full"
        )
    a, b = method.linear_coefficients(weights, params)
    total = sum(a) + b  # Σ aᵢ(base + ΔWᵢ) + b·base = (Σ aᵢ + b)·base + Σ aᵢΔWᵢ
    if abs(total - 1.0) > 1e-6:
        raise MergeConfigError(
            f"a {method.name} merge without normalization of weights summing to {total:g} is "
            f"{total:g}·base + Σ wᵢΔWᵢ, which is not base + an adapter: normalize, make the weights "
            "sum to 1, or use --output-format full"
        )
    return a


@dataclass
class LoraMergeReport:
    """What :func:`write_lora_merge` wrote.

    Attributes:
        files: Files written into the output folder.
        lora_rank: ``"exact"`` or the truncation rank asked.
        modules: Per module path: ``rank`` written and ``relative_error`` of the truncation.
        full_tensors: Tensors written whole (modules_to_save, biases), by PEFT key.
        coefficients: The cᵢ of base + Σ cᵢ·ΔWᵢ.
        output_bytes: Bytes of tensor data written.
        input_bytes: Bytes of adapter factors read.
    """

    files: list[str]
    lora_rank: str | int
    modules: dict[str, dict[str, float | int]] = field(default_factory=dict)
    full_tensors: list[str] = field(default_factory=list)
    coefficients: list[float] = field(default_factory=list)
    output_bytes: int = 0
    input_bytes: int = 0

    def record(self) -> dict[str, Any]:
        """The JSON-ready ``lora`` section of ``merge_config.json``."""
        errors = [m["relative_error"] for m in self.modules.values()]
        return {
            "output_format": "lora",
            "lora_rank": self.lora_rank,
            "coefficients": self.coefficients,
            "max_relative_error": max(errors, default=0.0),
            "modules": self.modules,
            "full_tensors": self.full_tensors,
        }


def check_lora_inputs(checkpoints: Sequence[TensorSource]) -> list[LoraSource]:
    """The inputs as LoRA sources over one base.

    Raises:
        MergeConfigError: An input is a full checkpoint.
        IncompatibleCheckpointsError: The adapters are over different bases.
    """
    full = [s.name for s in checkpoints if not isinstance(s, LoraSource)]
    if full:
        raise MergeConfigError(
            "--output-format lora needs every input to be a LoRA adapter over one base, but "
            f"{', '.join(repr(n) for n in full)} {'is a full checkpoint' if len(full) == 1 else 'are full checkpoints'}: "
            "use --output-format full"
        )
    sources: list[LoraSource] = list(checkpoints)  # type: ignore[arg-type]
    bases = {str(Path(s.base.path).resolve()) for s in sources}
    if len(bases) > 1:
        raise IncompatibleCheckpointsError(
            f"--output-format lora needs adapters over one base, but they sit on {sorted(bases)}: "
            "pass one --base, or use --output-format full"
        )
    return sources


def _truncate(u: torch.Tensor, v: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factors of U @ V (Eckart–Young) and the relative Frobenius error."""
    u64, v64 = u.double(), v.double()
    qu, ru = torch.linalg.qr(u64)  # U = Qu Ru
    qv, rv = torch.linalg.qr(v64.T)  # Vᵀ = Qv Rv
    p, s, qt = torch.linalg.svd(ru @ rv.T, full_matrices=False)
    keep = min(rank, s.numel())
    total = float(s.square().sum())
    error = math.sqrt(float(s[keep:].square().sum()) / total) if total > 0 else 0.0
    root = s[:keep].sqrt()
    new_u = (qu @ p[:, :keep]) * root
    new_v = root[:, None] * (qt[:keep] @ qv.T)
    return new_u.float(), new_v.float(), error


def _peft_factors(mod: LoraModule, u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """PEFT tensors (scaling 1) with delta U @ V in the base tensor's layout."""
    prefix = PEFT_PREFIX + mod.module
    if mod.kind == "embedding":  # ΔW = (B @ A)ᵀ: A = Uᵀ (r, num_embeddings), B = Vᵀ (dim, r)
        return {f"{prefix}.lora_embedding_A": u.T, f"{prefix}.lora_embedding_B": v.T}
    if mod.transposed:  # fan_in_fan_out: ΔW = (B @ A)ᵀ
        return {f"{prefix}.lora_A.weight": u.T, f"{prefix}.lora_B.weight": v.T}
    return {f"{prefix}.lora_A.weight": v, f"{prefix}.lora_B.weight": u}


def write_lora_merge(
    folder: str | Path,
    checkpoints: Sequence[TensorSource],
    *,
    method: MergeMethod,
    weights: Sequence[float],
    params: MethodParams,
    lora_rank: str | int = "exact",
    out_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> LoraMergeReport:
    """Write the merge of LoRA adapters as one PEFT LoRA adapter into ``folder``.

    Args:
        folder: An existing, empty folder (the engine's staging folder).
        checkpoints: The inputs; every one must be a :class:`LoraSource` over one base.
        method: ``linear`` or ``task_arithmetic``.
        weights: One weight per input.
        params: Method parameters (normalize, lambda).
        lora_rank: ``"exact"`` (concatenate: rank Σ rᵢ) or a rank R (SVD truncation).
        out_dtype: dtype of the written factors (``None``: that of the first adapter).
        device: Where to compute.

    Returns:
        A :class:`LoraMergeReport`.

    Raises:
        MergeConfigError: A full checkpoint among the inputs, a method that is not
            linear in ΔW, or a bad ``lora_rank``.
        IncompatibleCheckpointsError: Adapters over different bases or with different
            layouts for one module.
    """
    folder = Path(folder)
    sources = check_lora_inputs(checkpoints)
    lora_rank = parse_lora_rank(lora_rank)
    coefficients = delta_coefficients(method, weights, params)
    device = torch.device(device)
    base = sources[0].base
    first_dtypes = [s.adapter_dtype(m.a_key) for s in sources for m in s.modules.values()]
    dtype = out_dtype or (first_dtypes[0] if first_dtypes else torch.float32)
    report = LoraMergeReport(files=[], lora_rank=lora_rank, coefficients=coefficients)

    with one_cpu_thread(device):
        tensors, targets, ranks = _merge_factors(sources, coefficients, lora_rank, dtype, device, report)
        full_tensors = _merge_full_tensors(sources, coefficients, targets, device)
    for name, value in full_tensors.items():
        tensors[name] = value.contiguous().cpu()
    report.full_tensors = list(full_tensors)

    from safetensors.torch import save_file

    save_file(tensors, str(folder / ADAPTER_SAFETENSORS), metadata={"format": "pt"})
    report.output_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    config = _adapter_config(sources, targets, ranks, full_tensors)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    report.files = [ADAPTER_SAFETENSORS, ADAPTER_CONFIG]
    for name in sorted(TOKENIZER_FILES):
        for where in (sources[0].path, base.path):
            src = Path(where) / name
            if src.is_file():
                shutil.copyfile(src, folder / name)
                break
    if report.modules:
        logger.info(
            "wrote a LoRA adapter with %d modules (rank %s, largest relative error %.3g) to %s",
            len(report.modules),
            lora_rank,
            report.record()["max_relative_error"],
            folder,
        )
    return report


def _merge_factors(
    sources: Sequence[LoraSource],
    coefficients: Sequence[float],
    lora_rank: str | int,
    dtype: torch.dtype,
    device: torch.device,
    report: LoraMergeReport,
) -> tuple[dict[str, torch.Tensor], dict[str, LoraModule], dict[str, int]]:
    """PEFT factor tensors of Σ cᵢ·ΔWᵢ per module, the modules (by path) and their ranks."""
    base = sources[0].base
    tensors: dict[str, torch.Tensor] = {}
    targets: dict[str, LoraModule] = {}  # module path -> first adapter's module
    ranks: dict[str, int] = {}
    for key in base.keys():
        users = [
            (c, s, s.modules[key]) for c, s in zip(coefficients, sources, strict=True) if key in s.modules
        ]
        if not users:
            continue
        first = users[0][2]
        for _, s, mod in users[1:]:
            if (mod.kind, mod.transposed) != (first.kind, first.transposed):
                raise IncompatibleCheckpointsError(
                    f"adapters '{users[0][1].name}' and '{s.name}' store LoRA factors of '{key}' in different "
                    "layouts (fan_in_fan_out or embedding): use --output-format full"
                )
        us, vs = [], []
        for c, s, mod in users:
            if c == 0.0:
                continue
            u, v = s.factors(key, device)
            us.append(u * c)
            vs.append(v)
            report.input_bytes += (u.numel() + v.numel()) * s.adapter_dtype(mod.a_key).itemsize
        if not us:
            continue
        u, v = torch.cat(us, dim=1), torch.cat(vs, dim=0)
        error = 0.0
        if lora_rank != "exact":
            u, v, error = _truncate(u, v, int(lora_rank))
        ranks[first.module] = u.shape[1]
        targets[first.module] = first
        report.modules[first.module] = {"rank": u.shape[1], "relative_error": error}
        for name, value in _peft_factors(first, u, v).items():
            tensors[name] = value.to(dtype).contiguous().cpu()

    return tensors, targets, ranks


def _merge_full_tensors(
    sources: Sequence[LoraSource],
    coefficients: Sequence[float],
    targets: dict[str, LoraModule],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """base + Σ cᵢ(Tᵢ − base) for tensors some adapter saves whole, keyed as PEFT loads them.

    Tensors whose merge equals the base (an embedding's saved base_layer copy) are left out.
    """
    base = sources[0].base
    out: dict[str, torch.Tensor] = {}
    for key in base.keys():
        if not any(key in s.replaced for s in sources):
            continue
        base_value = base.read(key, device=device).float()
        mixed = torch.zeros_like(base_value)
        for c, s in zip(coefficients, sources, strict=True):
            replacement = s.replacement(key, device=device)
            if replacement is not None and c != 0.0:
                mixed += c * (replacement.float() - base_value)
        if not bool(mixed.any()):
            continue
        module = next(s.replaced_modules[key] for s in sources if key in s.replaced)
        param = key.rsplit(".", 1)[-1]
        wrapped = ".base_layer" if module in targets else ""
        dtype = next(s.adapter_dtype(s.replaced[key]) for s in sources if key in s.replaced)
        out[f"{PEFT_PREFIX}{module}{wrapped}.{param}"] = (base_value + mixed).to(dtype)
    return out


def _adapter_config(
    sources: Sequence[LoraSource],
    targets: dict[str, LoraModule],
    ranks: dict[str, int],
    full_tensors: dict[str, torch.Tensor],
) -> dict[str, Any]:
    """A PEFT ``adapter_config.json`` with scaling 1 (alpha = r) for every module."""
    raw = sources[0].adapter_config.raw
    counts: dict[int, int] = {}
    for r in ranks.values():
        counts[r] = counts.get(r, 0) + 1
    r = max(counts, key=lambda k: (counts[k], k)) if counts else 1
    others = {m: k for m, k in ranks.items() if k != r}
    modules_to_save: list[str] = []
    for s in sources:
        for name in s.adapter_config.raw.get("modules_to_save") or []:
            if name not in modules_to_save:
                modules_to_save.append(name)
    has_bias = any(k.endswith(".bias") for k in full_tensors)
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": raw.get("task_type"),
        "base_model_name_or_path": raw.get("base_model_name_or_path"),
        "auto_mapping": raw.get("auto_mapping"),
        "r": r,
        "lora_alpha": r,
        "use_rslora": False,
        "rank_pattern": {re_escape_module(m): k for m, k in others.items()},
        "alpha_pattern": {re_escape_module(m): k for m, k in others.items()},
        "target_modules": sorted(targets),
        "fan_in_fan_out": any(m.transposed and m.kind == "linear" for m in targets.values()),
        "modules_to_save": modules_to_save or None,
        "bias": "all" if has_bias else "none",
        "lora_dropout": 0.0,
        "inference_mode": True,
        "init_lora_weights": True,
        "revision": raw.get("revision"),
    }
    return config


def re_escape_module(module: str) -> str:
    """A rank/alpha pattern key that matches exactly ``module`` (peft matches keys as regexes)."""
    return module.replace(".", r"\.")


def merge_to_lora_folder(
    inputs: Any,
    output: Path,
    *,
    method: MergeMethod,
    weights: Sequence[float],
    params: MethodParams,
    lora_rank: str | int,
    out_dtype: torch.dtype | None,
    device: torch.device,
    overwrite: bool,
    started: float,
) -> Any:
    """The ``output_format="lora"`` branch of :func:`hf_recycle._merge.engine.merge`.

    Writes the adapter into a staging folder renamed into place on success, with
    ``merge_config.json`` (parameters, inputs, per-module ranks and relative errors) and
    ``checkpoints.lock.json``.

    Args:
        inputs: The opened :class:`~hf_recycle._merge.inputs.MergeInputs`.
        output: The folder to create.
        method: The merge method (linear or task_arithmetic).
        weights: One weight per input.
        params: Method parameters.
        lora_rank: ``"exact"`` or a truncation rank.
        out_dtype: dtype of the factors (``None``: that of the first adapter).
        device: Where to compute.
        overwrite: Replace ``output`` if it exists.
        started: ``time.perf_counter()`` when the merge started.

    Returns:
        A :class:`~hf_recycle._merge.output_folder.MergeResult`.
    """
    import time

    from hf_recycle._merge.output_folder import MergeResult, write_merge_record
    from hf_recycle.outputs import staging_folder
    from hf_recycle.units import dtype_name

    logger.info(
        "merging %d LoRA adapters with %s into one LoRA adapter (rank %s) on %s into %s",
        len(inputs.checkpoints),
        method.name,
        lora_rank,
        device,
        output,
    )
    with staging_folder(output, overwrite) as folder:
        report = write_lora_merge(
            folder,
            inputs.checkpoints,
            method=method,
            weights=weights,
            params=params,
            lora_rank=lora_rank,
            out_dtype=out_dtype,
            device=device,
        )
        parameters = {
            "weights": list(weights),
            "lambda": params.lambda_ if method.needs_base else None,
            "normalize": params.normalize,
            "dtype": "auto" if out_dtype is None else dtype_name(out_dtype),
        }
        write_merge_record(folder, method, inputs, parameters, lora=report.record(), files=report.files)
    return MergeResult(
        output=output,
        files=tuple(report.files),
        method=method.name,
        num_tensors=2 * len(report.modules) + len(report.full_tensors),
        input_bytes=report.input_bytes,
        output_bytes=report.output_bytes,
        seconds=time.perf_counter() - started,
        device=device.type,
    )
