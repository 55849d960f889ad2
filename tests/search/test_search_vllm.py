"""A search with ``engine: vllm``: each trial's weights reach vLLM, checked against merges on disk.

A trial's search scores must equal ``hf-recycle score --engine vllm`` of the merge that
``hf-recycle merge`` writes for its weights (a fresh vLLM instance loading it from disk), and a
LoRA pool's must equal the ``hf`` engine's on peft's own merge. See tests/vllm_support.py.
"""

from __future__ import annotations

import json

import pytest
from vllm_support import VLLM_OPTIONS, build_vllm_pool, skip_without_vllm

skip_without_vllm()

import torch  # noqa: E402
import yaml  # noqa: E402

from hf_recycle.cli import main  # noqa: E402
from hf_recycle.testing import models  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return build_vllm_pool(tmp_path_factory.mktemp("vllm-search-pool"), seed=3)


def _write_recipe(tmp_path, checkpoints, *, base=None, trials=3):
    """A recipe with a generate, a choice and a loglikelihood task (6 search, 4 test examples each)."""
    letters = "abcdefghij0123456789+= "
    rows = [{"q": letters[i : i + 3 + 4 * i], "a": "x", "options": ["ab", "c d", "eee"], "label": i % 3}
            for i in range(10)]  # fmt: skip
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = {"data": {"path": "json", "data_files": "data.jsonl"}, "search_split": "train[:6]",
              "test_split": "train[6:]"}  # fmt: skip
    recipe = {
        "name": "vllm-search",
        "checkpoints": [str(p) for p in checkpoints],
        "search": {"trials": trials, "sampler": "random", "baselines": ["uniform"]},
        "tasks": [
            {"name": "gen", "prompt": "{q}", "target": "{a}", "max_new_tokens": 6, "stop": ["="], **common},
            {"name": "mc", "kind": "choice", "options": "options", "prompt": "{q}:", "target": "{label}", **common},
            {"name": "ll", "kind": "loglikelihood", "prompt": "{q}|", "target": "{q}", **common},
        ],
        "engine": {"name": "vllm", **VLLM_OPTIONS},
        "output": {"dir": str(tmp_path / "out")},
    }  # fmt: skip
    if base is not None:
        recipe["base"] = str(base)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _trials(out):
    """The study's complete trials."""
    import optuna

    study = optuna.load_study(study_name="vllm-search", storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


def _score_cli(folder, recipe, capsys, *extra):
    """``hf-recycle score FOLDER --recipe RECIPE --engine vllm --json``: task name -> value."""
    capsys.readouterr()
    assert main(["score", str(folder), "--recipe", str(recipe), "--engine", "vllm", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)["scores"]


def test_search_scores_equal_vllm_scores_of_the_merges_on_disk(pool, tmp_path, capsys):
    _, ckpts = pool
    recipe = _write_recipe(tmp_path, ckpts)
    assert main(["search", str(recipe), "--engine", "vllm", "--json"]) == 0, capsys.readouterr().err
    trials = _trials(tmp_path / "out")
    assert len(trials) == 3
    uniform = next(t for t in trials if t.user_attrs.get("baseline") == "uniform")
    other = next(t for t in trials if t is not uniform)
    assert other.user_attrs["weights"][0] != pytest.approx(uniform.user_attrs["weights"][0], abs=1e-3)
    for trial in (uniform, other):
        merged = tmp_path / f"merge-{trial.number}"
        weights = ",".join(repr(w) for w in trial.user_attrs["weights"][0])  # one group: granularity model
        args = [
            "merge",
            *map(str, ckpts),
            "--output",
            str(merged),
            "--weights",
            weights,
            "--dtype",
            "float32",
        ]
        assert main(args) == 0, capsys.readouterr().err
        scores = _score_cli(merged, recipe, capsys)
        assert scores == pytest.approx(trial.user_attrs["scores"], rel=1e-4, abs=1e-5), trial.number
    assert len({json.dumps(t.user_attrs["scores"]) for t in trials}) > 1  # the weights change the scores
    # the uniform baseline's test split, which the search scored for its report with the same instance
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    test_scores = _score_cli(tmp_path / f"merge-{uniform.number}", recipe, capsys, "--split", "test")
    reported = results["baselines"]["uniform"]["test"]  # the task values and their mean
    assert {name: reported[name] for name in test_scores} == pytest.approx(test_scores, rel=1e-4, abs=1e-5)


def test_search_over_lora_adapters(pool, tmp_path, capsys):
    """Adapters on q_proj and v_proj: their deltas reach vLLM's fused qkv projection."""
    from hf_recycle._score.api import load_model, score

    base, _ = pool
    adapters = [
        models.build_lora_adapter(base, tmp_path / f"lora-{i}", seed=20 + i, scale=0.3) for i in range(2)
    ]
    recipe = _write_recipe(tmp_path, adapters, base=base, trials=2)
    assert main(["search", str(recipe), "--json"]) == 0, capsys.readouterr().err  # the recipe's engine: vllm
    uniform = next(t for t in _trials(tmp_path / "out") if t.user_attrs.get("baseline") == "uniform")
    # independent: peft's merge of each adapter, averaged, scored by the hf engine
    merged = [_peft_merged(base, a) for a in adapters]
    model = load_model(base, device="cpu", dtype="float32")[0]
    model.load_state_dict({k: (merged[0][k] + merged[1][k]) / 2 for k in merged[0]})
    report = score(model, recipe, engine="hf")
    expected = {name: r.value for name, r in report.results.items()}
    assert uniform.user_attrs["scores"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # the same loaded model scored by vLLM: its weights are pushed into vLLM's own model
    report = score(model, recipe, engine="vllm")
    assert {name: r.value for name, r in report.results.items()} == pytest.approx(
        expected, rel=1e-4, abs=1e-5
    )


def _peft_merged(base, adapter):
    """peft's own full weights of ``base`` + ``adapter`` (from_pretrained + merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}
