"""From checkpoint specs to opened :class:`~hf_recycle._merge.sources.TensorSource` objects.

This is the one place that turns what the user typed into local folders and picks a
source class for each. Local folders are used in place; Hub specs (``org/name@rev``,
globs, ``@history``...) are resolved to pinned commits and downloaded by
:mod:`hf_recycle.hub.download`, and their pins are kept for ``checkpoints.lock.json``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hf_recycle._merge.adapter_config import is_adapter_folder
from hf_recycle._merge.sources import (
    PickleSource,
    SafetensorsSource,
    TensorSource,
    pickle_files,
    read_config,
    safetensors_files,
)
from hf_recycle.errors import CheckpointFormatError, CheckpointNotFoundError, PickleRefusedError, SpecError
from hf_recycle.hub.files import FolderContents
from hf_recycle.hub.pins import Fetched, PinnedCheckpoint
from hf_recycle.hub.spec import is_local_spec

logger = logging.getLogger(__name__)

CheckpointLike = str | Path | TensorSource | PinnedCheckpoint | Fetched


@dataclass
class MergeInputs:
    """The opened inputs of one merge.

    Attributes:
        checkpoints: One source per checkpoint, in the user's order.
        base: The base checkpoint, when one was given.
        records: One JSON-ready record per checkpoint then base (written into merge_config.json).
        pins: The pinned checkpoint of each source, in the order of ``checkpoints``.
        base_pin: The pin of the base: the one given, else the one base that every LoRA
            adapter input names (recorded in lock files; ``base`` stays ``None``).
    """

    checkpoints: list[TensorSource]
    base: TensorSource | None
    records: list[dict[str, object]] = field(default_factory=list)
    pins: list[PinnedCheckpoint] = field(default_factory=list)
    base_pin: PinnedCheckpoint | None = None

    def close(self) -> None:
        """Close every source."""
        for source in [*self.checkpoints, *([self.base] if self.base else [])]:
            source.close()


def resolve_specs(
    specs: Sequence[str | Path], *, endpoint: str | None = None, token: str | None = None
) -> list[tuple[str, Path]]:
    """``(spec, local folder)`` for each checkpoint the specs name (Hub globs expand to several).

    Raises:
        CheckpointNotFoundError: A local spec is not an existing folder.
    """
    return [(name, path) for name, path, _pin in fetch_specs(specs, endpoint=endpoint, token=token)]


def expand_checkpoints(
    items: Sequence[CheckpointLike], *, endpoint: str | None = None, token: str | None = None
) -> list[CheckpointLike]:
    """Replace each Hub spec by the pins it expands to (globs, ``@history``); other items pass through.

    Nothing is downloaded; the result has one item per checkpoint to merge.
    """
    from hf_recycle.hub.resolve import resolve

    out: list[CheckpointLike] = []
    for item in items:
        if isinstance(item, str) and not is_local_spec(item):
            out.extend(resolve([item], endpoint=endpoint, token=token))
        else:
            out.append(item)
    return out


def fetch_specs(
    specs: Sequence[str | Path | PinnedCheckpoint | Fetched],
    *,
    endpoint: str | None = None,
    token: str | None = None,
    allow_pickle: bool = False,
) -> list[tuple[str, Path, PinnedCheckpoint]]:
    """``(name, local folder, pin)`` per checkpoint: local folders in place, Hub checkpoints downloaded,
    :class:`~hf_recycle.hub.pins.Fetched` ones as they are.

    Raises:
        CheckpointNotFoundError: A local spec is not an existing folder.
        PickleRefusedError: A Hub checkpoint has only pickle weights and pickle is not allowed.
    """
    from hf_recycle.hub.download import download_checkpoint, fetch_checkpoints

    resolved: list[tuple[str, Path, PinnedCheckpoint]] = []
    for spec in specs:
        if isinstance(spec, Fetched):
            resolved.append((spec.spec, spec.path, spec.pin))
            continue
        if isinstance(spec, PinnedCheckpoint):
            path = download_checkpoint(spec, endpoint=endpoint, token=token, allow_pickle=allow_pickle)
            resolved.append((spec.spec, path, spec))
            continue
        if isinstance(spec, str) and not is_local_spec(spec):
            for pin, path in fetch_checkpoints(
                [spec], endpoint=endpoint, token=token, allow_pickle=allow_pickle
            ):
                resolved.append((pin.spec, path, pin))
            continue
        path = Path(spec).expanduser()
        if not path.exists():
            raise CheckpointNotFoundError(
                f"checkpoint folder '{spec}' does not exist: pass an existing folder that holds "
                "config.json and model.safetensors"
            )
        if not path.is_dir():
            raise CheckpointNotFoundError(
                f"checkpoint '{spec}' is a file, not a folder: pass the folder that holds config.json "
                "and the weights"
            )
        resolved.append((str(spec), path, local_pin(str(spec), path)))
    return resolved


def local_pin(name: str, path: Path) -> PinnedCheckpoint:
    """The pin of a local folder (kind from its files; no commit)."""
    return PinnedCheckpoint(
        repo_id=None,
        revision=None,
        commit=None,
        subfolder=None,
        kind=FolderContents.of_folder(path).kind,
        spec=name,
        local_path=str(path.resolve()),
    )


def open_source(name: str, path: Path, *, allow_pickle: bool = False) -> TensorSource:
    """The source class that fits the folder ``path``.

    Raises:
        CheckpointNotFoundError: The folder holds no weights.
        PickleRefusedError: It holds only ``pytorch_model.bin`` and pickle is not allowed.
        CheckpointFormatError: It is a PEFT adapter (not supported by this merge yet) or malformed.
    """
    if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise CheckpointFormatError(
            f"checkpoint '{name}' is a PEFT adapter (adapter_config.json): it is read over its base "
            "model; pass it to open_inputs (or wrap it in hf_recycle._merge.lora.LoraSource)"
        )
    if safetensors_files(path, name):
        return SafetensorsSource(path, name=name)
    if pickle_files(path):
        if not allow_pickle:
            raise PickleRefusedError(
                f"checkpoint '{name}' holds only pickle weights ({pickle_files(path)[0].name}), which can run "
                "code when loaded: convert it to safetensors, or pass --allow-pickle to load it with "
                "torch.load(weights_only=True)"
            )
        logger.warning("loading pickle weights of '%s' with torch.load(weights_only=True)", name)
        return PickleSource(path, name=name, config=read_config(path, name))
    raise CheckpointNotFoundError(
        f"checkpoint folder '{name}' holds no weights: expected model.safetensors or "
        "model-*-of-*.safetensors with model.safetensors.index.json"
    )


class _AdapterPlaceholder(TensorSource):
    """A LoRA adapter folder not opened yet (it needs its base first)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path, self.config = name, path, {}

    def keys(self) -> list[str]:
        return []

    def shape(self, key: str) -> tuple[int, ...]:
        raise KeyError(key)

    def dtype(self, key: str):  # noqa: ANN201
        raise KeyError(key)

    def read(self, key, rows=None, device="cpu"):  # noqa: ANN001, ANN201
        raise KeyError(key)


