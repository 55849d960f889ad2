"""``adapter_config.json`` of a PEFT LoRA adapter: read, validated, and the base it names.

Only json is needed here: neither peft nor torch is imported.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_recycle.errors import (
    AdapterBaseError,
    CheckpointFormatError,
    CheckpointNotFoundError,
    UnsupportedAdapterError,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

# LoraConfig fields that turn LoRA into something that is not W + s·B@A, with the reason.
_NONLINEAR_VARIANTS = {
    "use_dora": "DoRA (use_dora: true): its weight is magnitude · (W + ΔW) / ‖W + ΔW‖, not W + ΔW",
    "alora_invocation_tokens": "aLoRA (alora_invocation_tokens): its delta applies only after the invocation tokens",
    "use_qalora": "QA-LoRA (use_qalora: true): its A acts on pooled groups of inputs, not on W",
    "velora_config": "VeLoRA (velora_config): its update is not a fixed B @ A product",
    "monteclora_config": "MonteCLoRA (monteclora_config): its factors are sampled, not fixed",
    "use_bdlora": "BD-LoRA (use_bdlora): its factors are block-diagonal shards",
    "arrow_config": "Arrow (arrow_config): it routes between several LoRAs per token",
    "kasa_config": "KaSA (kasa_config): it adds a singular-value update of W",
    "target_parameters": "LoRA on raw parameters (target_parameters)",
    "layer_replication": "layer_replication: the adapted model has more layers than the base",
    "trainable_token_indices": "trainable tokens (trainable_token_indices)",
}


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a PEFT adapter (an ``adapter_config.json``)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """``patterns[k]`` for the first key ``k`` matching ``module`` as peft matches it, else ``default``."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return patterns[key]
    return default


@dataclass(frozen=True)
class LoraAdapterConfig:
    """The fields of ``adapter_config.json`` that define ΔW, validated.

    Attributes:
        r: Default rank.
        lora_alpha: Default alpha.
        use_rslora: Scaling alpha/√r instead of alpha/r.
        fan_in_fan_out: Linear targets store their weight as (in, out) (GPT-2 ``Conv1D``).
        lora_bias: ``lora_B`` has a bias, added (scaled) to the base bias.
        rank_pattern: Per-module ranks (regex key → rank), as peft matches them.
        alpha_pattern: Per-module alphas.
        base_model_name_or_path: The base the adapter names, if any.
        raw: The whole parsed file.
    """

    r: int
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    lora_bias: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    base_model_name_or_path: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def rank(self, module: str) -> int:
        """Rank of ``module`` (a module path such as ``model.layers.0.self_attn.q_proj``)."""
        return int(_pattern_value(self.rank_pattern, module, self.r))

    def alpha(self, module: str) -> float:
        """Alpha of ``module``."""
        return float(_pattern_value(self.alpha_pattern, module, self.lora_alpha))

    def scaling(self, module: str) -> float:
        """The factor s of ΔW = s · B @ A for ``module``."""
        r = self.rank(module)
        return self.alpha(module) / (math.sqrt(r) if self.use_rslora else r)


def read_adapter_config(folder: str | Path, name: str | None = None) -> LoraAdapterConfig:
    """Parse and validate the ``adapter_config.json`` of a LoRA adapter folder.

    Raises:
        CheckpointNotFoundError: The folder has no ``adapter_config.json``.
        CheckpointFormatError: The file is not valid JSON or lacks ``r`` / ``lora_alpha``.
        UnsupportedAdapterError: The adapter is not plain LoRA (another PEFT type, DoRA...).
    """
    folder = Path(folder)
    name = name or str(folder)
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise CheckpointNotFoundError(f"adapter '{name}' has no {ADAPTER_CONFIG} in {folder}")
    try:
        raw = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"cannot read {file} of adapter '{name}': {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{file} of adapter '{name}' is not a JSON object")
    peft_type = str(raw.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise UnsupportedAdapterError(
            f"adapter '{name}' is a PEFT {peft_type or 'adapter without peft_type'}, not LORA: only LoRA "
            "adapters are linear weight deltas (W + s·B@A) that can be combined with other checkpoints; "
            "merge it into its base with peft's merge_and_unload() and pass the resulting full checkpoint"
        )
    for key, reason in _NONLINEAR_VARIANTS.items():
        if raw.get(key):
            raise UnsupportedAdapterError(
                f"adapter '{name}' uses {reason}, so it cannot be combined in delta space; merge it into "
                "its base with peft's merge_and_unload() and pass the resulting full checkpoint"
            )
    try:
        r = int(raw["r"])
        alpha = float(raw.get("lora_alpha", r))
        rank_pattern = {str(k): int(v) for k, v in (raw.get("rank_pattern") or {}).items()}
        alpha_pattern = {str(k): float(v) for k, v in (raw.get("alpha_pattern") or {}).items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointFormatError(
            f"{file} of adapter '{name}' has no valid r / lora_alpha / rank_pattern / alpha_pattern ({exc!r})"
        ) from exc
    return LoraAdapterConfig(
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(raw.get("use_rslora", False)),
        fan_in_fan_out=bool(raw.get("fan_in_fan_out", False)),
        lora_bias=bool(raw.get("lora_bias", False)),
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
        base_model_name_or_path=raw.get("base_model_name_or_path") or None,
        raw=raw,
    )


def adapter_base_spec(folder: str | Path, base: str | None, name: str | None = None) -> str:
    """The base checkpoint spec an adapter merges onto.

    ``base`` (``--base`` or the recipe's ``base:``) when given; otherwise the adapter's
    ``base_model_name_or_path`` (a local folder or a Hub id, resolved like any spec).

    Raises:
        AdapterBaseError: No base was given and the adapter names none.
    """
    if base:
        return base
    name = name or str(folder)
    named = read_adapter_config(folder, name).base_model_name_or_path
    if named:
        return named
    raise AdapterBaseError(
        f"adapter '{name}' needs the base model it was trained on: pass --base SPEC (or the recipe's "
        f"base:); its {ADAPTER_CONFIG} names no base_model_name_or_path"
    )


def base_unavailable(name: str, spec: str, reason: BaseException) -> AdapterBaseError:
    """The error for an adapter whose named base cannot be opened."""
    return AdapterBaseError(
        f"adapter '{name}' needs the base model it was trained on: its {ADAPTER_CONFIG} names '{spec}', "
        f"which cannot be opened ({reason}); pass --base SPEC (or the recipe's base:)"
    )
