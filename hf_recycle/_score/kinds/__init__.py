"""Task kinds: each is one module of this package holding one :class:`TaskKindDef` subclass.

A kind says how a task is run and scored: whether the model generates a continuation or
the log-likelihood of given continuations is read (:attr:`TaskKindDef.generates`), which
continuations an example has, what the metric compares, how the per-example scores and
the task's value are made, its default metric and direction, and which task fields it
takes. The task schema (``kind:`` values and their field rules), data rendering and
:class:`~hf_recycle._score.scorer.TaskScorer` read it; nothing else branches on a kind's
name. Importing the registry loads no torch. Adding a kind is adding one module (and its
test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from hf_recycle._score.data import Example
    from hf_recycle._score.tasks import TaskSpec


class TaskKindDef:
    """One ``kind:`` of task.

    Attributes:
        name: The recipe's ``kind`` value.
        generates: The model generates a continuation (greedy), compared with the target by
            the metric; otherwise each continuation's summed log-probability is read.
        default_metric: The metric when the task names none; ``None``: the kind's score is
            fixed (no ``metric``, ``metric_key`` or ``higher_is_better``).
        higher_is_better: Direction of the score when the task does not say.
        uses_options: Examples carry a list of options (the task's ``options`` field).
        uses_templates: Examples come from ``data`` through the ``prompt`` and ``target``
            templates (required then); a kind that brings its own examples (``lm_eval``)
            takes none of the three and builds its own scorer (:meth:`build_scorer`).
        own_field: The task field that only this kind takes, and requires (``lm_eval``).
        order: Where it is listed.
    """

    name: ClassVar[str]
    generates: ClassVar[bool] = False
    default_metric: ClassVar[str | None] = None
    higher_is_better: ClassVar[bool] = True
    uses_options: ClassVar[bool] = False
    uses_templates: ClassVar[bool] = True
    own_field: ClassVar[str | None] = None
    order: ClassVar[int] = 100

    def direction(self, spec: TaskSpec) -> bool:
        """Whether higher is better for ``spec`` when the task does not say (``higher_is_better``)."""
        return self.higher_is_better

    def spec_problems(self, spec: TaskSpec) -> list[str]:
        """What else is wrong with the fields of a task of this kind (no I/O; empty when nothing is)."""
        return []

    def file_problems(self, spec: TaskSpec, base_dir: Any) -> list[tuple[tuple[Any, ...], str]]:
        """What is wrong with what a task of a kind without templates names on this machine, as
        ``(location under the task, message)``; nothing is downloaded (``hf-recycle validate``)."""
        return []

    def build_scorer(self, spec: TaskSpec, tokenizer: Any, split: str, base_dir: Any) -> Any:
        """The scorer of a kind without templates (:class:`~hf_recycle._score.scorer.TaskScorer`'s
        interface); ``None`` for the kinds that TaskScorer runs."""
        return None

    def render(self, spec: TaskSpec, row: dict[str, Any], index: int, prompt: str, target: str) -> Example:
        """The example of one data row, its templates already rendered."""
        from hf_recycle._score.data import Example

        return Example(prompt, target)

    def continuations(self, example: Example) -> tuple[str, ...]:
        """The continuations whose log-likelihood is read (kinds that do not generate)."""
        return (example.target,)

    def references(self, examples: Sequence[Example]) -> list[Any]:
        """What the metric compares the predictions with."""
        return [e.target.strip() for e in examples]

    def aggregate(self, outputs: list[Any], scorer: Any, n: int) -> tuple[float, list[float], list[Any]]:
        """``(value, per-example scores, predictions)`` from the raw outputs of ``n`` examples.

        ``outputs`` are generated token ids per example (generating kinds) or
        ``(summed log-probability, token count)`` per continuation, the continuations of
        example ``i`` at ``scorer.offsets[i]:scorer.offsets[i + 1]``.
        """
        raise NotImplementedError


def _discover() -> dict[str, TaskKindDef]:
    from hf_recycle.plugins import discover

    return {cls.name: cls() for cls in discover(__name__, TaskKindDef)}


#: Registry: ``kind`` name -> its definition, in listing order.
KINDS: dict[str, TaskKindDef] = _discover()
KIND_NAMES: tuple[str, ...] = tuple(KINDS)


def _named(kinds: Sequence[str]) -> str:
    return " or ".join(f"'{k}'" for k in kinds)


def field_problems(spec: Any) -> list[str]:
    """What is wrong with the fields of a task for its kind (an empty list when nothing is)."""
    kind = KINDS[spec.kind]
    problems = []
    with_options = [k.name for k in KINDS.values() if k.uses_options]
    generating = [k.name for k in KINDS.values() if k.generates]
    if kind.uses_options and not spec.options:
        problems.append(
            f"kind '{kind.name}' needs 'options': the example field that holds the list of options"
        )
    if not kind.uses_options and spec.options is not None:
        problems.append(f"'options' is only for kind {_named(with_options)}, not '{kind.name}'")
    if not kind.generates:
        for field in ("max_new_tokens", "stop"):
            if getattr(spec, field):
                problems.append(f"'{field}' is only for kind {_named(generating)}, not '{kind.name}'")
    if kind.uses_templates:
        for field in ("data", "prompt", "target"):
            if getattr(spec, field) is None:
                problems.append(f"kind '{kind.name}' needs '{field}', not null")
    else:
        for field in ("data", "prompt", "target", "metric_key"):
            if getattr(spec, field) is not None:
                problems.append(f"'{field}' does not apply to kind '{kind.name}'")
    for other in KINDS.values():
        if other.own_field is None:
            continue
        if other is kind and getattr(spec, other.own_field) is None:
            problems.append(f"kind '{kind.name}' needs '{other.own_field}'")
        elif other is not kind and getattr(spec, other.own_field) is not None:
            problems.append(f"'{other.own_field}' is only for kind '{other.name}', not '{kind.name}'")
    if kind.default_metric is None and kind.uses_templates:
        for field in ("metric", "metric_key", "higher_is_better"):
            if getattr(spec, field) is not None:
                problems.append(f"'{field}' does not apply to kind '{kind.name}', whose score is fixed")
    return problems + kind.spec_problems(spec)


__all__ = ["KINDS", "KIND_NAMES", "TaskKindDef", "field_problems"]
