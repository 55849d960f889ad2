"""``--endpoint`` on every command that resolves Hub specs, against the local Hub server.

The default endpoint (huggingface_hub's, from ``HF_ENDPOINT``) is pointed at a closed
port here, so a command only reaches the served repos when ``--endpoint`` routes it there.
"""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml

from hf_recycle import cli
from hf_recycle.hub.lock import read_lock
from hf_recycle.testing import models

DEAD_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused


@pytest.fixture
def hub_elsewhere(populated_hub, monkeypatch):
    """The populated server online, while huggingface_hub's default endpoint leads nowhere."""
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", DEAD_ENDPOINT)
    monkeypatch.setattr(
        c, "HUGGINGFACE_CO_URL_TEMPLATE", DEAD_ENDPOINT + "/{repo_id}/resolve/{revision}/{filename}"
    )
    return populated_hub


HUB_COMMANDS = ["resolve", "merge", "score", "search", "run", "push"]


@pytest.mark.parametrize("command", HUB_COMMANDS)
def test_every_hub_command_takes_endpoint(command):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    option = next((a for a in sub._actions if "--endpoint" in a.option_strings), None)
    assert option is not None and option.default is None and option.metavar == "URL"
    assert "HF_ENDPOINT" in option.help


def test_merge_endpoint_routes_hub_specs(hub_elsewhere, tmp_path, capsys):
    specs = ["org/run@step-1", "org/run@step-10"]
    assert cli.main(["merge", *specs, "--output", str(tmp_path / "no"), "--dtype", "float32"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "org/run@step-1" in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()

    out = tmp_path / "merged"
    argv = ["merge", *specs, "--weights", "0.25,0.75", "--dtype", "float32", "--output", str(out)]
    assert cli.main([*argv, "--endpoint", hub_elsewhere.endpoint]) == 0
    assert [(p.repo_id, p.revision, p.commit) for p in read_lock(out)] == [
        ("org/run", "step-1", hub_elsewhere.shas["org/run@step-1"]),
        ("org/run", "step-10", hub_elsewhere.shas["org/run@step-10"]),
    ]
    a, c = (models.load_state_dict(hub_elsewhere.ckpts[i]) for i in (0, 2))
    merged = models.load_state_dict(out)
    assert set(merged) == set(a)
    for key, value in merged.items():
        torch.testing.assert_close(value, 0.25 * a[key] + 0.75 * c[key])


def test_merge_endpoint_also_serves_the_base(hub_elsewhere, tmp_path):
    out = tmp_path / "ta"
    argv = ["merge", "org/run@step-2", "--base", "org/run@step-1", "--method", "task_arithmetic"]
    argv += [
        "--lambda",
        "2",
        "--dtype",
        "float32",
        "--output",
        str(out),
        "--endpoint",
        hub_elsewhere.endpoint,
    ]
    assert cli.main(argv) == 0
    base, ft = (models.load_state_dict(hub_elsewhere.ckpts[i]) for i in (0, 1))
    for key, value in models.load_state_dict(out).items():
        torch.testing.assert_close(value, base[key] + 2 * (ft[key] - base[key]))


def test_search_create_only_endpoint_pins_hub_checkpoints(hub_elsewhere, tmp_path, capsys):
    recipe = {
        "name": "hub-search",
        "checkpoints": ["org/run@step-*"],
        "tasks": [  # checked before anything is resolved, not loaded by --create-only
            {
                "name": "t",
                "data": {"path": "json", "data_files": "data.jsonl"},
                "prompt": "{q}",
                "target": "{a}",
            }
        ],
        "output": {"dir": str(tmp_path / "out")},
    }
    (tmp_path / "data.jsonl").write_text('{"q": "1+1=", "a": "2"}\n')
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(["search", str(path), "--create-only"]) == 1  # the default endpoint is dead
    assert "cannot reach the Hub at http://127.0.0.1:9" in capsys.readouterr().err
    assert cli.main(["search", str(path), "--create-only", "--endpoint", hub_elsewhere.endpoint]) == 0
    assert f"hf-recycle search {path} --study hub-search" in capsys.readouterr().err
    study = optuna.load_study(study_name="hub-search", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert study.user_attrs["hf_recycle"]["checkpoints"] == [
        f"org/run@{hub_elsewhere.shas[f'org/run@step-{n}']}" for n in (1, 2, 10)
    ]
