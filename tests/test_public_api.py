"""Every name of hf_recycle.__all__ is what it says, whatever was imported before it, in a fresh interpreter."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

import hf_recycle

pytestmark = pytest.mark.slow  # fresh interpreters that import torch, transformers and optuna

FUNCTIONS = {"merge", "resolve", "score", "search", "run"}
# Modules whose import used to rebind hf_recycle.score/.merge/.search to a subpackage.
SUBMODULES = [
    "hf_recycle.recipe",
    "hf_recycle._score.tasks",
    "hf_recycle._merge.methods",
    "hf_recycle._search.samplers",
    "hf_recycle._merge.engine",
    "hf_recycle._score.api",
    "hf_recycle._search.api",
    "hf_recycle.pipeline",
]

CHECK = """
import importlib, inspect, json, sys
order, first = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for module in first:
    importlib.import_module(module)
import hf_recycle
seen, problems = [], []
for name in order:
    value = getattr(hf_recycle, name)
    seen.append(name)
    for earlier in seen:  # nothing accessed later rebinds a name accessed before
        got = getattr(hf_recycle, earlier)
        if earlier in {functions}:
            ok = inspect.isfunction(got) and got.__name__ == earlier
        elif earlier == "__version__":
            ok = isinstance(got, str)
        else:
            ok = inspect.isclass(got) and got.__name__ == earlier
        if not ok:
            problems.append(f"after {{name}}: hf_recycle.{{earlier}} is {{got!r}}")
print(json.dumps(problems))
"""


def _orders() -> list[tuple[list[str], list[str]]]:
    names = list(hf_recycle.__all__)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    return [
        (names, []),
        (names[::-1], []),
        (shuffled, []),
        (names, SUBMODULES),
        (shuffled, SUBMODULES[::-1]),
    ]


@pytest.mark.parametrize(
    ("order", "first"),
    _orders(),
    ids=["forward", "reverse", "shuffled", "submodules-first", "submodules-reversed"],
)
def test_every_public_name_in_every_import_order(order, first):
    code = CHECK.format(functions=sorted(FUNCTIONS))
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(order), json.dumps(first)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_dir_lists_the_public_names():
    assert sorted(dir(hf_recycle)) == sorted(hf_recycle.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        _ = hf_recycle.nothing
