"""Model cards: rendering from the bundled template or a recipe's own, the checks of a template, the
round trip through ``ModelCard.load``, and the templates in the editable install and in a wheel."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from recipe_runs import STEPS

from hf_recycle.errors import RecipeError
from hf_recycle.final.card import (
    CITATION,
    DEFAULT_TEMPLATE,
    TEMPLATE_VARIABLES,
    TEMPLATES_PACKAGE,
    agreed_license,
    build_card,
    bundled_template,
    template_path,
    template_problems,
    write_card,
)
from hf_recycle.hub.pins import PinnedCheckpoint
from hf_recycle.recipe import Recipe

SHA = [f"{i:x}" * 40 for i in range(1, 4)]
BASE_SHA = "b" * 40

RECIPE = """\
name: card-demo
checkpoints: ["demo/tiny-lm@step-*"]
base: demo/tiny-lm@base
merge: {method: task_arithmetic, lambda: 0.8}
search: {sampler: cmaes, trials: 12, seed: 3}
tasks:
  - name: addition
    data: {path: json, data_files: data/addition.jsonl}
    search_split: "train[:4]"
    test_split: "train[4:]"
    kind: generate
    prompt: "{question}="
    target: "{answer}"
    max_new_tokens: 4
  - name: reversal
    data: {path: json, data_files: data/reversal.jsonl}
    search_split: "train[:4]"
    test_split: "train[4:]"
    kind: loglikelihood
    prompt: "{word}>"
    target: "{reversed}"
