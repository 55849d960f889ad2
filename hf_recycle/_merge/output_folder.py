"""What every merged folder holds besides its weights, shared by the full and the LoRA outputs.

``merge_config.json`` (the method, its parameters and the input records) and
``checkpoints.lock.json``, written into the staging folder before it is moved into place,
and the :class:`MergeResult` both writers return. Neither writer imports the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The merge's record, next to the weights.
MERGE_CONFIG_FILE = "merge_config.json"


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote.

    Attributes:
        output: The merged checkpoint folder.
        files: Weight files written (shards, then the index when sharded).
        method: Merge method name.
        num_tensors: Tensors written.
        input_bytes: Bytes of tensor data read from the inputs.
        output_bytes: Bytes of tensor data written.
        seconds: Wall time of the merge.
        device: Where the arithmetic ran (``cpu`` or ``cuda``).
    """

    output: Path
    files: tuple[str, ...]
    method: str
    num_tensors: int
    input_bytes: int
    output_bytes: int
    seconds: float
    device: str


def write_merge_record(
    folder: Path, method: Any, inputs: Any, parameters: dict[str, Any], **extra: Any
) -> None:
    """Write ``merge_config.json`` and ``checkpoints.lock.json`` into ``folder``.

    Args:
        folder: The (staging) output folder.
        method: The registered merge method.
        inputs: The opened :class:`~hf_recycle._merge.inputs.MergeInputs` (records, pins, base pin).
        parameters: The merge's parameters as recorded.
        extra: More top-level keys (``tie_word_embeddings``, ``lora``, ``files``).
    """
    from hf_recycle._version import __version__
    from hf_recycle.hub.lock import write_lock

    record = {
        "hf_recycle_version": __version__,
        "method": method.name,
        "pretty_name": method.pretty_name,
        "reference_url": method.reference_url,
        "parameters": parameters,
        "checkpoints": [r for r in inputs.records if r.get("role") != "base"],
        "base": next((r for r in inputs.records if r.get("role") == "base"), None),
        **extra,
    }
    (folder / MERGE_CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    write_lock(inputs.pins, folder, base=inputs.base_pin)
