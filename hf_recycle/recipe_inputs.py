"""A recipe's checkpoints, resolved and downloaded once, handed to the search and the final merge.

``hf-recycle run`` (and the Trainer callback, which runs it) turns the recipe's specs into a
:class:`RecipeInputs` before anything else: the pinned checkpoints with their local folders,
the base when the merge uses one, and the base the LoRA adapters name when the recipe gives
none. The search opens those folders and the final merge reads them; neither resolves a
spec or downloads a file again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hf_recycle.hub.pins import Fetched, PinnedCheckpoint

__all__ = ["RecipeInputs", "fetch_recipe_inputs"]


@dataclass(frozen=True)
class RecipeInputs:
    """The recipe's checkpoints on this machine.

    Attributes:
        checkpoints: One per checkpoint to merge, in the order of the search's weights.
        base: The recipe's ``base:``, when the merge uses it (task-vector methods, LoRA inputs).
        named_base: The one base every LoRA adapter names, when the recipe gives none.
        named_base_spec: How the adapters name it (their ``base_model_name_or_path``).
    """

    checkpoints: tuple[Fetched, ...]
    base: Fetched | None = None
    named_base: Fetched | None = None
    named_base_spec: str | None = None

    @property
    def named_bases(self) -> dict[str, Fetched]:
        """Adapter base spec -> its fetched checkpoint (for :func:`~hf_recycle._merge.inputs.open_inputs`)."""
        if self.named_base is None or self.named_base_spec is None:
            return {}
        return {self.named_base_spec: self.named_base}

    @property
    def pins(self) -> list[PinnedCheckpoint]:
        """The checkpoints' pins, in order."""
        return [c.pin for c in self.checkpoints]

    @property
    def merge_base(self) -> Fetched | None:
        """The base the merge reads: the recipe's when it uses one, else the adapters' named base."""
        return self.base if self.base is not None else self.named_base


def fetch_recipe_inputs(
    recipe: Any,
    *,
    endpoint: str | None = None,
    token: str | bool | None = None,
    trials: int | None = None,
) -> RecipeInputs:
    """Resolve the recipe's specs (each once), check the count, then download each checkpoint once.

    Hub specs resolve against ``endpoint``, else the recipe's ``endpoint``.

    Raises:
        SearchError: Fewer than 2 checkpoints or too few trials for the baselines (before any
            download), or a base that expands to several checkpoints.
    """
    from hf_recycle._merge.methods import get_method
    from hf_recycle.errors import SearchError
    from hf_recycle.hub.download import download_checkpoint, fetch_checkpoints
    from hf_recycle.hub.resolve import resolve
    from hf_recycle.preflight import check_resolved

    endpoint = endpoint or recipe.endpoint
    if len(recipe.checkpoints) == 0:
        raise SearchError(f"recipe '{recipe.name}' lists no checkpoints: a merge search needs at least 2")
    pins = resolve(recipe.checkpoints, endpoint=endpoint, token=token)
    check_resolved(recipe, len(pins), trials=trials)  # too few checkpoints or trials: before any download
    checkpoints = tuple(
        Fetched(pin, download_checkpoint(pin, endpoint=endpoint, token=token)) for pin in pins
    )
    has_lora = any(pin.kind == "lora" for pin in pins)
    base = None
    if recipe.base is not None and (get_method(recipe.merge.method).needs_base or has_lora):
        fetched = fetch_checkpoints([recipe.base], endpoint=endpoint, token=token)
        if len(fetched) != 1:
            raise SearchError(
                f"base '{recipe.base}' expands to {len(fetched)} checkpoints: the base must be one "
                "checkpoint; name a single revision or subfolder in the recipe's base:"
            )
        base = Fetched(*fetched[0])
    named = _named_base(checkpoints, endpoint, token) if base is None and has_lora else None
    return RecipeInputs(checkpoints, base, *(named or (None, None)))


def _named_base(
    checkpoints: tuple[Fetched, ...], endpoint: str | None, token: str | bool | None
) -> tuple[Fetched, str] | None:
    """``(base, spec)`` of the base every adapter names (fetched once); ``None`` when they name several or none.

    Problems (an adapter naming no base, a base that does not open) are left to
    :func:`~hf_recycle._merge.inputs.open_inputs`, which reports them per adapter.
    """
    from hf_recycle._merge.adapter_config import is_adapter_folder, read_adapter_config
    from hf_recycle._merge.inputs import fetch_specs
    from hf_recycle.errors import HfRecycleError

    specs = set()
    for c in checkpoints:
        if is_adapter_folder(c.path) and not (c.path / "config.json").is_file():
            try:
                specs.add(read_adapter_config(c.path, c.spec).base_model_name_or_path)
            except HfRecycleError:
                return None
    if len(specs) != 1 or None in specs or "" in specs:
        return None
    spec = specs.pop()
    try:
        fetched = fetch_specs([spec], endpoint=endpoint, token=token)
    except HfRecycleError:
        return None
    if len(fetched) != 1:
        return None
    _name, path, pin = fetched[0]
    return Fetched(pin, path), spec
