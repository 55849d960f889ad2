"""The spec grammar, without a server."""

from __future__ import annotations

import pytest

from hf_recycle.errors import SpecError
from hf_recycle.hub.spec import match_path, natural_key, parse_spec


@pytest.mark.parametrize(
    ("text", "repo", "revision", "subfolder"),
    [
        ("org/name", "org/name", "main", None),
        ("org/name@v1.0", "org/name", "v1.0", None),
        ("org/name@main:checkpoint-500", "org/name", "main", "checkpoint-500"),
        ("org/name@step-*", "org/name", "step-*", None),
        ("org/name@main:runs/checkpoint-*", "org/name", "main", "runs/checkpoint-*"),
        ("org/name@history", "org/name", "history", None),
        ("org/name:checkpoint-5", "org/name", "main", "checkpoint-5"),
    ],
)
def test_hub_forms(text, repo, revision, subfolder):
    spec = parse_spec(text)
    assert (spec.repo_id, spec.revision, spec.subfolder, spec.is_local) == (repo, revision, subfolder, False)


def test_local_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    for text in ("./missing", "../x", "/abs/dir", "~/ckpt", "org/name"):
        assert parse_spec(text).is_local, text
    assert parse_spec("org/name").local_path == str(tmp_path / "org" / "name")


@pytest.mark.parametrize("text", ["", "org/name@", "org/name@main:", "org/na me", "org/*@main", "o/n@m:../x"])
def test_malformed(text):
    with pytest.raises(SpecError):
        parse_spec(text)


def test_natural_order_and_segment_globs():
    names = ["step-10", "step-2", "step-1", "step-100", "step-20"]
    assert sorted(names, key=natural_key) == ["step-1", "step-2", "step-10", "step-20", "step-100"]
    assert match_path("checkpoint-*", "checkpoint-5") and not match_path("*", "runs/checkpoint-5")
    assert match_path("runs/*", "runs/a") and not match_path("runs/*", "runs/a/b")
