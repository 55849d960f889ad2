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


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty checkpoint spec"),
        ("org/name@", "empty revision"),
        ("org/name@:sub", "empty revision"),
        ("org/name@main:", "empty subfolder"),
        ("org/name@main:/", "empty subfolder"),
        ("org/na me", "whitespace"),
        ("org/run@@x", "more than one '@'"),
        ("org/run@main@v2", "more than one '@'"),
        ("org/run@main:ckpt@1", "more than one '@'"),
        ("org/run@ main", "whitespace"),
        ("org/run @main", "whitespace"),
        ("org/run@main:check point", "whitespace"),
        ("org/run@ma\tin", "whitespace"),
        ("org/run@main~1", "invalid revision 'main~1'"),
        ("org/run@main^", "invalid revision"),
        ("org/run@a..b", "invalid revision 'a..b'"),
        ("org/run@refs//pr", "invalid revision"),
        ("org/run@/main", "invalid revision"),
        ("org/run@main/", "invalid revision"),
        ("org/run@-x", "invalid revision"),
        ("org/run@main.lock", "invalid revision"),
        ("org/run@main:a:b", "subfolder 'a:b'"),
        ("org/run@main:a\\b", "subfolder"),
        ("o/n@m:../x", "not a plain relative path"),
        ("org/*@main", "glob in the repo id"),
        ("org/a--b", "invalid repo id"),
        ("org/a..b@main", "invalid repo id"),
        ("org/name-@main", "invalid repo id"),
        ("@main", "neither an existing local folder"),
        ("org/name/extra@main", "neither an existing local folder"),
    ],
)
def test_malformed_specs_are_named_with_the_expected_form(text, problem):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    message = str(info.value)
    assert problem in message
    if text:
        assert f"'{text}'" in message  # names the spec as written
        assert "org/name@" in message  # and shows the form to write


@pytest.mark.parametrize(
    "text",
    ["org/run@refs/pr/1", "org/run@v1.0.2", "org/run@step_10", "org/run@[0-9]*", "org/run@main:a/b-c_d.e"],
)
def test_unusual_but_valid_specs_pass(text):
    assert not parse_spec(text).is_local


def test_malformed_spec_in_the_cli_is_one_clear_error(capsys):
    from hf_recycle import cli

    assert cli.main(["resolve", "org/run@@x"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: spec 'org/run@@x' has more than one '@'") and "Traceback" not in err


def test_natural_order_and_segment_globs():
    names = ["step-10", "step-2", "step-1", "step-100", "step-20"]
    assert sorted(names, key=natural_key) == ["step-1", "step-2", "step-10", "step-20", "step-100"]
    assert match_path("checkpoint-*", "checkpoint-5") and not match_path("*", "runs/checkpoint-5")
    assert match_path("runs/*", "runs/a") and not match_path("runs/*", "runs/a/b")