push: {repo: demo/tiny-lm-recycled}
"""


def _results(pareto: bool = False) -> dict:
    """A results.json in the shape hf_recycle._search.results.build_results writes."""

    def scores(a, b):
        return {"addition": a, "reversal": b, "mean": (a + b) / 2}

    results = {
        "format": 1,
        "name": "card-demo",
        "study": {
            "name": "card-demo",
            "storage": "sqlite:///x.db",
            "sampler": "cmaes",
            "objective": "mean",
            "trials_requested": 12,
        },
        "trials": 12,
        "checkpoints": [
            {
                "spec": f"demo/tiny-lm@step-{i + 1}",
                "repo_id": "demo/tiny-lm",
                "revision": f"step-{i + 1}",
                "commit": SHA[i],
                "subfolder": None,
                "kind": "full",
            }
            for i in range(3)
        ],
        "space": {"n_checkpoints": 3, "groups": ["all"], "weights": "simplex", "granularity": "model"},
        "merge": {"method": "task_arithmetic", "lambda": 0.8, "normalize": False, "density": None, "seed": 0},
        "tasks": [
            {"name": "addition", "weight": 1.0, "higher_is_better": True},
            {"name": "reversal", "weight": 1.0, "higher_is_better": True},
        ],
        "winner": {
            "trial": 9,
            "weights": [0.5, 0.3, 0.2],
            "search": scores(0.75, -3.0),
            "test": scores(0.5, -3.5),
        },
        "baselines": {
            "uniform": {
                "trial": 0,
                "weights": [1 / 3] * 3,
                "search": scores(0.5, -3.2),
                "test": scores(0.25, -3.6),
            },
            "best_single": {
                "trial": 2,
                "weights": [0, 1, 0],
                "checkpoint": 1,
                "search": scores(0.5, -3.1),
                "test": scores(0.5, -3.7),
            },
            "greedy_soup": {
                "trial": 5,
                "weights": [0.5, 0.5, 0],
                "members": [0, 1],
                "search": scores(0.6, -3.1),
                "test": scores(0.5, -3.6),
            },
        },
        "comparison": {
            "baseline": "greedy_soup",
            "chosen_by": "search mean",
            "difference": 0.05,
            "ci_low": -0.01,
            "ci_high": 0.11,
            "confidence": 0.95,
            "n_boot": 2000,
            "p_not_better": 0.07,
        },
        "plots": ["plots/history.png", "plots/weights.png"],
    }
    if pareto:
        results["study"]["objective"] = "pareto"
        results["pareto"] = [
            {**results["winner"], "comparison": {**results["comparison"], "difference": 0.05}},
            {
                "trial": 4,
                "weights": [0.1, 0.1, 0.8],
                "search": scores(0.25, -2.5),
                "test": scores(0.25, -2.9),
                "comparison": {
                    "difference": -0.02,
                    "ci_low": -0.2,
                    "ci_high": 0.1,
                    "confidence": 0.95,
                    "n_boot": 2000,
                },
            },
        ]
    return results


BASE = PinnedCheckpoint(
    repo_id="demo/tiny-lm",
    revision="base",
    commit=BASE_SHA,
    subfolder=None,
    kind="full",
    spec="demo/tiny-lm@base",
)


def _card(results=None, **kwargs):
    recipe = Recipe.from_text(RECIPE)
    return build_card(
        results or _results(),
        recipe,
        recipe_text=RECIPE,
        command="hf-recycle run recipe.yaml --push",
        base=BASE,
        **kwargs,
    )


def test_card_round_trips_through_model_card_load(tmp_path):
    from huggingface_hub import ModelCard

    card = _card(repo_id="demo/tiny-lm-recycled", licenses={"demo/tiny-lm": "apache-2.0"})
    path = write_card(tmp_path, card)
    loaded = ModelCard.load(path)
    data = loaded.data
    assert data.base_model == ["demo/tiny-lm"]
    assert data["base_model_relation"] == "merge"
    assert data.tags == ["merge", "hf-recycle", "task_arithmetic"]
    assert data.library_name == "transformers"
    assert data.license == "apache-2.0"
    assert data.model_name == "demo/tiny-lm-recycled"
    by_task = {r.dataset_name: r for r in data.eval_results}
    assert by_task["addition"].metric_value == 0.5 and by_task["addition"].metric_type == "exact_match"
    assert by_task["reversal"].metric_value == -3.5 and by_task["reversal"].metric_type == "loglikelihood"
    assert by_task["addition"].dataset_split == "train[4:]"
    # the YAML header is plain metadata the Hub reads
    header = yaml.safe_load(path.read_text().split("---")[1])
    assert header["model-index"][0]["name"] == "demo/tiny-lm-recycled"


def test_card_body_names_sources_method_results_and_reproduction():
    text = _card().text
    for sha in [*SHA, BASE_SHA]:
        assert sha in text
    assert "| 0 | `demo/tiny-lm` | `step-1` |" in text and "0.5000" in text
    assert "Task Arithmetic" in text and "lambda 0.8" in text
    assert "CMA-ES" in text and "12 complete trials" in text
    assert "uniform soup" in text and "best single checkpoint (#1)" in text and "greedy soup (#0, #1)" in text
    assert "[-0.01, +0.11]" in text and "95% paired bootstrap" in text
    assert "![history](plots/history.png)" in text
    assert "hf-recycle run recipe.yaml --push" in text and "name: card-demo" in text
    assert "transformers" in text and "huggingface_hub" in text
    assert CITATION.splitlines()[0] in text and "2412.04144" in text


def test_license_only_when_sources_agree():
    assert agreed_license({"a/x": "mit", "b/y": "mit"}) == "mit"
    assert agreed_license({"a/x": "mit", "b/y": "apache-2.0"}) is None
    assert agreed_license({"a/x": "mit", "b/y": None}) is None
    assert agreed_license(None) is None
    assert _card(licenses={"demo/tiny-lm": None}).data.license is None


def test_pareto_member_card_and_no_test_split():
    results = _results(pareto=True)
    card = _card(results, member=1)
    assert "Pareto member #1" in card.text and "trial 4" in card.text
    assert card.data.eval_results[0].metric_value == 0.25
    assert "[-0.2, +0.1]" in card.text
    no_test = copy.deepcopy(_results())
    no_test.pop("comparison")
    for entry in [no_test["winner"], *no_test["baselines"].values()]:
        entry["test"] = None
    card = _card(no_test)
    assert card.data.eval_results is None and "search-split scores" in card.text


def test_member_out_of_range():
    from hf_recycle.errors import SearchError

    with pytest.raises(SearchError, match="no member #5"):
        _card(_results(pareto=True), member=5)


def test_one_interval_per_baseline_when_results_carry_them():
    results = _results()
    results["comparisons"] = {
        name: {"difference": d, "ci_low": d - 0.1, "ci_high": d + 0.1, "confidence": 0.9, "n_boot": 500}
        for name, d in [("uniform", 0.25), ("best_single", 0.125), ("greedy_soup", 0.0625)]
    }
    text = _card(results).text
    assert "This model − uniform soup on the held-out" in text and "[+0.15, +0.35]" in text
    assert "best single checkpoint on the held-out" in text and "greedy soup on the held-out" in text
    assert text.count("90% paired bootstrap") == 3


COMPARISONS = {  # baseline -> (difference, ci_low, ci_high, p_not_better), as results.json holds them
    "uniform": (0.09, 0.05, 0.13, 0.0),
    "best_single": (0.06, 0.02, 0.1, 0.001),
    "greedy_soup": (-0.04, -0.07, 0.01, 0.93),
}
SHOWN = {  # the same numbers as the card must print them
    "uniform": ("uniform soup", "**+0.09**", "[+0.05, +0.13]", "0"),
    "best_single": ("best single checkpoint", "**+0.06**", "[+0.02, +0.1]", "0.001"),
    "greedy_soup": ("greedy soup", "**-0.04**", "[-0.07, +0.01]", "0.93"),
}


def _with_comparisons(results: dict, target: dict) -> None:
    target["comparisons"] = {
        name: {
            "difference": d,
            "ci_low": lo,
            "ci_high": hi,
            "confidence": 0.95,
            "n_boot": 2000,
            "p_not_better": p,
        }
        for name, (d, lo, hi, p) in COMPARISONS.items()
    }
    target["comparison"] = {**target["comparisons"]["greedy_soup"]}
    results["comparison"] = {"baseline": "greedy_soup", "chosen_by": "search mean", **target["comparison"]}


def _paragraphs(text: str, who: str) -> dict[str, str]:
    """The card's comparison paragraph of each baseline, by its label."""
    out = {}
    for paragraph in text.split("\n\n"):
        if paragraph.startswith(f"{who} − ") and " on the held-out test split" in paragraph:
            out[paragraph[len(who) + 3 : paragraph.index(" on the held-out")]] = paragraph
    return out


