"""``hf-recycle search`` end to end with the real TaskScorer, and two workers on one PostgreSQL study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from synthetic import write_sums_recipe

from hf_recycle.cli import main


def _write_recipe(tmp_path, ckpts, trials, **search):
    return write_sums_recipe(tmp_path, ckpts, name="cli-search", trials=trials, **search)


@pytest.mark.slow
def test_cli_search_with_real_task_scorer(llama_pool, tmp_path, capsys):
    from hf_recycle._merge.engine import merge
    from hf_recycle._score.scorer import TaskScorer
    from hf_recycle.recipe import Recipe
    from hf_recycle.testing.models import build_char_tokenizer

    _, ckpts = llama_pool
    ckpts = ckpts[:2]
    recipe_path = _write_recipe(tmp_path, ckpts, trials=4)
    assert main(["search", str(recipe_path), "--json"]) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["trials"] == 4 and set(results["baselines"]) == {"uniform", "best_single", "greedy_soup"}
    # the pins are written next to the results, in the format merge and run write
    from hf_recycle.hub.lock import read_lock, read_lock_base

    lock = json.loads((tmp_path / "out" / "checkpoints.lock.json").read_text())
    assert lock["format"] == 1 and lock["base"] is None
    assert [c["path"] for c in lock["checkpoints"]] == [str(p.resolve()) for p in ckpts]
    assert [p.to_json() for p in read_lock(tmp_path / "out")] == [
        {k: v for k, v in c.items() if k != "spec"} for c in results["checkpoints"]
    ]
    assert read_lock_base(tmp_path / "out") is None
    assert "complete trials" not in capsys.readouterr().out.splitlines()[0]
    # independent check: the uniform baseline's scores equal those of the streamed uniform merge
    from transformers import AutoModelForCausalLM

    merge([str(p) for p in ckpts], tmp_path / "uniform", device="cpu")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "uniform")
    spec = Recipe.from_yaml(recipe_path).tasks[0]
    tok = build_char_tokenizer()
    for split in ("search", "test"):
        value = TaskScorer(spec, tok, split, base_dir=tmp_path).score(model).value
        assert results["baselines"]["uniform"][split]["sums"] == pytest.approx(value, rel=1e-5)
    # rerun: nothing to do, same study; --trials 0 is a user error
    assert main(["search", str(recipe_path)]) == 0
    assert main(["search", str(recipe_path), "--trials", "0"]) == 1
    assert "trials must be a positive number" in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.parametrize("n_workers", [2, 3])
def test_workers_share_one_postgres_study(llama_pool, tmp_path, n_workers):
    url = os.environ.get("HF_RECYCLE_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("HF_RECYCLE_TEST_POSTGRES_URL is not set: no PostgreSQL server to share a study on")
    import optuna

    _, ckpts = llama_pool
    recipe_path = _write_recipe(tmp_path, ckpts, trials=12)
    study = f"two-workers-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    base = [
        sys.executable,
        "-m",
        "hf_recycle",
        "-q",
        "search",
        str(recipe_path),
        "--storage",
        url,
        "--study",
        study,
    ]
    from hf_recycle._search.api import create_study

    assert create_study(recipe_path, storage=url, study=study) == study  # once, before the workers
    workers = [
        subprocess.Popen(
            [*base, "--output", str(tmp_path / f"w{i}")], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(n_workers)
    ]
    for proc in workers:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    trials = optuna.load_study(study_name=study, storage=url).get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 12  # exactly the budget, however many workers finish together
    assert not [t for t in trials if t.state.name in ("RUNNING", "FAIL")]
    baselines = [
        t.user_attrs["baseline"] for t in complete if t.user_attrs.get("baseline") in ("uniform", "single")
    ]
    assert sorted(baselines) == ["single", "single", "single", "uniform"]
    for i in range(n_workers):
        assert json.loads((tmp_path / f"w{i}" / "results.json").read_text())["trials"] == 12
