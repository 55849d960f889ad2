"""Can these checkpoints be merged tensor by tensor? Tied heads, names, shapes.

:func:`align_tied_heads` makes checkpoints saved with tied embeddings mergeable with
untied ones; :func:`check_compatible` raises a clear error when architectures, tensor
names or shapes differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hf_recycle._merge.sources import TensorSource, TiedHeadSource
from hf_recycle.errors import IncompatibleCheckpointsError, ShapeMismatchError

logger = logging.getLogger(__name__)


def align_tied_heads(sources: Sequence[TensorSource]) -> tuple[list[TensorSource], bool]:
    """Make tied and untied checkpoints mergeable; return ``(sources, output_is_tied)``.

    A checkpoint saved with ``tie_word_embeddings`` has no output head on disk. When
    every checkpoint is tied, the output stays tied. When some are untied, the tied ones
    are wrapped in :class:`TiedHeadSource` so that their effective head (the input
    embedding) is merged with the others' heads, and the output is untied.
    """
    tied = [bool(s.config.get("tie_word_embeddings", True)) for s in sources]
    if all(tied):
        return list(sources), True
    if not any(tied):
        return list(sources), False
    untied_keys = set().union(*(s.keys() for s, t in zip(sources, tied, strict=True) if not t))
    pairs = _tied_pairs(sources[tied.index(True)].config)
    result = list(sources)
    for i, source in enumerate(sources):
        if not tied[i]:
            continue
        keys = set(source.keys())
        for head, embed in pairs:
            if head in untied_keys and head not in keys and embed in keys:
                logger.info("'%s' has tied embeddings: using '%s' as its '%s'", source.name, embed, head)
                result[i] = TiedHeadSource(result[i], head, embed)
    return result, False


def _tied_pairs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """``(head, embedding)`` name pairs tied in this architecture (from transformers, else common names)."""
    pairs: list[tuple[str, str]] = []
    try:
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        for name in [
            *(config.get("architectures") or []),
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type")),
        ]:
            tied = getattr(getattr(transformers, name or "", None), "_tied_weights_keys", None)
            if isinstance(tied, dict):
                pairs.extend(tied.items())
    except Exception as exc:  # pragma: no cover - fall back to the usual names
        logger.debug("could not read tied keys from transformers: %s", exc)
    pairs += [
        ("lm_head.weight", "model.embed_tokens.weight"),
        ("lm_head.weight", "transformer.wte.weight"),
        ("lm_head.weight", "model.decoder.embed_tokens.weight"),
        ("embed_out.weight", "gpt_neox.embed_in.weight"),
    ]
    return list(dict.fromkeys(pairs))


def _names(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def check_compatible(sources: Sequence[TensorSource]) -> None:
    """Raise if the sources cannot be merged tensor by tensor.

    Raises:
        IncompatibleCheckpointsError: Different architectures, or tensor names missing
            from some checkpoints (the message lists what is missing where).
        ShapeMismatchError: A tensor's shape differs (each shape and checkpoint named).
    """
    ref = sources[0]
    archs = [(tuple(s.config.get("architectures") or ()), s.config.get("model_type")) for s in sources]
    if len(set(archs)) > 1:
        described = "; ".join(
            f"'{s.name}': {', '.join(a) or '?'} ({t})" for s, (a, t) in zip(sources, archs, strict=True)
        )
        raise IncompatibleCheckpointsError(
            f"the checkpoints have different architectures ({described}): only checkpoints of the same model "
            "(fine-tunes of one base) can be merged"
        )
    ref_keys = ref.keys()
    ref_set = set(ref_keys)
    problems = []
    for source in sources[1:]:
        keys = source.keys()
        have = set(keys)
        missing = [k for k in ref_keys if k not in have]
        extra = [k for k in keys if k not in ref_set]
        if missing:
            problems.append(
                f"'{source.name}' lacks {len(missing)} tensor(s) that '{ref.name}' has: {_names(missing)}"
            )
        if extra:
            problems.append(
                f"'{source.name}' has {len(extra)} tensor(s) that '{ref.name}' lacks: {_names(extra)}"
            )
    if problems:
        raise IncompatibleCheckpointsError(
            "the checkpoints do not have the same tensors: "
            + "; ".join(problems)
            + ". Merge only checkpoints of the same architecture and size."
        )
    mismatches = []
    for key in ref_keys:
        shapes = [tuple(s.shape(key)) for s in sources]
        if len(set(shapes)) > 1:
            mismatches.append(
                f"tensor '{key}' has shape "
                + ", ".join(f"{_shape(sh)} in '{s.name}'" for s, sh in zip(sources, shapes, strict=True))
            )
    if mismatches:
        more = f" (and {len(mismatches) - 3} more tensors)" if len(mismatches) > 3 else ""
        raise ShapeMismatchError(
            "shape mismatch: "
            + "; ".join(mismatches[:3])
            + more
            + ". The checkpoints come from models of different sizes (or a resized vocabulary) and cannot be merged."
        )


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"