def test_card_lists_each_baseline_comparison_of_results_json(tmp_path):
    import json

    from hf_recycle._search.report import render_markdown

    results = _results()
    _with_comparisons(results, results)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    results = json.loads(path.read_text())
    text = _card(results).text
    paragraphs = _paragraphs(text, "This model")
    assert sorted(paragraphs) == sorted(label for label, *_ in SHOWN.values())
    for label, difference, interval, p in SHOWN.values():
        paragraph = paragraphs[label]
        assert (
            f": {difference}, 95% paired bootstrap confidence interval {interval} (2000 resamples"
            in paragraph
        )
        assert f"not better: {p})." in paragraph
    # the baseline with the best search score (results.json's comparison) is marked, once
    assert text.count("is the baseline with the best search score") == 1
    assert paragraphs["greedy soup"].endswith("The greedy soup is the baseline with the best search score.")
    # the card and results.md show the same numbers
    md = render_markdown(results)
    for name, (_, difference, interval, p) in SHOWN.items():
        label = f"{name} (best on search)" if name == "greedy_soup" else name
        assert f"| {label} | {difference.strip('*')} | 95% {interval} | {p} |" in md


def test_pareto_member_card_lists_its_own_comparisons():
    results = _results(pareto=True)
    _with_comparisons(results, results["pareto"][1])
    text = _card(results, member=1).text
    paragraphs = _paragraphs(text, "Pareto member #1")
    assert sorted(paragraphs) == sorted(label for label, *_ in SHOWN.values())
    for label, difference, interval, _ in SHOWN.values():
        assert f"{difference}, 95% paired bootstrap confidence interval {interval}" in paragraphs[label]
    assert "This model −" not in text  # the winner's numbers are not this member's
    # member #0 has only the comparison against the chosen baseline (older results.json)
    text = _card(results, member=0).text
    assert list(_paragraphs(text, "Pareto member #0")) == ["greedy soup"]


