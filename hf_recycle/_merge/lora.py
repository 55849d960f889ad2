"""PEFT LoRA adapters read as full checkpoints: base + ΔW, one tensor at a time.

A LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``) over a
base checkpoint is a :class:`~hf_recycle._merge.sources.TensorSource` like any other: it
yields the base's tensor names, and for every target module the base tensor plus

    ΔW = s · B @ A,   s = alpha / r   (alpha / √r with ``use_rslora``)

with ``r`` and ``alpha`` taken per module from ``rank_pattern`` / ``alpha_pattern``,
transposed for ``fan_in_fan_out`` layers (GPT-2 ``Conv1D``, stored as (in, out)) and for
embeddings (``lora_embedding_A`` is (r, num_embeddings), ``lora_embedding_B`` is
(dim, r)). Tensors saved whole in the adapter (``modules_to_save``, trained biases with
``bias: all``) replace the base tensor. ΔW is computed per tensor, for the rows asked,
when the engine reads it; the whole model is never materialised. Linear merges do not
read base + ΔW per adapter at all: they ask for the factors
(:meth:`LoraSource.low_rank_form`), read the shared base once and add every adapter's
delta with one matrix product.

Only safetensors and json are needed here: peft is not imported.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_recycle._merge.adapter_config import (
    ADAPTER_CONFIG,
    ADAPTER_PICKLE,
    ADAPTER_SAFETENSORS,
    PEFT_PREFIX,
    LoraAdapterConfig,
    read_adapter_config,
)
from hf_recycle._merge.sources import SAFETENSORS_DTYPES, LowRankForm, TensorSource
from hf_recycle.errors import (
    CheckpointFormatError,
    CheckpointNotFoundError,
    IncompatibleCheckpointsError,
    PickleRefusedError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)

logger = logging.getLogger(__name__)

_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


@dataclass(frozen=True)
class LoraModule:
    """One LoRA target of an adapter, mapped onto a base tensor.

    Attributes:
        module: The module path in the adapter (``model.layers.0.self_attn.q_proj``).
        target: The base tensor it changes (``model.layers.0.self_attn.q_proj.weight``).
        kind: ``"linear"`` or ``"embedding"``.
        a_key: Adapter tensor holding A (``lora_A.weight`` or ``lora_embedding_A``).
        b_key: Adapter tensor holding B.
        rank: r of this module.
        scaling: s of this module.
        transposed: The base tensor is stored (in, out): ``fan_in_fan_out`` or embedding.
        bias_key: Adapter tensor holding ``lora_B.bias`` (``lora_bias``), if any.
    """

    module: str
    target: str
    kind: str
    a_key: str
    b_key: str
    rank: int
    scaling: float
    transposed: bool
    bias_key: str | None = None


class _AdapterTensors:
    """The tensors of ``adapter_model.safetensors`` (or, when allowed, ``adapter_model.bin``)."""

    def __init__(self, folder: Path, name: str, allow_pickle: bool) -> None:
        file = folder / ADAPTER_SAFETENSORS
        self._handle = None
        self._tensors: dict[str, torch.Tensor] = {}
        if file.is_file():
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(file), framework="pt")
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointFormatError(
                    f"{file} of adapter '{name}' is not a readable safetensors file ({exc}): re-save it"
                ) from exc
            self._keys = list(self._handle.keys())
            return
        pickled = folder / ADAPTER_PICKLE
        if not pickled.is_file():
            raise CheckpointNotFoundError(
                f"adapter '{name}' has no {ADAPTER_SAFETENSORS} in {folder}: save it with "
                "save_pretrained (safetensors is the default)"
            )
        if not allow_pickle:
            raise PickleRefusedError(
                f"adapter '{name}' holds only {ADAPTER_PICKLE} (pickle); re-save it as safetensors, or "
                "allow pickle inputs (loaded with torch.load(weights_only=True))"
            )
        try:
            state = torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointFormatError(f"cannot load {pickled} of adapter '{name}': {exc}") from exc
        self._tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        self._keys = list(self._tensors)

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        if self._handle is not None:
            return tuple(self._handle.get_slice(key).get_shape())
        return tuple(self._tensors[key].shape)

    def get(self, key: str) -> torch.Tensor:
        if self._handle is not None:
            return self._handle.get_tensor(key)
        return self._tensors[key]

    def dtype(self, key: str) -> torch.dtype:
        return (
            self.get(key).dtype
            if self._handle is None
            else SAFETENSORS_DTYPES[self._handle.get_slice(key).get_dtype()]
        )

    def close(self) -> None:
        self._handle = None
        self._tensors = {}


class SharedBase(TensorSource):
    """A base checkpoint shared by several adapters, remembering the last tensor read.

    The engine reads tensor ``k`` from every input before moving to the next, so the
    adapters over one base read each base tensor (or block of rows) from disk once. The
    memory is per thread: engine workers merging different blocks do not evict each
    other's.

    Args:
        inner: The base checkpoint.
    """

    def __init__(self, inner: TensorSource) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = inner.path
        self.config = inner.config
        self._local = threading.local()

    def keys(self) -> list[str]:
        return self.inner.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.inner.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        return self.inner.dtype(key)

    def output_dtype(self, key: str) -> torch.dtype:
        return self.inner.output_dtype(key)

    def read(self, key: str, rows: slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        tag = (key, None if rows is None else (rows.start, rows.stop, rows.step), str(torch.device(device)))
        last = getattr(self._local, "last", None)
        if last is not None and last[0] == tag:
            return last[1]
        tensor = self.inner.read(key, rows, device)
        self._local.last = (tag, tensor)
        return tensor

    def read_into(self, key: str, out: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        return self.inner.read_into(key, out, rows)

    def file_ranges(self, key: str) -> list[tuple[Path, int, int]]:
        return self.inner.file_ranges(key)

    def close(self) -> None:
        self._local = threading.local()
        self.inner.close()


class LoraSource(TensorSource):
    """A LoRA adapter over its base, yielding the base's tensors with ΔW added.

    Tensors the adapter does not touch are the base's, as stored. Tensors it changes are
    returned in float32: base (or the adapter's saved replacement) + s · B @ A, computed
    on the ``device`` given to :meth:`read` (the engine passes its own, see
    ``computes_on_device``).

    Args:
        path: The adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
        base: The base checkpoint; pass one :class:`SharedBase` to every adapter over the
            same base so its tensors are read once.
        name: How the user named the adapter (defaults to the path).
        allow_pickle: Accept ``adapter_model.bin`` (loaded with ``weights_only=True``).

    Raises:
        UnsupportedAdapterError: Not plain LoRA, or a target that is not linear/embedding.
        ShapeMismatchError: The adapter does not fit the base's shapes.
        IncompatibleCheckpointsError: An adapter module has no tensor in the base.
    """

    #: The engine reads changed tensors with ``read(..., device=<merge device>)`` (ΔW on the GPU).
    computes_on_device = True

    def __init__(
        self, path: str | Path, base: TensorSource, name: str | None = None, allow_pickle: bool = False
    ) -> None:
        self.path = Path(path)
        self.name = name or str(path)
        self.base = base
        self.config = base.config
        self.adapter_config = read_adapter_config(self.path, self.name)
        self._tensors = _AdapterTensors(self.path, self.name, allow_pickle)
        self._base_keys = set(base.keys())
        self.modules: dict[str, LoraModule] = {}
        self.replaced: dict[str, str] = {}  # base tensor -> adapter tensor
        self.replaced_modules: dict[str, str] = {}  # base tensor -> adapter module path
        self._bias_deltas: dict[str, LoraModule] = {}  # base bias tensor -> module with lora_B.bias
        self._parse()
        self._local = threading.local()  # per thread: the factors of the last tensor read
        logger.debug(
            "adapter '%s': %d LoRA modules, %d replaced tensors over base '%s'",
            self.name,
            len(self.modules),
            len(self.replaced),
            base.name,
        )

    # --- parsing -----------------------------------------------------------------------

    def _base_key(self, name: str, what: str) -> str:
        """The base tensor that adapter tensor/module ``name`` (+ ``.weight``...) refers to."""
        if name in self._base_keys:
            return name
        parts = name.split(".")
        for i in range(1, len(parts) - 1):  # the adapter names a wrapper the base lacks
            candidate = ".".join(parts[i:])
            if candidate in self._base_keys:
                return candidate
        matches = [k for k in self._base_keys if k.endswith("." + name)]  # the base has a prefix
        if len(matches) == 1:
            return matches[0]
        raise IncompatibleCheckpointsError(
            f"adapter '{self.name}' changes {what} '{name}', but base '{self.base.name}' has no tensor of that "
            "name: pass the base model this adapter was trained on (--base)"
        )

    def _parse(self) -> None:
        cfg = self.adapter_config
        parts_by_module: dict[str, dict[str, str]] = {}
        for key in self._tensors.keys():
            name = key.removeprefix(PEFT_PREFIX)
            parts = name.split(".")
            if "lora_magnitude_vector" in parts:
                raise UnsupportedAdapterError(
                    f"adapter '{self.name}' holds DoRA magnitudes ('{key}'): DoRA is not W + ΔW, so it cannot "
                    "be combined in delta space; merge it with peft's merge_and_unload() and pass the full model"
                )
            if any(p in ("token_adapter", "trainable_tokens_delta") for p in parts):
                raise UnsupportedAdapterError(
                    f"adapter '{self.name}' holds trainable-token deltas ('{key}'), which are not supported; "
                    "merge it with peft's merge_and_unload() and pass the full model"
                )
            lora_at = next((i for i, p in enumerate(parts) if p in _LORA_PARTS), None)
            if lora_at is not None:
                module = ".".join(parts[:lora_at])
                part = parts[lora_at]
                rest = parts[lora_at + 1 :]
                if rest and rest[-1] == "bias":
                    part = "lora_B.bias"
                parts_by_module.setdefault(module, {})[part] = key
                continue
            if "original_module" in parts:  # old peft also saved the untouched copy
                continue
            if "modules_to_save" in parts:  # old format: <module>.modules_to_save.<adapter>.<param>
                i = parts.index("modules_to_save")
                parts = parts[:i] + parts[i + 2 :]
            module_parts = [p for p in parts if p != "base_layer"]
            target = self._base_key(".".join(module_parts), "tensor")
            self._check_shape(target, self._tensors.shape(key), key)
            self.replaced[target] = key
            self.replaced_modules[target] = ".".join(module_parts[:-1])
        for module, found in parts_by_module.items():
            self._add_module(module, found, cfg)

    def _check_shape(self, target: str, got: tuple[int, ...], what: str) -> None:
        want = tuple(self.base.shape(target))
        if tuple(got) != want:
            raise ShapeMismatchError(
                f"adapter '{self.name}' does not fit base '{self.base.name}': {what} gives tensor '{target}' "
                f"shape {tuple(got)}, but the base has {want}; pass the base model this adapter was trained "
                "on (--base)"
            )

    def _add_module(self, module: str, found: dict[str, str], cfg: LoraAdapterConfig) -> None:
        if "lora_A" in found or "lora_B" in found:
            kind, a_part, b_part = "linear", "lora_A", "lora_B"
        else:
            kind, a_part, b_part = "embedding", "lora_embedding_A", "lora_embedding_B"
        if a_part not in found or b_part not in found:
            raise CheckpointFormatError(
                f"adapter '{self.name}' has only one of {a_part}/{b_part} for module '{module}': re-save it"
            )
        a_shape = self._tensors.shape(found[a_part])
        b_shape = self._tensors.shape(found[b_part])
        if len(a_shape) != 2 or len(b_shape) != 2:
            raise UnsupportedAdapterError(
                f"adapter '{self.name}' targets '{module}' with {len(a_shape)}-d factors (a convolution?): only "
                "linear, Conv1D and embedding targets are supported; merge it with merge_and_unload() first"
            )
        rank = a_shape[0]
        if b_shape[1] != rank:
            raise CheckpointFormatError(
                f"adapter '{self.name}' module '{module}': {b_part} {b_shape} and {a_part} {a_shape} disagree on r"
            )
        if cfg.rank(module) != rank:
            raise CheckpointFormatError(
                f"adapter '{self.name}' module '{module}' has rank {rank} on disk but adapter_config.json gives "
                f"r={cfg.rank(module)} (r / rank_pattern): fix the config so the scaling is right"
            )
        target = self._base_key(f"{module}.weight", "module")
        transposed = kind == "embedding" or cfg.fan_in_fan_out
        # linear: ΔW = B @ A is (out, in); transposed layouts store (B @ A).T
        want = (a_shape[1], b_shape[0]) if transposed else (b_shape[0], a_shape[1])
        base_shape = tuple(self.base.shape(target))
        if base_shape != want:
            flip = ""
            if kind == "linear" and base_shape == want[::-1]:
                flip = f" (transposed: check fan_in_fan_out in {ADAPTER_CONFIG})"
            raise ShapeMismatchError(
                f"adapter '{self.name}' does not fit base '{self.base.name}': module '{module}' has ΔW of shape "
                f"{want} but base tensor '{target}' is {base_shape}{flip}; pass the base model this adapter "
                "was trained on (--base)"
            )
        bias_key = found.get("lora_B.bias")
        lora_module = LoraModule(
            module=module,
            target=target,
            kind=kind,
            a_key=found[a_part],
            b_key=found[b_part],
            rank=rank,
            scaling=cfg.scaling(module),
            transposed=transposed,
            bias_key=bias_key,
        )
        self.modules[target] = lora_module
        if bias_key is not None:
            bias_target = self._base_key(f"{module}.bias", "bias of module")
            self._check_shape(bias_target, self._tensors.shape(bias_key), bias_key)
            self._bias_deltas[bias_target] = lora_module

    # --- TensorSource ------------------------------------------------------------------

    def keys(self) -> list[str]:
        return self.base.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(key)

    def dtype(self, key: str) -> torch.dtype:
        if key in self.modules or key in self._bias_deltas:
            return torch.float32
        if key in self.replaced:
            return self._tensors.dtype(self.replaced[key])
        return self.base.dtype(key)

    def output_dtype(self, key: str) -> torch.dtype:
        """The dtype tensor ``key`` is stored in (replacement or base), for ``dtype="auto"`` outputs.

        :meth:`dtype` says float32 for the tensors ΔW changes, as :meth:`read` returns them.
        """
        if key in self.replaced:
            return self._tensors.dtype(self.replaced[key])
        return self.base.dtype(key)

    def adapter_dtype(self, name: str) -> torch.dtype:
        """Stored dtype of tensor ``name`` of the adapter file."""
        return self._tensors.dtype(name)

    def changes(self, key: str) -> bool:
        """Whether the adapter changes tensor ``key`` of the base (ΔW, bias or replacement)."""
        return key in self.modules or key in self.replaced or key in self._bias_deltas

    def factors(self, key: str, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)`` in float32 on ``device`` with ΔW = U @ V in the base tensor's layout.

        The scaling s is folded into U. For a plain linear U = s·B, V = A; for
        ``fan_in_fan_out`` and embeddings (stored (in, out)) U = s·Aᵀ, V = Bᵀ.
        """
        mod = self.modules[key]
        tag = (key, str(torch.device(device)))
        cached = getattr(self._local, "factors", None)
        if cached is not None and cached[0] == tag:
            return cached[1]
        a = self._tensors.get(mod.a_key).to(device=device, dtype=torch.float32)
        b = self._tensors.get(mod.b_key).to(device=device, dtype=torch.float32)
        u, v = (a.T * mod.scaling, b.T) if mod.transposed else (b * mod.scaling, a)
        self._local.factors = (tag, (u, v))
        return u, v

    def low_rank_form(self, key: str, device: str | torch.device = "cpu") -> LowRankForm | None:
        """Base + s·B@A as a :class:`LowRankForm` over :attr:`base` (``u``/``v`` as :meth:`factors`).

        Tensors the adapter leaves alone are the base's (no factors). Tensors it replaces or
        whose bias it changes have no low-rank form (``None``): read them with :meth:`read`.
        """
        if not self.changes(key):
            return LowRankForm(self.base)
        if key not in self.modules or key in self.replaced:
            return None
        u, v = self.factors(key, device)
        return LowRankForm(self.base, u, v)

    def file_ranges(self, key: str) -> list[tuple[Path, int, int]]:
        """The base's bytes of ``key`` (the adapter's own tensors are small: not hinted)."""
        return [] if key in self.replaced else self.base.file_ranges(key)

    def low_rank_width(self, key: str) -> int:
        if key in self.modules and key not in self.replaced:
            return self.modules[key].rank
        return 0

    def delta(
        self, key: str, rows: slice | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor | None:
        """ΔW of tensor ``key`` (rows ``rows``) in float32, or None when the adapter does not target it."""
        if key in self.modules:
            u, v = self.factors(key, device)
            return (u if rows is None else u[rows]) @ v
        if key in self._bias_deltas:
            mod = self._bias_deltas[key]
            bias = self._tensors.get(mod.bias_key).to(device=device, dtype=torch.float32) * mod.scaling
            return bias if rows is None else bias[rows]
        return None

    def replacement(
        self, key: str, rows: slice | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor | None:
        """The tensor the adapter saved whole in place of base tensor ``key``, or None."""
        if key not in self.replaced:
            return None
        tensor = self._tensors.get(self.replaced[key])
        if rows is not None and tensor.dim() > 0:
            tensor = tensor[rows]
        return tensor.to(device)

    def read(self, key: str, rows: slice | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        if not self.changes(key):
            return self.base.read(key, rows, device)
        value = self.replacement(key, rows, device)
        if value is None:
            value = self.base.read(key, rows, device)
        value = value.to(dtype=torch.float32, copy=True)
        if key in self.modules:
            u, v = self.factors(key, device)
            u = u if rows is None else u[rows]
            value = value.view(u.shape[0], v.shape[1]).addmm_(u, v).view(value.shape)
        elif key in self._bias_deltas:
            value += self.delta(key, rows, device)
        return value

    def close(self) -> None:
        self._local = threading.local()
        self._tensors.close()
        self.base.close()
