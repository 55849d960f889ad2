"""Model cards of merged models, rendered from a Jinja template.

The bundled template is ``merge.md`` in the top-level ``model_cards/`` folder, installed as the
package data ``hf_recycle.model_cards``; a recipe names its own with ``card: {template: path}``
(resolved against the recipe's folder). ``model_cards/README.md`` lists the variables a
template is rendered with (:data:`TEMPLATE_VARIABLES`); :func:`template_problems` checks a
template before a run.

:func:`build_card` turns a search's ``results.json`` content, the recipe and the pins into a
:class:`huggingface_hub.ModelCard` whose metadata the Hub understands (``base_model`` and
``base_model_relation: merge`` when a source is on the Hub, ``tags``, ``library_name``,
``license`` when every source has the same one, and a ``model-index`` with the held-out
scores) and whose body says how
the model was made: the sources with their commit shas and weights, the merge method and
search settings, the held-out results against the baselines with a confidence interval,
the plots, the exact recipe and command, the library versions and the paper to cite.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_recycle._search.report import format_comparison, format_score, versus_baselines
from hf_recycle._search.selection import BASELINE_LABELS, baseline_label
from hf_recycle.errors import RecipeError

if TYPE_CHECKING:  # pragma: no cover
    from importlib.resources.abc import Traversable

    from huggingface_hub import ModelCard

    from hf_recycle._search.outcome import Candidate, SearchResults
    from hf_recycle.hub.pins import PinnedCheckpoint
    from hf_recycle.recipe import Recipe

logger = logging.getLogger(__name__)

__all__ = [
    "build_card",
    "write_card",
    "card_metadata",
    "bundled_template",
    "template_path",
    "template_problems",
    "load_template",
    "DEFAULT_TEMPLATE",
    "TEMPLATE_VARIABLES",
    "PAPER_URL",
    "CITATION",
]

TEMPLATES_PACKAGE = "hf_recycle.model_cards"  # the top-level model_cards/ folder (see pyproject.toml)
DEFAULT_TEMPLATE = "merge.md"
# What build_card renders a template with; model_cards/README.md documents each one.
TEMPLATE_VARIABLES = (
    "card_data",
    "title",
    "paper_url",
    "citation",
    "sources",
    "base",
    "any_local",
    "layer_weights",
    "method",
    "search",
    "objective_text",
    "member",
    "tasks",
    "task_names",
    "has_test",
    "results_rows",
    "comparison",
    "selection",
    "plots",
    "command",
    "recipe_text",
    "versions",
)
# huggingface_hub also passes the card metadata's keys, each only when it is set.
METADATA_VARIABLES = ("base_model", "base_model_relation", "tags", "library_name", "license", "model_name")
CARD_FILENAME = "README.md"
PAPER_URL = "https://arxiv.org/abs/2412.04144"
CITATION = """\
@article{khalifa2024recycle,
  title   = {If You Can't Use Them, Recycle Them: Optimizing Merging at Scale Mitigates Performance Tradeoffs},
  author  = {Khalifa, Muhammad and Tan, Yi-Chern and Ahmadian, Arash and Hosking, Tom and Lee, Honglak and
             Wang, Lu and {\\"U}st{\\"u}n, Ahmet and Sherborne, Tom and Gall{\\'e}, Matthias},
  journal = {arXiv preprint arXiv:2412.04144},
  year    = {2024},
  url     = {https://arxiv.org/abs/2412.04144}
}"""

_LIBRARIES = ("hf-recycle", "torch", "transformers", "safetensors", "huggingface_hub", "optuna", "datasets")


def _sampler_name(name: str) -> str:
    """How the card names sampler ``name`` (its registry entry's pretty name)."""
    from hf_recycle._search.samplers import SAMPLERS

    adapter = SAMPLERS.get(name)
    return adapter.pretty_name if adapter is not None else "Optuna"


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries a merge depends on (``"not installed"`` when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    from hf_recycle._version import __version__

    out = {"hf-recycle": __version__}
    for name in _LIBRARIES[1:]:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def as_results(results: SearchResults | Mapping[str, Any]) -> SearchResults:
    """``results`` as :class:`~hf_recycle._search.outcome.SearchResults` (read from results.json content)."""
    from hf_recycle._search.outcome import SearchResults

    return results if isinstance(results, SearchResults) else SearchResults.from_json(results)


def _source_repo_ids(results: SearchResults, base: PinnedCheckpoint | None, method: str) -> list[str]:
    from hf_recycle.recipe import TASK_VECTOR_METHODS

    repos = [c["repo_id"] for c in results.checkpoints if c.get("repo_id")]
    if base is not None and base.repo_id and method in TASK_VECTOR_METHODS:
        repos.append(base.repo_id)
    return list(dict.fromkeys(repos))


def agreed_license(licenses: Mapping[str, str | None] | None) -> str | None:
    """The license every source has, or ``None`` when one is unknown or they differ."""
    if not licenses:
        return None
    values = set(licenses.values())
    if len(values) != 1 or None in values:
        return None
    return values.pop()


def card_metadata(
    results: SearchResults | Mapping[str, Any],
    recipe: Recipe,
    *,
    base: PinnedCheckpoint | None = None,
    member: int | None = None,
    model_name: str | None = None,
    licenses: Mapping[str, str | None] | None = None,
):
    """The card's :class:`~huggingface_hub.ModelCardData` (see the module docstring for the keys)."""
    from huggingface_hub import EvalResult, ModelCardData

    results = as_results(results)
    entry = results.candidate(member)
    method = results.merge["method"]
    test = entry.test or {}
    tasks = {t.name: t for t in recipe.tasks}
    eval_results = []
    for name, value in test.items():
        if name == "mean" or name not in tasks:
            continue
        task = tasks[name]
        metric = task.metric_name or task.kind
        data = task.data
        if data is None:  # an lm-evaluation-harness task: lm-eval names its data
            dataset_type, config, revision = f"lm_eval/{task.lm_eval.task}", None, None  # type: ignore[union-attr]
        else:  # model-index groups results by dataset: local files get the task's name
            dataset_type = data.path if "/" in data.path else name
            config, revision = data.name, data.revision
        eval_results.append(
            EvalResult(
                task_type="text-generation",
                task_name=name,
                dataset_type=dataset_type,
                dataset_name=name,
                dataset_config=config,
                dataset_split=task.test_split,
                dataset_revision=revision,
                metric_type=metric,
                metric_name=f"{name} {metric} (held-out)",
                metric_value=float(value),
            )
        )
    base_model = _source_repo_ids(results, base, method) or None
    return ModelCardData(
        base_model=base_model,
        base_model_relation="merge" if base_model else None,  # the relation of this model to base_model
        tags=["merge", "hf-recycle", method],
        library_name="transformers",
        license=agreed_license(licenses),
        model_name=model_name or recipe.name,
        eval_results=eval_results or None,
    )


def _pin_label(pin: Mapping[str, Any]) -> str:
    if pin.get("repo_id") is None:
        return str(pin.get("path") or pin.get("spec"))
    text = f"{pin['repo_id']}@{pin.get('revision')}"
    return f"{text}:{pin['subfolder']}" if pin.get("subfolder") else text


def _source_row(pin: Mapping[str, Any], weight: float | None) -> dict[str, Any]:
    local = pin.get("repo_id") is None
    return {
        "label": _pin_label(pin),
        "repo": f"`{pin.get('path') or pin.get('spec')}` (local)" if local else f"`{pin['repo_id']}`",
        "revision": f"`{pin.get('revision')}`" if pin.get("revision") else "–",
        "commit": f"`{pin.get('commit')}`" if pin.get("commit") else "–",
        "subfolder": f"`{pin.get('subfolder')}`" if pin.get("subfolder") else "–",
        "kind": pin.get("kind", "full"),
        "weight": float(weight) if weight is not None else 0.0,
    }


def _comparison_text(results: SearchResults, member: int | None) -> str | None:
    """One paragraph per baseline compared on the test split (every one when results.json has
    ``comparisons``), the baseline with the best search score marked."""
    data = results.to_json()
    compared = versus_baselines(data, None if member is None else data["pareto"][member])
    who = "This model" if member is None else f"Pareto member #{member}"
    chosen_on = "validation" if (results.comparison or {}).get("chosen_by") == "validation mean" else "search"
    paragraphs = []
    for name, comp, chosen in compared:
        f = format_comparison(comp)
        baseline = BASELINE_LABELS.get(name, name)
        paragraphs.append(
            f"{who} − {baseline} on the held-out test split, as the task-weighted macro-average of "
            f"per-example scores: **{f['difference']}**, {f['confidence']} paired bootstrap confidence "
            f"interval {f['interval']} ({f['n_boot']} resamples"
            + (
                f"; share of resamples where it is not better: {f['p_not_better']}"
                if f["p_not_better"] is not None
                else ""
            )
            + ")."
            + (f" The {baseline} is the baseline with the best {chosen_on} score." if chosen else "")
        )
    return "\n\n".join(paragraphs) or None


def _results_rows(results: SearchResults, entry: Candidate, tasks: Sequence[str], split: str):
    rows = []

    def add(label: str, scores: Mapping[str, Any] | None) -> None:
        if scores is None:
            return
        rows.append(
            {
                "label": label,
                "scores": [format_score(scores.get(t)) for t in tasks],
                "mean": format_score(scores.get("mean")),
            }
        )

    what = f"{baseline_label(entry.baseline, entry.checkpoint)}, " if entry.baseline else ""
    add(f"**this model** ({what}trial {entry.trial})", getattr(entry, split))
    for name, base in results.baselines.items():
        if base.trial == entry.trial:  # the baseline returned as this model: its row is the one above
            continue
        label = BASELINE_LABELS.get(name, name)
        if name == "best_single" and base.checkpoint is not None:
            label += f" (#{base.checkpoint})"
        if name == "greedy_soup" and base.members is not None:
            label += " (" + ", ".join(f"#{m}" for m in base.members) + ")"
        add(label, getattr(base, split))
    return rows


def _selection_context(results: SearchResults, member: int | None) -> dict[str, Any] | None:
    """How the winner was chosen, for the card (``None`` for a Pareto member or older results)."""
    selection = results.selection
    if member is not None or not selection:
        return None
    winner = results.winner
    because = selection["chosen_because"]
    return {
        "baseline_returned": winner.baseline is not None,
        "baseline": baseline_label(winner.baseline, winner.checkpoint) if winner.baseline else None,
        "because": because[:1].upper() + because[1:],
        "rule": selection["rule"],
        "split": selection["split"],
        "alpha": format_score(selection["alpha"]),
        "validation": winner.validation,
    }


def build_card(
    results: SearchResults | Mapping[str, Any],
    recipe: Recipe,
    *,
    recipe_text: str,
    command: str,
    base: PinnedCheckpoint | None = None,
    member: int | None = None,
    repo_id: str | None = None,
    licenses: Mapping[str, str | None] | None = None,
    template: str | Path | None = None,
) -> ModelCard:
    """Render the model card of a search's winner (or of one Pareto member).

    Args:
        results: :func:`hf_recycle._search.api.search`'s return, or the content of ``results.json``.
        recipe: The recipe the search ran.
        recipe_text: The exact recipe YAML, shown in the card.
        command: The command that reproduces the model, shown in the card.
        base: The pinned base checkpoint, if the recipe has one.
        member: Index into ``results.pareto`` to describe that member instead of the winner.
        repo_id: The repo the card is pushed to (names the model); default: the recipe's name.
        licenses: Source repo id -> its license (``None`` when unknown); the card's ``license``
            is set only when every source has the same one.
        template: A Jinja template file to use instead of the bundled ``merge.md`` (a relative
            path resolves against the current folder; see :func:`template_path`).

    Returns:
        The card; ``str(card)`` is the README.md text, and ``ModelCard(str(card)).data``
        gives the metadata back.

    Raises:
        RecipeError: The template cannot be read, does not parse, names an unknown variable or
            fails to render; the message names the file.
    """
    from huggingface_hub import ModelCard

    from hf_recycle._merge.methods import get_method

    results = as_results(results)
    entry = results.candidate(member)
    merge_info = results.merge
    method = get_method(merge_info["method"])
    data = card_metadata(results, recipe, base=base, member=member, model_name=repo_id, licenses=licenses)
    tasks = [t.name for t in results.tasks]
    has_test = entry.test is not None
    split = "test" if has_test else "search"
    parameters: dict[str, Any] = {"normalize": merge_info.get("normalize")}
    if method.needs_base:
        parameters["lambda"] = merge_info.get("lambda")
    if method.uses_density:
        parameters["density"] = entry.density if entry.density is not None else merge_info.get("density")
    if method.name.startswith("dare"):
        parameters["seed"] = merge_info.get("seed")
    parameters["dtype"] = recipe.merge.dtype
    specs = {t.name: t for t in recipe.tasks}
    task_rows = []
    for t in results.tasks:
        spec = specs.get(t.name)
        task_rows.append(
            {
                "name": t.name,
                "weight": t.weight,
                "higher_is_better": t.higher_is_better,
                "kind": spec.kind if spec else "?",
                "metric": (spec.metric_name or spec.kind) if spec else "?",
                "data": _task_data(spec) if spec else "?",
                "search_split": spec.search_split if spec else "?",
                "validation_split": (spec.validation_split or "–") if spec else "?",
                "test_split": (spec.test_split or "–") if spec else "?",
            }
        )
    study = results.study
    front = results.pareto
    layer_weights = {g: list(row) for g, row in entry.layer_weights.items()} if entry.layer_weights else None
    context = {
        "title": (repo_id or recipe.name) + (f" (Pareto member #{member})" if member is not None else ""),
        "paper_url": PAPER_URL,
        "citation": CITATION,
        "sources": [_source_row(pin, w) for pin, w in zip(results.checkpoints, entry.weights, strict=True)],
        "base": _source_row(base.to_json() | {"spec": base.spec}, None) | {"label": base.display}
        if base is not None
        else None,
        "any_local": any(pin.get("repo_id") is None for pin in results.checkpoints)
        or (base is not None and base.is_local),
        "layer_weights": layer_weights,
        "method": {
            "name": method.name,
            "pretty_name": method.pretty_name,
            "reference_url": method.reference_url,
            "parameters": {k: format_score(v) for k, v in parameters.items() if v is not None},
        },
        "search": {
            "sampler": study.sampler,
            "sampler_name": _sampler_name(study.sampler),
            "trials": results.trials,
            "trials_requested": study.trials_requested
            if study.trials_requested is not None
            else recipe.search.trials,
            "objective": study.objective,
            "weights": results.space.get("weights", recipe.search.weights),
            "granularity": results.space.get("granularity", recipe.search.granularity),
            "seed": recipe.search.seed,
            "baselines": [BASELINE_LABELS.get(b, b) for b in recipe.search.baselines],
        },
        "objective_text": "Pareto front of the task scores"
        if study.objective == "pareto"
        else "task-weighted macro-average of the task scores",
        "member": {"index": member, "trial": entry.trial, "front_size": len(front)}
        if member is not None
        else None,
        "tasks": task_rows,
        "task_names": tasks,
        "has_test": has_test,
        "results_rows": _results_rows(results, entry, tasks, split),
        "comparison": _comparison_text(results, member),
        "selection": _selection_context(results, member),
        "plots": [{"name": Path(p).stem, "path": p} for p in results.plots],
        "command": command,
        "recipe_text": recipe_text,
        "versions": library_versions(),
    }
    template_str = load_template(template)
    import jinja2

    try:
        card = ModelCard.from_template(data, template_str=template_str, **context)
    except jinja2.TemplateError as exc:
        raise RecipeError(
            f"card template {_template_name(template)} does not render: {_jinja_error(exc)}"
        ) from None
    return ModelCard(str(card))  # parse once, so card.data is what a reader of README.md gets


# --- templates ------------------------------------------------------------------------------------


def bundled_template(name: str = DEFAULT_TEMPLATE) -> Traversable:
    """The bundled template ``name`` (``model_cards/<name>`` in a source checkout)."""
    return resources.files(TEMPLATES_PACKAGE).joinpath(name)


def template_path(template: str | Path, base_dir: str | Path) -> Path:
    """The file a recipe's ``card.template`` names: ``~`` expanded, a relative path joined to
    ``base_dir`` (the recipe file's folder, as for the tasks' data files)."""
    path = Path(template).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _template_name(template: str | Path | None) -> str:
    return f"'{DEFAULT_TEMPLATE}' (bundled)" if template is None else f"'{template}'"


def _jinja_error(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    return f"line {line}: {exc.message}" if line and getattr(exc, "message", None) else str(exc)


def _read(template: str | Path | None) -> str:
    if template is None:
        return bundled_template().read_text(encoding="utf-8")
    path = Path(template)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"card template '{path}' does not exist") from None
    except IsADirectoryError:
        raise RecipeError(f"card template '{path}' is a folder: name a Jinja template file") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"card template '{path}' is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise RecipeError(f"card template '{path}' cannot be read: {exc.strerror or exc}") from None


def template_problems(template: str | Path | None) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of a card template file (``None``: the bundled one), each naming the file.

    Errors: the file cannot be read, is not valid Jinja (syntax, an unknown filter or test),
    or names a variable that a card is not rendered with (a typo would print nothing).
    Warning: it does not print ``{{ card_data }}``, so the card has no metadata header.
    """
    _, errors, warnings = _inspect(template)
    return errors, warnings


def _inspect(template: str | Path | None) -> tuple[str | None, list[str], list[str]]:
    """``(text, errors, warnings)`` of :func:`template_problems` (text None when unreadable)."""
    import difflib

    import jinja2
    from jinja2 import meta

    name = _template_name(template)
    try:
        text = _read(template)
    except RecipeError as exc:
        return None, [str(exc)], []
    env = jinja2.Environment()  # what huggingface_hub's jinja2.Template(...) renders with
    try:
        ast = env.parse(text)
        env.compile(ast)  # unknown filters and tests are found here
    except jinja2.TemplateError as exc:
        return text, [f"card template {name} is not a valid Jinja template: {_jinja_error(exc)}"], []
    used = meta.find_undeclared_variables(ast)
    known = {*TEMPLATE_VARIABLES, *METADATA_VARIABLES, *env.globals}
    errors = []
    for var in sorted(used - known):
        close = difflib.get_close_matches(var, [*TEMPLATE_VARIABLES, *METADATA_VARIABLES], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        errors.append(
            f"card template {name} uses '{var}', which is not a card variable ({hint}the variables "
            "are listed in model_cards/README.md)"
        )
    warnings = []
    if not errors and "card_data" not in used:
        warnings.append(
            f"card template {name} does not print {{{{ card_data }}}}: the card will have no metadata "
            "(base_model, tags, model-index); start it with ---, {{ card_data }}, --- lines as merge.md does"
        )
    return text, errors, warnings


def load_template(template: str | Path | None = None) -> str:
    """The text of a card template file (``None``: the bundled ``merge.md``), checked.

    Raises:
        RecipeError: Any error of :func:`template_problems`, naming the file.
    """
    text, errors, _ = _inspect(template)
    if errors or text is None:
        raise RecipeError("; ".join(errors))
    return text


def write_card(folder: str | Path, card: ModelCard) -> Path:
    """Write ``card`` as ``folder/README.md``; return the path."""
    path = Path(folder) / CARD_FILENAME
    path.write_text(str(card), encoding="utf-8")
    logger.debug("wrote %s", path)
    return path


def _task_data(spec: Any) -> str:
    """Where a task's examples come from, for the card's task table."""
    if spec.data is None:  # an lm-evaluation-harness task
        return f"lm_eval task {spec.lm_eval.task}"
    return spec.data.path
