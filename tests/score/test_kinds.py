"""The task-kind registry: one module per kind, read by the schema, the data and the scorer."""

from __future__ import annotations

import subprocess
import sys
import typing

from hf_recycle._score.kinds import KIND_NAMES, KINDS
from hf_recycle._score.tasks import TaskKind

BUILT_IN = ("generate", "choice", "loglikelihood", "perplexity")


def test_registry_lists_the_kinds_and_drives_the_schema():
    """The built-in kinds, in order (a kind added since is one more module and its own test)."""
    assert tuple(k for k in KIND_NAMES if k in BUILT_IN) == BUILT_IN
    assert typing.get_args(TaskKind) == KIND_NAMES
    built_in = [KINDS[name] for name in BUILT_IN]
    assert [k.name for k in built_in if k.generates] == ["generate"]
    assert {k.name: k.default_metric for k in built_in} == {
        "generate": "exact_match",
        "choice": "accuracy",
        "loglikelihood": None,
        "perplexity": None,
    }
    assert [k.name for k in built_in if not k.higher_is_better] == ["perplexity"]


def test_the_registry_loads_no_torch():
    code = "import sys, hf_recycle._score.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
