"""What a search returns: :class:`SearchResults`, a frozen, typed view of ``results.json``.

:func:`hf_recycle._search.api.search` returns it; :meth:`SearchResults.from_json` reads a
``results.json`` back (``hf-recycle push``, a resumed run) and :meth:`SearchResults.to_json`
gives the file's content, unchanged (format 1, see :mod:`hf_recycle._search.results`). Like
``transformers``' ``ModelOutput``, it is also a read-only mapping of that content, so
``results["winner"]["weights"]`` keeps working next to ``results.winner.weights``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The ``format`` this module reads and writes.
RESULTS_FORMAT = 1


def _scores(value: Mapping[str, Any] | None) -> dict[str, float] | None:
    return None if value is None else {k: float(v) for k, v in value.items()}


@dataclass(frozen=True)
class Candidate:
    """A merge the search scored: the winner, a baseline, or a Pareto member.

    Attributes:
        trial: Its trial number in the study.
        weights: One weight per checkpoint (the size-weighted average over groups for a
            per-layer search).
        search: Task scores on the search split, with ``mean``.
        test: Task scores on the test split, with ``mean`` (``None`` without test splits).
        validation: Task scores on the validation split, with ``mean``, when it was scored
            there (``None`` without validation splits, or for a trial not re-scored).
        baseline: For a winner that is a baseline (no optimized merge beat it): its name.
        layer_weights: Group -> one weight per checkpoint (per-layer searches).
        density: The searched density (``search_density``).
        checkpoint: The best single checkpoint's index (``best_single``).
        members: The soup's checkpoint indices (``greedy_soup``), and ``finished``.
        finished: Whether greedy soup finished within the budget.
        comparison: Versus the chosen baseline on the test split (Pareto members).
        comparisons: Versus each baseline on the test split (Pareto members).
    """

    trial: int
    weights: tuple[float, ...]
    search: dict[str, float]
    test: dict[str, float] | None = None
    layer_weights: dict[str, tuple[float, ...]] | None = None
    density: float | None = None
    checkpoint: int | None = None
    members: tuple[int, ...] | None = None
    finished: bool | None = None
    comparison: dict[str, Any] | None = None
    comparisons: dict[str, dict[str, Any]] | None = None
    validation: dict[str, float] | None = None
    baseline: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        layers = data.get("layer_weights")
        members = data.get("members")
        return cls(
            trial=int(data["trial"]),
            weights=tuple(float(w) for w in data["weights"]),
            search=_scores(data["search"]) or {},
            test=_scores(data.get("test")),
            layer_weights={g: tuple(float(w) for w in row) for g, row in layers.items()} if layers else None,
            density=float(data["density"]) if data.get("density") is not None else None,
            checkpoint=int(data["checkpoint"]) if data.get("checkpoint") is not None else None,
            members=tuple(int(m) for m in members) if members is not None else None,
            finished=bool(data["finished"]) if data.get("finished") is not None else None,
            comparison=dict(data["comparison"]) if data.get("comparison") is not None else None,
            comparisons=copy.deepcopy(dict(data["comparisons"]))
            if data.get("comparisons") is not None
            else None,
            validation=_scores(data.get("validation")),
            baseline=str(data["baseline"]) if data.get("baseline") is not None else None,
        )

    @property
    def weights_by_group(self) -> Mapping[str, tuple[float, ...]] | None:
        """The per-group weights, for a per-layer search (``None`` otherwise)."""
        return self.layer_weights


@dataclass(frozen=True)
class StudyInfo:
    """The Optuna study behind the results (``study`` in results.json)."""

    name: str
    storage: str | None
    sampler: str
    objective: str
    trials_requested: int | None


@dataclass(frozen=True)
class TaskInfo:
    """One task as the search used it."""

    name: str
    weight: float
    higher_is_better: bool


@dataclass(frozen=True, eq=False)
class SearchResults(Mapping[str, Any]):
    """The outcome of a search (see the module docstring).

    Attributes:
        name: The recipe's name.
        study: The study.
        trials: Complete trials; ``trials_pruned`` and ``trials_failed`` the others.
        checkpoints: The pinned checkpoints (``spec``, ``repo_id``, ``revision``, ``commit``, ...).
        base: The pinned base the merges used, or ``None``.
        space: The search space (parameterization, groups, granularity).
        merge: The merge settings (method, lambda, normalize, density, seed).
        tasks: The tasks, in order.
        winner: The returned model: an optimized merge, or the baseline none of them beat
            (``winner.baseline`` names it; see ``selection``).
        baselines: ``uniform`` / ``best_single`` / ``greedy_soup`` -> its candidate.
        comparison: Winner − the reference baseline (highest validation mean, else search mean)
            on the test split.
        comparisons: Winner − each baseline on the test split (``None`` without test splits).
        pareto: The Pareto front (``objective: pareto``), else empty.
        plots: The PNGs, relative to the output folder.
        selection: How the winner was chosen (:mod:`hf_recycle._search.selection`); ``None`` in
            results written before it existed.
        examples_scored: ``{total, full, trials, method}``: examples the trials scored on the
            search splits against scoring each on every example (:mod:`hf_recycle._search.racing`);
            ``None`` in results written before it existed.
    """

    name: str
    study: StudyInfo
    trials: int
    trials_pruned: int
    trials_failed: int
    checkpoints: tuple[dict[str, Any], ...]
    base: dict[str, Any] | None
    space: dict[str, Any]
    merge: dict[str, Any]
    tasks: tuple[TaskInfo, ...]
    winner: Candidate
    baselines: dict[str, Candidate]
    comparison: dict[str, Any] | None
    comparisons: dict[str, dict[str, Any]] | None
    pareto: tuple[Candidate, ...]
    plots: tuple[str, ...]
    selection: dict[str, Any] | None
    examples_scored: dict[str, Any] | None
    _json: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchResults:
        """Results from the content of ``results.json``.

        Raises:
            SearchError: A ``format`` this version does not read, or a missing key.
        """
        from hf_recycle.errors import SearchError

        if data.get("format") != RESULTS_FORMAT:
            raise SearchError(
                f"results.json has format {data.get('format')!r}; this hf-recycle reads format {RESULTS_FORMAT}: "
                "run the search again with this version"
            )
        try:
            study = data["study"]
            return cls(
                name=str(data["name"]),
                study=StudyInfo(
                    name=study["name"],
                    storage=study.get("storage"),
                    sampler=study["sampler"],
                    objective=study["objective"],
                    trials_requested=study.get("trials_requested"),
                ),
                trials=int(data["trials"]),
                trials_pruned=int(data.get("trials_pruned", 0)),
                trials_failed=int(data.get("trials_failed", 0)),
                checkpoints=tuple(dict(c) for c in data["checkpoints"]),
                base=dict(data["base"]) if data.get("base") else None,
                space=copy.deepcopy(dict(data.get("space") or {})),
                merge=dict(data["merge"]),
                tasks=tuple(
                    TaskInfo(t["name"], float(t.get("weight", 1.0)), bool(t.get("higher_is_better", True)))
                    for t in data["tasks"]
                ),
                winner=Candidate.from_json(data["winner"]),
                baselines={n: Candidate.from_json(b) for n, b in (data.get("baselines") or {}).items()},
                comparison=dict(data["comparison"]) if data.get("comparison") is not None else None,
                comparisons=copy.deepcopy(dict(data["comparisons"])) if data.get("comparisons") else None,
                pareto=tuple(Candidate.from_json(m) for m in data.get("pareto") or ()),
                plots=tuple(data.get("plots") or ()),
                selection=copy.deepcopy(dict(data["selection"])) if data.get("selection") else None,
                examples_scored=dict(data["examples_scored"]) if data.get("examples_scored") else None,
                _json=copy.deepcopy(dict(data)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SearchError(
                f"results.json is incomplete or malformed ({type(exc).__name__}: {exc})"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> SearchResults:
        """Results from a ``results.json`` file."""
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self) -> dict[str, Any]:
        """The content of ``results.json`` (a copy)."""
        return copy.deepcopy(self._json)

    def replace_json(self, data: Mapping[str, Any]) -> SearchResults:
        """The results of ``data`` (e.g. with portable names for a pushed folder)."""
        return type(self).from_json(data)

    def candidate(self, member: int | None = None) -> Candidate:
        """The winner, or Pareto member ``member``.

        Raises:
            SearchError: No such member.
        """
        if member is None:
            return self.winner
        if not 0 <= member < len(self.pareto):
            from hf_recycle.errors import SearchError

            raise SearchError(f"results.json has {len(self.pareto)} Pareto member(s): no member #{member}")
        return self.pareto[member]

    @property
    def baseline_returned(self) -> bool:
        """Whether the returned model is a baseline: no optimized merge beat it (see ``selection``)."""
        return self.winner.baseline is not None

    @property
    def has_test(self) -> bool:
        """Whether the candidates were scored on a test split."""
        return self.winner.test is not None

    # --- read-only mapping of the JSON content ------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._json[key])  # frozen: the caller cannot change the results

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SearchResults):
            return self._json == other._json
        if isinstance(other, Mapping):
            return self._json == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]