def test_no_base_model_relation_without_a_base_model(tmp_path):
    """A pool of local folders has no base_model: the card then names no relation to one."""
    from huggingface_hub import ModelCard

    results = _results()
    results["checkpoints"] = [
        {"spec": f"./checkpoint-{n}", "repo_id": None, "kind": "full", "path": f"./checkpoint-{n}"}
        for n in (2, 4, 6)
    ]
    recipe = Recipe.from_text(RECIPE.replace("merge: {method: task_arithmetic, lambda: 0.8}", "merge: {}"))
    results["merge"] = {"method": "linear", "normalize": True, "density": None, "seed": 0}
    card = build_card(results, recipe, recipe_text=RECIPE, command="hf-recycle run recipe.yaml")
    data = ModelCard.load(write_card(tmp_path, card)).data
    assert data.base_model is None
    assert "base_model_relation" not in data.to_dict()
    assert data.tags == ["merge", "hf-recycle", "linear"]
    assert (
        "| 0 | `./checkpoint-2` (local) |" in card.text
        and "A source marked (local) was a folder" in card.text
    )
    # with a Hub source the relation is there (and no note about local sources)
    hub_card = _card()
    assert hub_card.data.base_model == ["demo/tiny-lm"] and hub_card.data["base_model_relation"] == "merge"
    assert "(local)" not in hub_card.text


# --- templates: the recipe's own, checks, documentation, packaging ----------------------------------

REPO = Path(__file__).resolve().parents[1]

CUSTOM_TEMPLATE = """\
---
{{ card_data }}
---

# custom card of {{ title }}

method={{ method.name }} sampler={{ search.sampler_name }} objective={{ search.objective }}
tasks={{ task_names | join(",") }} base={{ base.commit }}
{% for s in sources %}source {{ loop.index0 }}: {{ s.commit }} weight {{ "%.2f" | format(s.weight) }}
{% endfor %}member={{ member.index if member else "winner" }} versions={{ versions | length }}
"""


def test_the_recipes_template_is_rendered_with_the_card_variables(tmp_path):
    template = tmp_path / "card.md"
    template.write_text(CUSTOM_TEMPLATE)
    card = _card(template=template, repo_id="demo/tiny-lm-recycled")
    text = card.text
    assert "# custom card of demo/tiny-lm-recycled" in text
    assert "method=task_arithmetic sampler=CMA-ES objective=mean" in text
    assert f"tasks=addition,reversal base=`{BASE_SHA}`" in text
    for i, w in enumerate(["0.50", "0.30", "0.20"]):
        assert f"source {i}: `{SHA[i]}` weight {w}" in text
    assert "member=winner versions=7" in text
    assert "## Sources" not in text  # not the bundled template
    # the metadata header is the same as with the bundled template
    assert card.data.to_dict() == _card(repo_id="demo/tiny-lm-recycled").data.to_dict()
    member = _card(_results(pareto=True), member=1, template=template)
    assert "member=1" in member.text and "# custom card of card-demo (Pareto member #1)" in member.text


def test_every_variable_is_passed_and_documented(monkeypatch):
    """TEMPLATE_VARIABLES is what build_card renders with, and model_cards/README.md documents each."""
    from huggingface_hub import ModelCard

    seen = {}
    original = ModelCard.from_template.__func__

    def spy(cls, card_data, template_path=None, template_str=None, **kwargs):
        seen.update(kwargs)
        return original(cls, card_data, template_path, template_str, **kwargs)

    monkeypatch.setattr(ModelCard, "from_template", classmethod(spy))
    _card()
    assert {"card_data", *seen} == set(TEMPLATE_VARIABLES)
    readme = (REPO / "model_cards" / "README.md").read_text()
    documented = re.findall(r"^\| `(\w+)` \|", readme, flags=re.M)
    assert sorted(documented) == sorted(TEMPLATE_VARIABLES)
    # the bundled template uses no variable it is not given
    assert template_problems(None) == ([], [])