def _open_adapters(
    opened: list[TensorSource],
    records: list[dict[str, object]],
    adapters: list[int],
    base_index: int | None,
    *,
    allow_pickle: bool,
    endpoint: str | None,
    token: str | None,
    fetched: Mapping[str, Fetched],
) -> list[tuple[TensorSource, PinnedCheckpoint]]:
    """Open LoRA adapters (in place in ``opened``) as base + ΔW over the given base, else their named one.

    Returns the bases the adapters named (source and pin), without the given base.

    Adapters over one base share one :class:`~hf_recycle._merge.lora.SharedBase`, which
    is also the merge's base, so each base tensor is read from disk once.

    Raises:
        AdapterBaseError: An adapter has no base: none given, and none named that opens.
    """
    from hf_recycle._merge.adapter_config import adapter_base_spec, base_unavailable
    from hf_recycle._merge.lora import LoraSource, SharedBase
    from hf_recycle.errors import HfRecycleError

    shared: dict[str, SharedBase] = {}
    named: dict[str, tuple[TensorSource, PinnedCheckpoint]] = {}
    if base_index is not None:
        opened[base_index] = SharedBase(opened[base_index])
    for index in adapters:
        name, path = opened[index].name, Path(opened[index].path)
        if base_index is not None:
            base_source = opened[base_index]
        else:
            spec = adapter_base_spec(path, None, name)
            try:
                (base_name, base_path, base_pin), *_ = fetch_specs(
                    [fetched.get(spec, spec)], endpoint=endpoint, token=token, allow_pickle=allow_pickle
                )
                key = str(base_path.resolve())
                if key not in shared:
                    shared[key] = SharedBase(open_source(base_name, base_path, allow_pickle=allow_pickle))
                    named[key] = (shared[key], base_pin)
            except HfRecycleError as exc:
                raise base_unavailable(name, spec, exc) from exc
            base_source = shared[key]
        opened[index] = LoraSource(path, base_source, name=name, allow_pickle=allow_pickle)
        records[index].update(kind="LoraSource", base=base_source.name)
    return list(named.values())


