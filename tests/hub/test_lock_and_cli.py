"""The lock file and the ``hf-recycle resolve`` command."""

from __future__ import annotations

import json

from hf_recycle import cli
from hf_recycle.hub.lock import LOCK_FILENAME, read_lock, read_lock_base, write_lock
from hf_recycle.hub.resolve import resolve


def test_lock_roundtrip(local_hub, tmp_path):
    pins = resolve(["org/run@step-*", str(local_hub.ckpts[0])], endpoint=local_hub.endpoint)
    path = write_lock(pins[:-1], tmp_path / "out", base=pins[-1])
    assert path == tmp_path / "out" / LOCK_FILENAME
    data = json.loads(path.read_text())
    assert data["hf_recycle_version"]
    assert [e["commit"] for e in data["checkpoints"]] == [
        local_hub.shas[f"org/run@step-{i}"] for i in (1, 2, 10)
    ]
    assert read_lock(path) == pins[:-1]
    assert read_lock_base(tmp_path / "out") == pins[-1]


def test_cli_resolve_json(local_hub, capsys):
    assert (
        cli.main(
            [
                "resolve",
                "org/run@step-*",
                "org/subs@main:checkpoint-10",
                "--endpoint",
                local_hub.endpoint,
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [set(o) for o in out] == [{"repo_id", "revision", "commit", "subfolder", "kind"}] * 4
    assert [o["revision"] for o in out[:3]] == ["step-1", "step-2", "step-10"]
    assert out[0]["subfolder"] is None and out[3]["subfolder"] == "checkpoint-10"
    assert out[1]["commit"] == local_hub.shas["org/run@step-2"]


def test_cli_resolve_table_and_lock(local_hub, capsys, tmp_path):
    assert (
        cli.main(["resolve", "org/run@best", "--endpoint", local_hub.endpoint, "--lock", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "REVISION" in out and local_hub.shas["org/run@step-2"] in out and "best" in out
    assert read_lock(tmp_path)[0].commit == local_hub.shas["org/run@step-2"]


def test_cli_errors_and_token_never_printed(local_hub, capsys, monkeypatch, tmp_path):
    assert cli.main(["resolve", "org/run@nope-*", "--endpoint", local_hub.endpoint]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "org/run@nope-*" in err and "Traceback" not in err
    assert cli.main(["resolve", "org/secret", "--endpoint", local_hub.endpoint]) == 1
    assert "HF_TOKEN" in capsys.readouterr().err
    secret = local_hub.hub.token
    monkeypatch.setenv("HF_TOKEN", secret)
    assert (
        cli.main(
            ["resolve", "org/secret", "--json", "--endpoint", local_hub.endpoint, "--lock", str(tmp_path)]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert secret not in (tmp_path / LOCK_FILENAME).read_text()