def test_card_recipe_section_resolves_against_the_recipe_folder(tmp_path, monkeypatch):
    from hf_recycle.final.folders import card_template

    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = Recipe.from_text(RECIPE + "card: {template: cards/mine.md}\n")
    assert recipe.card.template == "cards/mine.md"
    assert card_template(recipe, folder) == folder / "cards" / "mine.md"
    assert card_template(Recipe.from_text(RECIPE), folder) is None
    assert template_path(str(tmp_path / "abs.md"), folder) == tmp_path / "abs.md"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert template_path("~/home.md", folder) == tmp_path / "home.md"


@pytest.mark.parametrize(
    ("card", "message"),
    [
        ("{template: ''}", "card.template: is empty"),
        ("{templat: card.md}", "card.template: required field is missing"),
        ("{template: card.md, extra: 1}", "card.extra: unknown key"),
    ],
)
def test_the_card_section_schema(card, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        Recipe.from_text(RECIPE + f"card: {card}\n", source="r.yaml")


def _recipe_with_template(tmp_path, template_text: str | None, name: str = "card.md") -> Path:
    """A recipe file (data included) naming ``name`` in its folder, written with ``template_text``."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "addition.jsonl").write_text('{"question": "1+2", "answer": "3"}\n')
    (data / "reversal.jsonl").write_text('{"word": "ab", "reversed": "ba"}\n')
    if template_text is not None:
        (tmp_path / name).write_text(template_text)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE + f"card: {{template: {name}}}\n")
    return path


@pytest.mark.parametrize(
    ("template_text", "expected"),
    [
        (
            None,
            r"card template '{folder}/card.md' does not exist \(relative paths resolve against the "
            r"recipe's folder, {folder}\)",
        ),
        ("# {{ title }\n", r"card template '{folder}/card.md' is not a valid Jinja template: line 1: "),
        (
            "{% for s in sources %}\n{{ s.repo }}\n",
            r"card template '{folder}/card.md' is not a valid Jinja "
            r"template: line 2: Unexpected end of template",
        ),
        (
            "{{ title | shout }}\n",
            r"card template '{folder}/card.md' is not a valid Jinja template: line 1: "
            r"No filter named 'shout'",
        ),
        (
            "{{ card_data }}\n{{ metod.name }}\n",
            r"card template '{folder}/card.md' uses 'metod', which is "
            r"not a card variable \(did you mean 'method'\?",
        ),
    ],
)
def test_validate_refuses_a_bad_template_naming_the_file(tmp_path, capsys, template_text, expected):
    from hf_recycle.cli import main
    from hf_recycle.preflight import check_file, check_recipe

    path = _recipe_with_template(tmp_path, template_text)
    pattern = expected.format(folder=re.escape(str(tmp_path)))
    line = len(RECIPE.splitlines()) + 1
    report = check_file(path, tasks=False)  # the template is checked with or without the tasks
    assert [field for field, _ in report.errors] == [("card", "template")]
    assert re.search(rf"recipe.yaml:{line}: card.template: {pattern}", report.error_text())
    assert main(["validate", str(path)]) != 0
    assert re.search(pattern, capsys.readouterr().err)
    # a Recipe object (a Trainer callback's, or run(recipe)) is checked against its base_dir
    with pytest.raises(RecipeError, match=pattern):
        check_recipe(Recipe.from_yaml(path), base_dir=tmp_path)
    # build_card refuses it too, naming the file
    if template_text is not None:
        with pytest.raises(RecipeError, match=re.escape(str(tmp_path / "card.md"))):
            _card(template=tmp_path / "card.md")


def test_a_good_template_passes_validate_and_one_without_metadata_is_a_warning(tmp_path, capsys):
    from hf_recycle.cli import main
    from hf_recycle.preflight import check_file

    path = _recipe_with_template(tmp_path, CUSTOM_TEMPLATE)
    report = check_file(path)
    assert report.errors == [] and report.warnings == []
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()
    (tmp_path / "card.md").write_text("# {{ title }}\n{% for x in range(2) %}{{ x }}{% endfor %}\n")
    report = check_file(path)
    assert report.errors == []
    assert [msg for _, msg in report.warnings] == [
        f"card template '{tmp_path / 'card.md'}' does not print {{{{ card_data }}}}: the card will have no "
        "metadata (base_model, tags, model-index); start it with ---, {{ card_data }}, --- lines as "
        "merge.md does"
    ]
    card = _card(template=tmp_path / "card.md")
    assert card.text.startswith("# card-demo\n01") and card.data.to_dict() == {}


def test_a_template_that_fails_to_render_names_the_file(tmp_path):
    template = tmp_path / "card.md"
    template.write_text("---\n{{ card_data }}\n---\n{{ sources[7].repo }}\n{{ title.nope.deeper }}\n")
    assert template_problems(template) == ([], [])  # only rendering finds it
    with pytest.raises(RecipeError, match=rf"card template '{re.escape(str(template))}' does not render: "):
        _card(template=template)


@pytest.mark.slow
def test_run_renders_the_recipes_template(tiny_lm_hub, tmp_path):
    """``hf-recycle run`` with ``card: {template: ...}`` writes that card (path relative to the recipe)."""
    from recipe_runs import write_recipe

    from hf_recycle.pipeline import run

    server, shas = tiny_lm_hub
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "mine.md").write_text(CUSTOM_TEMPLATE)
    path = write_recipe(
        tmp_path,
        "carded",
        search={"sampler": "random", "trials": 2, "baselines": ["uniform"]},
        card={"template": "cards/mine.md"},
    )
    result = run(path, endpoint=server.endpoint)
    text = (result.model_dirs[0] / "README.md").read_text()
    assert "# custom card of demo/carded" in text and "method=linear sampler=random search" in text
    for i, step in enumerate(STEPS):
        assert f"source {i}: `{shas[step]}` weight" in text
    assert "base_model:" in text.split("---")[1]


# -- packaging: model_cards/ is the one source, in the editable install and in a wheel


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_list_covers_every_package_and_maps_the_templates():
    """pyproject.toml lists the packages (find cannot see the mapped model_cards/): none may be missing."""
    from setuptools import find_namespace_packages

    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools_cfg["packages"])
    found = set(find_namespace_packages(where=str(REPO), include=["hf_recycle*"]))
    assert found - listed == set(), "add these packages to [tool.setuptools] packages in pyproject.toml"
    assert listed - found == {TEMPLATES_PACKAGE}
    assert setuptools_cfg["package-dir"] == {TEMPLATES_PACKAGE: "model_cards"}
    assert not (REPO / "hf_recycle" / "model_cards").exists()  # one source
    patterns = setuptools_cfg["package-data"][TEMPLATES_PACKAGE]
    assert any(Path(DEFAULT_TEMPLATE).match(p) for p in patterns)
    # this (editable) install reads the top-level folder
    assert Path(str(bundled_template())) == REPO / "model_cards" / DEFAULT_TEMPLATE


@pytest.mark.slow
def test_a_built_wheel_holds_the_templates_and_finds_them(tmp_path):
    """Build a wheel from a copy of the source tree, and locate and render the template from it."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hf_recycle", "model_cards"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(src),
            "-w",
            str(tmp_path / "dist"),
            "--no-deps",
            "--no-build-isolation",
            "-q",
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("hf_recycle-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert {"hf_recycle/model_cards/merge.md", "hf_recycle/model_cards/README.md"} <= names
    assert not any(n.startswith("model_cards/") for n in names)  # nothing at the top level
    # the unpacked wheel first on sys.path (as site-packages would be), this venv's dependencies after it
    probe = (
        "import hf_recycle.final.card as c; "
        "print(c.__file__); print(c.bundled_template()); print(len(c.load_template()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    site = tmp_path / "site" / "hf_recycle"
    assert out[0] == str(site / "final" / "card.py")
    assert out[1] == str(site / "model_cards" / "merge.md")
    assert int(out[2]) == len((REPO / "model_cards" / "merge.md").read_text())
