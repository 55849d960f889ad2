"""The model folders of a run and their push: merge the chosen weights, write the lock file,
results, recipe and model card with portable names, then push each folder to its branch."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_recycle._search.outcome import Candidate, SearchResults
from hf_recycle.errors import HfRecycleError
from hf_recycle.hub.pins import Fetched, PinnedCheckpoint
from hf_recycle.portable import PortableNames

logger = logging.getLogger(__name__)

RECIPE_FILENAME = "recipe.yaml"


def card_template(recipe: Any, base_dir: Path) -> Path | None:
    """The recipe's ``card.template`` resolved against ``base_dir`` (None: the bundled template)."""
    from hf_recycle.final.card import template_path

    card = getattr(recipe, "card", None)
    return template_path(card.template, base_dir) if card is not None else None


@dataclass(frozen=True)
class Published:
    """What a model folder says about the run, with local things named by ``names`` (it is pushed)."""

    recipe: Any
    text: str
    command: str
    results: SearchResults
    pins: list[PinnedCheckpoint]
    base: PinnedCheckpoint | None
    names: PortableNames


def finish_model_folder(
    folder: Path,
    entry: Candidate,
    member: int | None,
    results: SearchResults,
    recipe: Any,
    checkpoints: Sequence[Fetched],
    base: Fetched | None,
    published: Published,
    repo_id: str | None,
    licenses: dict[str, str | None],
    out: Path,
    endpoint: str | None,
    token: str | bool | None,
    template: Path | None = None,
) -> None:
    """Merge one entry into ``folder`` and write its lock file, results, recipe and model card.

    The merge reads the checkpoints (and base) from the folders they were fetched to. Everything
    but the weights names local things portably (the folder is what gets pushed).
    """
    from hf_recycle._merge.output_folder import MERGE_CONFIG_FILE
    from hf_recycle._search.report import write_results
    from hf_recycle.final.card import build_card, write_card
    from hf_recycle.final.merge import merge_entry
    from hf_recycle.hub.lock import write_lock

    pins = [c.pin for c in checkpoints]
    base_pin = base.pin if base is not None else None
    merge_entry(
        entry,
        results.merge,
        checkpoints,
        folder,
        base=base,
        dtype=recipe.merge.dtype,
        device=recipe.merge.device,
        max_shard_size=recipe.output.max_shard_size,
        layers_per_group=recipe.search.layers_per_group,
        endpoint=endpoint,
        token=token,
    )
    # merge() wrote checkpoints.lock.json and merge_config.json with this machine's paths
    write_lock(published.pins, folder, base=published.base)
    config = folder / MERGE_CONFIG_FILE
    if config.is_file():
        data = published.names.merge_config(json.loads(config.read_text(encoding="utf-8")), pins, base_pin)
        config.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    write_results(folder, published.results.to_json())
    if (out / "plots").is_dir():
        shutil.copytree(out / "plots", folder / "plots", dirs_exist_ok=True)
        if any(pin.is_local for pin in pins):  # the search's plot labels them by their local paths
            relabel_weights_plot(folder, published)
    (folder / RECIPE_FILENAME).write_text(published.text, encoding="utf-8")
    name = repo_id if member is None or repo_id is None else f"{repo_id} (trial {entry.trial})"
    card = build_card(
        published.results,
        published.recipe,
        recipe_text=published.text,
        command=published.command,
        base=published.base,
        member=member,
        repo_id=name,
        licenses=licenses,
        template=template,
    )
    write_card(folder, card)
    logger.info("wrote %s", folder)


def relabel_weights_plot(folder: Path, published: Published) -> None:
    """Redraw ``plots/weights.png`` with the checkpoints' portable names."""
    from hf_recycle._search import plots

    if "plots/weights.png" not in published.results.plots:
        return
    winner = published.results.winner
    labels = [f"{i}: {pin.display}"[:40] for i, pin in enumerate(published.pins)]  # as the search labels them
    plots.plot_weights(labels, list(winner.weights), winner.layer_weights, folder / "plots" / "weights.png")


def push_private(recipe: Any, published: Published, endpoint: str | None, token: str | bool | None) -> bool:
    """``push.private`` when set, else whether a source checkpoint's repo (or the base's) is private."""
    from hf_recycle.hub.push import repo_visibility

    if recipe.push.private is not None:
        return recipe.push.private
    repos = [p.repo_id for p in [*published.pins, published.base] if p is not None and p.repo_id]
    private = []
    for repo_id in dict.fromkeys(repos):
        try:
            visible = repo_visibility(repo_id, endpoint=endpoint, token=token)
        except HfRecycleError as exc:  # unknown: keep the merge private
            logger.warning("cannot read the visibility of source repo %s (%s): pushing private", repo_id, exc)
            visible = "private"
        if visible != "public":  # None: not visible with this token
            private.append(repo_id)
    if private:
        logger.info(
            "pushing private: source repo(s) %s are private (push.private: false publishes)",
            ", ".join(private),
        )
    return bool(private)


def push_all(
    recipe: Any,
    entries: list[tuple[Path, dict[str, Any], int | None]],
    published: Published,
    endpoint,
    token,
) -> list[Any]:
    from hf_recycle.hub.push import push_folder

    target = recipe.push
    private = push_private(recipe, published, endpoint, token)
    pushes = []
    for i, (folder, entry, member) in enumerate(entries):
        branches = [target.branch] if i == 0 else []
        if member is not None:
            branches.append(f"pareto-trial-{entry.trial}")
        for branch in branches:
            pushes.append(
                push_folder(
                    folder,
                    target.repo,
                    branch=branch,
                    create_pr=target.create_pr,
                    private=private,
                    message=target.message,
                    endpoint=endpoint,
                    token=token,
                )
            )
    return pushes
