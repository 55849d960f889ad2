"""``hf-recycle merge`` with Hub specs against the local server, and its lock file."""

from __future__ import annotations

import torch

from hf_recycle import cli
from hf_recycle.hub.lock import read_lock
from hf_recycle.testing import models


def test_cli_merge_hub_specs_writes_lock(local_hub, tmp_path):
    out = tmp_path / "merged"
    assert (
        cli.main(["merge", "org/run@step-1", "org/run@step-2", "--output", str(out), "--dtype", "float32"])
        == 0
    )
    pins = read_lock(out)
    assert [(p.repo_id, p.revision, p.commit) for p in pins] == [
        ("org/run", "step-1", local_hub.shas["org/run@step-1"]),
        ("org/run", "step-2", local_hub.shas["org/run@step-2"]),
    ]
    a, b = (models.load_state_dict(p) for p in local_hub.ckpts[:2])
    merged = models.load_state_dict(out)
    for key, value in merged.items():
        torch.testing.assert_close(value, (a[key] + b[key]) / 2)


def test_merge_api_expands_globs(local_hub, tmp_path):
    from hf_recycle._merge.engine import merge

    merge(["org/run@step-*"], tmp_path / "m", endpoint=local_hub.endpoint, weights=[1, 0, 0])
    pins = read_lock(tmp_path / "m")
    assert [p.revision for p in pins] == ["step-1", "step-2", "step-10"]
    first = models.load_state_dict(local_hub.ckpts[0])
    for key, value in models.load_state_dict(tmp_path / "m").items():
        torch.testing.assert_close(value, first[key])