def _record(source: TensorSource, kind: str | None = None) -> dict[str, object]:
    """The ``merge_config.json`` entry of an opened input."""
    return {
        "spec": source.name,
        "path": str(Path(source.path).resolve()),
        "kind": kind or type(source).__name__,
    }


def _pin_fields(pin: PinnedCheckpoint) -> dict[str, object]:
    """Where a Hub input came from (nothing for a local folder)."""
    if pin.is_local:
        return {}
    return {
        "repo_id": pin.repo_id,
        "revision": pin.revision,
        "commit": pin.commit,
        "subfolder": pin.subfolder,
    }


def open_inputs(
    checkpoints: Sequence[CheckpointLike],
    base: CheckpointLike | None = None,
    *,
    allow_pickle: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    named_bases: Mapping[str, Fetched] | None = None,
) -> MergeInputs:
    """Resolve and open every checkpoint and the base.

    Already-opened :class:`TensorSource` objects pass through unchanged. Hub specs are
    resolved and downloaded (:class:`~hf_recycle.hub.pins.Fetched` ones already are); a glob
    adds one input per checkpoint it matches (call :func:`expand_checkpoints` first to know
    the count). The base must be one checkpoint. ``named_bases`` maps the bases LoRA
    adapters name (their ``base_model_name_or_path``) to checkpoints already fetched.

    Raises:
        SpecError: The base spec expands to more than one checkpoint.
    """
    entries: list[tuple[TensorSource | tuple[str, Path], PinnedCheckpoint]] = []
    for item in checkpoints:
        if isinstance(item, TensorSource):
            entries.append((item, local_pin(item.name, Path(item.path))))
        else:
            fetched = fetch_specs([item], endpoint=endpoint, token=token, allow_pickle=allow_pickle)
            entries.extend(((name, path), pin) for name, path, pin in fetched)
    if base is not None:
        if isinstance(base, TensorSource):
            entries.append((base, local_pin(base.name, Path(base.path))))
        else:
            fetched = fetch_specs([base], endpoint=endpoint, token=token, allow_pickle=allow_pickle)
            if len(fetched) != 1:
                raise SpecError(
                    f"the base spec '{base}' expands to {len(fetched)} checkpoints: the base must be one checkpoint"
                )
            name, path, pin = fetched[0]
            entries.append(((name, path), pin))
    pins = [pin for _entry, pin in entries]
    opened: list[TensorSource] = []
    records: list[dict[str, object]] = []
    adapters: list[int] = []  # LoRA adapter entries, opened over their base below
    named_bases: list[tuple[TensorSource, PinnedCheckpoint]] = []
    try:
        for item, _pin in entries:
            if isinstance(item, TensorSource):
                source = item
            elif is_adapter_folder(item[1]) and not (item[1] / "config.json").is_file():
                adapters.append(len(opened))
                source = _AdapterPlaceholder(*item)
            else:
                name, path = item
                source = open_source(name, path, allow_pickle=allow_pickle)
            opened.append(source)
            records.append(_record(source))
        if adapters:
            named_bases = _open_adapters(
                opened, records, adapters, len(opened) - 1 if base is not None else None,
                allow_pickle=allow_pickle, endpoint=endpoint, token=token, fetched=named_bases or {},
            )  # fmt: skip
    except BaseException:
        for source in opened:
            source.close()
        raise
    for record, pin in zip(records, pins, strict=True):
        record.update(_pin_fields(pin))
    if base is not None:
        records[-1]["role"] = "base"
        return MergeInputs(opened[:-1], opened[-1], records, pins=pins[:-1], base_pin=pins[-1])
    implied_pin = None
    if len(named_bases) == 1:  # every adapter names the same base: record it as the merge's base
        source, implied_pin = named_bases[0]
        records.append(
            {**_record(source, "named by the adapters"), "role": "base", **_pin_fields(implied_pin)}
        )
    return MergeInputs(opened, None, records, pins=pins, base_pin=implied_pin)
