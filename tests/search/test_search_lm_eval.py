"""A search whose tasks mix an lm-eval task (kind ``lm_eval``) with a datasets task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_recycle.cli import main

REPO = Path(__file__).resolve().parents[2]
# the task YAMLs there name their data relative to the repository root
TASKS = REPO / "tests" / "data" / "lm_eval_tasks"


@pytest.mark.slow
def test_run_mixing_an_lm_eval_task_and_a_datasets_task(llama_pool, tmp_path, monkeypatch):
    """``hf-recycle run``: the search, the final merge and the model card (which names lm-eval's task)."""
    from hf_recycle._merge.engine import merge
    from hf_recycle._score.api import score

    monkeypatch.chdir(REPO)
    _, ckpts = llama_pool
    rows = [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": "lm-eval-search",
        "checkpoints": [str(p) for p in ckpts[:2]],
        "search": {"trials": 3, "sampler": "random", "baselines": ["uniform"]},
        "tasks": [
            {"name": "mc", "kind": "lm_eval", "lm_eval": {"task": "hfr_mc", "num_fewshot": 1, "include_path": str(TASKS)},
             "metric": "acc_norm,none", "search_split": "docs[:8]", "test_split": "docs[8:]"},
            {"name": "sums", "data": {"path": "json", "data_files": str(tmp_path / "data.jsonl")}, "kind": "loglikelihood",
             "prompt": "{q}", "target": "{a}", "search_split": "train[:4]", "test_split": "train[4:]"},
        ],
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["trials"] == 3
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "lm_eval/hfr_mc" in card and "lm_eval task hfr_mc" in card  # model-index and the task table
    # independent check: the uniform baseline's scores are those of the uniform merge written to disk
    merge([str(p) for p in ckpts[:2]], tmp_path / "uniform", device="cpu")
    for split in ("search", "test"):
        report = score(tmp_path / "uniform", path, split=split, device="cpu")
        uniform = results["baselines"]["uniform"][split]
        assert uniform["mc"] == pytest.approx(report.results["mc"].value, abs=1e-12)
        assert uniform["sums"] == pytest.approx(report.results["sums"].value, rel=1e-5)
