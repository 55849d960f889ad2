"""The recipe loader and `hf-recycle score --tasks` read YAML and locate problems the same way."""

from __future__ import annotations

import re

import pytest

from hf_recycle._score.tasks import load_tasks
from hf_recycle.errors import RecipeError, TaskError
from hf_recycle.recipe import Recipe

RECIPE = """\
name: x
tasks:
  - name: one
    data: json
    prompt: '{q}'
    target: '{a}'
    weight:
      -1
"""


def _lines(text: str, field: str) -> set[str]:
    return set(re.findall(rf":(\d+): {re.escape(field)}:", text))


def test_both_loaders_give_the_same_line_for_a_task_problem(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    with pytest.raises(RecipeError) as from_recipe:
        Recipe.from_yaml(path)
    with pytest.raises(TaskError) as from_tasks:
        load_tasks(path)
    assert _lines(str(from_recipe.value), "tasks[0].weight") == _lines(
        str(from_tasks.value), "tasks[0].weight"
    )
    assert _lines(str(from_tasks.value), "tasks[0].weight") == {"7"}


def test_both_loaders_report_bad_yaml_the_same_way(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ntasks:\n  - name: [one\n")
    with pytest.raises(RecipeError) as from_recipe:
        Recipe.from_yaml(path)
    with pytest.raises(TaskError) as from_tasks:
        load_tasks(path)
    assert str(from_recipe.value) == str(from_tasks.value)
    assert str(from_tasks.value).startswith(f"{path}:4: not valid YAML:")
