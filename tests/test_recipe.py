"""Recipe schema and ``hf-recycle validate``: every problem at once, each with its file line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from hf_recycle._score.kinds import KIND_NAMES
from hf_recycle._search.samplers import SAMPLERS
from hf_recycle.cli import main
from hf_recycle.errors import RecipeError
from hf_recycle.recipe import Recipe

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))

GOOD = """\
name: ok
checkpoints: [org/run@step-*]
base: org/run@base
merge: {method: linear}
search: {sampler: cmaes, trials: 10}
tasks:
  - name: a
    data: {path: json, data_files: a.jsonl}
    search_split: "train[:8]"
    test_split: "train[8:]"
    prompt: "{q}="
    target: "{a}"
  - name: b
    data: json
    search_split: "train[10%:50%]+validation"
    kind: loglikelihood
    prompt: "{q}"
    target: "{a}"
"""


def _problems(text: str) -> dict[str, tuple[int, str]]:
    """``{field: (line, message)}`` of every problem of recipe ``text``."""
    with pytest.raises(RecipeError) as info:
        Recipe.from_text(text, source="r.yaml")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("r.yaml: ") and "in the recipe" in lines[0]
    out = {}
    for line in lines[1:]:
        source, number, field, message = line.split(":", 3)
        assert source == "r.yaml"
        out[field.strip()] = (int(number), message.strip())
    assert len(out) == len(lines) - 1, "one line per problem"
    return out


def test_good_recipe_loads():
    recipe = Recipe.from_text(GOOD)
    assert recipe.tasks[1].data.path == "json" and recipe.search.layers_per_group is None
    assert recipe.output_dir == Path("outputs/ok")


def _one_of(names) -> str:
    """pydantic's list of allowed values: 'a', 'b' or 'c'."""
    quoted = [f"'{n}'" for n in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def test_every_kind_of_problem_is_reported_at_once_with_its_line():
    text = """\
name: bad
checkpoints: ["org/run@main:", 5]
base: "org/run@"
merge: {method: ties, dtype: float8}
search:
  sampler: cmaess
  trials: zero
  objective: pareto
  granularity: layers:0
  typo_key: 1
tasks:
  - name: a
    data: {path: json}
    search_split: "train[:64"
    kind: generatee
    prompt: "{q}="
output: {dir: out, shard_size: 1GB}
push: {repo: "not a repo"}
"""
    problems = _problems(text)
    expected = {
        "checkpoints[0]": (2, "empty subfolder"),
        "checkpoints[1]": (2, "valid string"),
        "base": (3, "empty revision"),
        "merge.dtype": (4, "'bfloat16'"),
        "search.sampler": (6, _one_of(SAMPLERS)),  # every registered sampler named
        "search.trials": (7, "valid integer"),
        "search.objective": (8, "at least 2 tasks"),  # cross-field, reported though other fields are invalid
        "search.granularity": (9, "layers:N"),
        "search.typo_key": (10, "unknown key"),
        "tasks[0].target": (12, "required field is missing"),
        "tasks[0].search_split": (14, "not a split expression"),
        "tasks[0].kind": (15, _one_of(KIND_NAMES)),
        "output.shard_size": (17, "unknown key"),
        "push.repo": (18, "not a repo id"),
    }
    assert set(problems) == set(expected)
    for field, (line, fragment) in expected.items():
        assert problems[field][0] == line, field
        assert fragment in problems[field][1], (field, problems[field][1])
    # reported in file order
    assert [p[0] for p in problems.values()] == sorted(p[0] for p in problems.values())


def test_cross_field_checks_alone():
    base_missing = GOOD.replace("base: org/run@base\n", "").replace("method: linear", "method: dare_ties")
    assert _problems(base_missing) == {
        "merge.method": (3, "'dare_ties' works on task vectors and needs a base: add 'base: <spec>'")
    }
    one_task = GOOD.split("  - name: b")[0].replace(
        "cmaes, trials: 10}", "nsga2, trials: 10, objective: pareto}"
    )
    assert list(_problems(one_task)) == ["search.objective"]
    twice = GOOD.replace("  - name: b", "  - name: a")
    assert _problems(twice) == {"tasks[1].name": (13, "task name 'a' is already used by tasks[0]")}


@pytest.mark.parametrize(
    "split",
    [
        "train",
        "train[:64]",
        "train[64:]",
        "validation[:10%]",
        "train[-5:]",
        "train[:33%](pct1_dropremainder)",
        "a+b[1:2]",
    ],
)
def test_valid_split_expressions(split):
    Recipe.from_text(GOOD.replace('"train[:8]"', f'"{split}"'))


@pytest.mark.parametrize(
    "split",
    [
        "train[:64",
        "train[a:b]",
        "train[5]",
        "train++test",
        "[:5]",
        # valid for the regex this check used before, refused by datasets' own parser
        "train[ 1 : 2 ]",
        " train",
        "train[:33](pct1_dropremainder)",
        "train[:200%]",
        "train[:5](nearest)",
    ],
)
def test_bad_split_expressions(split):
    """datasets' split parser decides (what load_dataset(split=...) runs), and says why."""
    message = _problems(GOOD.replace('"train[:8]"', f'"{split}"'))["tasks[0].search_split"][1]
    assert message.startswith(f"'{split}' is not a split expression (") and "train[:64]" in message


def test_a_plain_split_name_does_not_import_datasets():
    import subprocess
    import sys

    code = (
        "import sys; from hf_recycle.recipe import split_error; "
        "assert split_error('validation') is None; print('datasets' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        == "False\n"
    )


def test_pareto_needs_a_multi_objective_sampler():
    two_tasks = GOOD.replace("cmaes, trials: 10}", "cmaes, trials: 10, objective: pareto}")
    problems = _problems(two_tasks)
    assert list(problems) == ["search.sampler"] and problems["search.sampler"][0] == 5
    assert "sampler 'cmaes' optimizes a single objective" in problems["search.sampler"][1]
    assert "tpe, gp, random, nsga2" in problems["search.sampler"][1]
    default = GOOD.replace("{sampler: cmaes, trials: 10}", "{objective: pareto}")
    assert "sampler 'cmaes' (the default)" in _problems(default)["search.sampler"][1]
    Recipe.from_text(GOOD.replace("cmaes, trials: 10}", "nsga2, trials: 10, objective: pareto}"))


@pytest.mark.parametrize(
    ("size", "fragment"),
    [
        ("5 potatoes", "is not a size"),
        ("5B", "ends in a bare B"),
        ("5b", "ends in a bare B"),
        ("0GB", "positive"),
    ],
)
def test_output_shard_size_is_parsed_by_the_schema(size, fragment):
    problems = _problems(GOOD + f"output: {{max_shard_size: {size}}}\n")
    line, message = problems["output.max_shard_size"]
    assert line == 19 and fragment in message
    if "bare B" in fragment:  # names the accepted units
        assert "KB, MB, GB, TB, KiB, MiB, GiB, TiB" in message


def test_sizes():
    from hf_recycle.errors import MergeConfigError
    from hf_recycle.units import parse_size

    assert [parse_size(s) for s in ("5GB", "500MB", "2GiB", "1.5KiB", "123", "7 kb")] == [
        5 * 10**9,
        5 * 10**8,
        2 * 2**30,
        1536,
        123,
        7000,
    ]
    for bad in ("5B", "5 b", "5bytes", "5iB", "GB", "-1GB"):
        with pytest.raises(MergeConfigError):
            parse_size(bad)
    assert Recipe.from_text(GOOD + "output: {max_shard_size: 5000000}\n").output.max_shard_size == 5000000


def test_a_recipe_file_needs_tasks_and_a_non_empty_checkpoint_list():
    no_tasks = GOOD.split("tasks:")[0]
    assert _problems(no_tasks) == {
        "tasks": (1, "no tasks: add at least one task that scores candidates (see the task schema)")
    }
    assert list(_problems(no_tasks + "tasks: []\n")) == ["tasks"]
    empty = _problems(GOOD.replace("checkpoints: [org/run@step-*]", "checkpoints: []"))
    assert list(empty) == ["checkpoints"] and empty["checkpoints"][0] == 2
    assert (
        Recipe.from_text(GOOD.replace("checkpoints: [org/run@step-*]\n", "")).checkpoints == []
    )  # a callback's
    # a Recipe built in Python may have no tasks: scorers can be given to the search directly
    assert Recipe.model_validate({"name": "x", "tasks": []}).tasks == []


def test_union_errors_are_one_problem_at_the_right_place():
    problems = _problems(GOOD.replace("data_files: a.jsonl", "data_files: {train: 5}"))
    assert list(problems) == ["tasks[0].data.data_files.train"]
    assert problems["tasks[0].data.data_files.train"][0] == 8


def test_yaml_syntax_and_shape_errors():
    with pytest.raises(RecipeError, match=r"r.yaml:4: not valid YAML: expected"):
        Recipe.from_text("name: x\ntasks:\n  - [unclosed\n", source="r.yaml")
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        Recipe.from_text("- a\n- b\n", source="r.yaml")
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.from_yaml("no/such/recipe.yaml")


def test_python_construction_checks_cross_fields_too():
    data = {"name": "x", "merge": {"method": "ties"}, "tasks": []}
    with pytest.raises(ValidationError, match="needs a base"):
        Recipe.model_validate(data)


def test_validate_command_reports_each_file(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    (tmp_path / "a.jsonl").write_text('{"q": "1+1", "a": "2"}\n')  # validate checks the data files too
    text = GOOD.replace("data: json", "data: {path: json, data_files: {train: a.jsonl, validation: a.jsonl}}")
    good.write_text(text)
    bad.write_text(
        text.replace("sampler: cmaes", "sampler: annealing").replace("kind: loglikelihood", "kind: lm")
    )
    assert main(["validate", str(good)]) == 0
    assert "ok: " in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"ok: {good}" in captured.out
    assert f"{bad}:5: search.sampler:" in captured.err and f"{bad}:16: tasks[1].kind:" in captured.err
    assert "1 of 2 recipe(s) invalid" in captured.err


def test_shipped_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "pythia-steps.yaml", "lora-pool.yaml", "pareto.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates_and_names_its_command(path):
    from hf_recycle.preflight import check_file

    report = check_file(path)  # the schema, the data files, metrics and trials: what hf-recycle validate runs
    assert report.errors == [] and report.warnings == []
    recipe = report.recipe
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"hf-recycle run recipes/{path.name}" in first
    assert recipe.tasks and recipe.checkpoints


def test_merge_device_takes_a_gpu_index_and_refuses_other_names():
    recipe = Recipe.model_validate({"name": "x", "tasks": [], "merge": {"device": "cuda:1"}})
    assert recipe.merge.device == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:x", "tpu"):
        with pytest.raises(
            ValidationError, match=f"'{re.escape(bad)}' is not a device: use auto, cpu, cuda or cuda:N"
        ):
            Recipe.model_validate({"name": "x", "tasks": [], "merge": {"device": bad}})
