"""``hf-recycle merge`` on the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from merge_reference import assert_state_close, f32_states, ref_linear, ref_task_vectors, ref_topk

from hf_recycle import cli
from hf_recycle.testing import models


def test_merge_cli_ties(llama_pool, tmp_path, capsys):
    base, ckpts = llama_pool
    out = tmp_path / "out"
    argv = ["merge", *map(str, ckpts), "--base", str(base), "--output", str(out), "--method", "ties"]
    argv += [
        "--weights",
        "0.5,0.3,0.2",
        "--density",
        "0.4",
        "--lambda",
        "0.9",
        "--no-normalize",
        "--dtype",
        "float32",
    ]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    want = ref_task_vectors(
        f32_states(ckpts), f32_states([base])[0], [0.5, 0.3, 0.2], lam=0.9, consensus=True,
        sparsify=lambda d, i, k: ref_topk(d, 0.4),
    )  # fmt: skip
    assert_state_close(models.load_state_dict(out), want)
    params = json.loads((out / "merge_config.json").read_text())["parameters"]
    assert params["density"] == 0.4 and params["lambda"] == 0.9 and params["normalize"] is False


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--weights", "1,2"], ["2 weights for 3 checkpoints"]),
        (["--weights", "a,b,c"], ["comma-separated"]),
        (["--method", "ties", "--density", "0"], ["density must be in (0, 1]"]),
        (["--method", "ties"], ["--base"]),
    ],
)
def test_merge_cli_bad_input_one_paragraph_no_traceback(llama_pool, tmp_path, capsys, extra, words):
    _, ckpts = llama_pool
    status = cli.main(["merge", *map(str, ckpts), "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: ") and "Traceback" not in err
    assert all(w in err.replace("\n  ", " ") for w in words), err
    assert not (tmp_path / "out").exists()


def test_merge_cli_existing_output(llama_pool, tmp_path, capsys):
    _, ckpts = llama_pool
    (tmp_path / "out").mkdir()
    assert cli.main(["merge", *map(str, ckpts), "--output", str(tmp_path / "out")]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["merge", *map(str, ckpts), "--output", str(tmp_path / "out"), "--overwrite"]) == 0


def test_merge_cli_process_imports_only_what_it_needs(llama_pool, tmp_path):
    """A whole ``hf-recycle merge`` process: right output, and no peft/evaluate/datasets/transformers loaded."""
    _, ckpts = llama_pool
    out = tmp_path / "out"
    code = (
        "import sys; from hf_recycle.cli import main; "
        f"status = main(['-q', 'merge', *{[str(c) for c in ckpts]!r}, '--output', {str(out)!r}, '--max-shard-size', '50KB']); "
        "print('HEAVY:' + ','.join(m for m in ('peft', 'evaluate', 'datasets', 'transformers', 'optuna') if m in sys.modules)); "
        "sys.exit(status)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY:"
    assert (out / "model.safetensors.index.json").exists()
    assert_state_close(models.load_state_dict(out), ref_linear(f32_states(ckpts), [1, 1, 1]))


def test_merge_cli_debug_shows_traceback(llama_pool, tmp_path):
    _, ckpts = llama_pool
    with pytest.raises(Exception, match="weights"):
        cli.main(["--debug", "merge", *map(str, ckpts), "--output", str(tmp_path / "o"), "--weights", "1"])
