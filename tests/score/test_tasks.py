"""The task schema and ``load_tasks``."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from hf_recycle._score.tasks import TaskList, TaskSpec, load_tasks, template_fields
from hf_recycle.errors import TaskError

DESIGN_TASK = {
    "name": "addition",
    "data": {"path": "json", "data_files": "data/addition.jsonl"},
    "search_split": "train[:64]",
    "test_split": "train[64:]",
    "kind": "generate",
    "prompt": "{question}=",
    "target": "{answer}",
    "metric": "exact_match",
    "max_new_tokens": 8,
    "weight": 1.0,
}


def test_design_example_and_defaults():
    spec = TaskSpec.model_validate(DESIGN_TASK)
    assert spec.split_expression("search") == "train[:64]" and spec.split_expression("test") == "train[64:]"
    assert spec.metric_name == "exact_match" and spec.larger_is_better and spec.generation_length == 8
    choice = TaskSpec(name="c", data="json", kind="choice", prompt="{q}", target="{label}", options="choices")
    assert choice.metric_name == "accuracy" and choice.data.path == "json"
    ppl = TaskSpec(name="p", data="json", kind="perplexity", prompt="", target="{text}")
    assert ppl.metric_name is None and not ppl.larger_is_better
    assert TaskSpec(name="s", data="json", prompt="{q}", target="{a}", stop="\n").stop == ("\n",)
    with pytest.raises(ValidationError):
        spec.weight = 2.0  # frozen


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"kind": "ranking"}, "kind"),
        ({"weight": 0}, "greater than 0"),
        ({"weight": float("inf")}, "finite"),
        ({"max_new_tokens": 0}, "greater than 0"),
        ({"batch_size": 0}, "batch_size"),
        ({"options": "opts"}, "only for kind 'choice'"),
        ({"kind": "choice", "max_new_tokens": None}, "needs 'options'"),
        ({"kind": "loglikelihood", "max_new_tokens": None}, "'metric' does not apply"),
        ({"test_split": "train[:64]"}, "held out"),
        ({"prompt": "{}="}, "positional"),
        ({"prompt": "{question="}, "prompt"),
        ({"temperature": 0.5}, "Extra inputs"),
        ({"data": {"path": "json", "datafiles": "x"}}, "Extra inputs"),
        ({"stop": [""]}, "stop strings must not be empty"),
    ],
)
def test_invalid_specs(update, message):
    with pytest.raises(ValidationError, match=message):
        TaskSpec.model_validate({**DESIGN_TASK, **update})


def test_template_fields():
    assert template_fields("{question}=") == ("question",)
    assert template_fields("{a[0]} {b.c} {a} {{literal}}") == ("a", "b")


def test_task_list_for_the_recipe_schema():
    class Holder(BaseModel):
        tasks: TaskList

    with pytest.raises(ValidationError, match="used twice"):
        Holder(tasks=[DESIGN_TASK, DESIGN_TASK])
    with pytest.raises(ValidationError):
        Holder(tasks=[])


def test_load_tasks_reads_only_the_tasks_section(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: demo\ncheckpoints: [a/b@main]\nsearch: {trials: 3, whatever: 1}\n"
        "tasks:\n  - name: addition\n    data: {path: json, data_files: d.jsonl}\n"
        "    prompt: '{question}='\n    target: '{answer}'\n"
    )
    (spec,) = load_tasks(recipe)
    assert spec.name == "addition" and spec.data.data_files == "d.jsonl"


def test_load_tasks_lists_every_problem_with_lines(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "tasks:\n"
        "  - name: one\n"  # line 2
        "    data: json\n"
        "    prompt: '{q}'\n"
        "    target: '{a}'\n"
        "    weight: -1\n"  # line 6
        "  - name: two\n"  # line 7
        "    data: json\n"
        "    kind: choice\n"  # line 9
        "    prompt: '{q}'\n"
        "    target: '{a}'\n"
        "    promt: typo\n"  # line 12
    )
    with pytest.raises(TaskError) as info:
        load_tasks(recipe)
    text = str(info.value)
    assert "2 problems" in text
    assert f"{recipe}:6: tasks[0].weight" in text
    assert f"{recipe}:12: tasks[1].promt: Extra inputs" in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\n", "no 'tasks:' section"),
        ("tasks: []\n", "non-empty list"),
        ("tasks: [\n", "not valid YAML"),
        (
            "tasks:\n  - {name: a, data: json, prompt: x, target: y}\n  - {name: a, data: json, prompt: x, target: y}\n",
            "used twice",
        ),
    ],
)
def test_load_tasks_errors(tmp_path, content, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(content)
    with pytest.raises(TaskError, match=message):
        load_tasks(recipe)
    with pytest.raises(TaskError, match="does not exist"):
        load_tasks(tmp_path / "missing.yaml")
