"""``hf_recycle.score`` and ``hf-recycle score`` on a saved tiny checkpoint."""

from __future__ import annotations

import json

import pytest
from score_reference import random_prompts, reference_generate, write_jsonl

from hf_recycle import cli
from hf_recycle._score.api import load_model, score


@pytest.fixture
def recipe(tmp_path):
    prompts = random_prompts(12, seed=21, lengths=(2, 8, 30))
    write_jsonl(tmp_path / "data" / "gen.jsonl", [{"q": p, "a": "x"} for p in prompts])
    rows = [{"q": p, "options": ["ab", "c d", "eee"], "label": i % 3} for i, p in enumerate(prompts)]
    write_jsonl(tmp_path / "data" / "mc.jsonl", rows)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "name: only-tasks\n"
        "tasks:\n"
        "  - name: gen\n"
        "    data: {path: json, data_files: data/gen.jsonl}\n"
        "    search_split: 'train[:8]'\n"
        "    test_split: 'train[8:]'\n"
        "    prompt: '{q}'\n"
        "    target: '{a}'\n"
        "    max_new_tokens: 5\n"
        "  - name: mc\n"
        "    data: {path: json, data_files: data/mc.jsonl}\n"
        "    kind: choice\n"
        "    prompt: '{q}:'\n"
        "    target: '{label}'\n"
        "    options: options\n"
        "    test_split: 'train[6:]'\n"
        "    search_split: 'train[:6]'\n"
        "    weight: 3\n"
    )
    return path, prompts


def test_score_api_on_a_folder(llama_pool, recipe):
    base, _ = llama_pool
    path, prompts = recipe
    report = score(base, path, split="test")
    assert list(report.results) == ["gen", "mc"]
    gen, mc = report.results["gen"], report.results["mc"]
    assert len(gen.per_example) == 4 and len(mc.per_example) == 6
    model, tokenizer = load_model(base)
    assert list(gen.predictions) == [reference_generate(model, tokenizer, p, 5) for p in prompts[8:]]
    assert report.mean == pytest.approx((gen.value + 3 * mc.value) / 4)
    assert report.to_json() == {"scores": {"gen": gen.value, "mc": mc.value}, "mean": report.mean}
    # A loaded model works too, and limit scores the first examples.
    again = score(model, path, tokenizer=tokenizer, limit=2)
    assert [len(r.per_example) for r in again.results.values()] == [2, 2]


def test_cli_json(llama_pool, recipe, capsys):
    base, _ = llama_pool
    path, _ = recipe
    assert cli.main(["score", str(base), "--recipe", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"scores", "mean"} and set(out["scores"]) == {"gen", "mc"}
    expected = score(base, path).to_json()
    assert out == expected
    assert cli.main(["score", str(base), "--recipe", str(path), "--split", "test"]) == 0
    text = capsys.readouterr().out
    assert "gen" in text and "mean" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["./no/such/model"], "does not exist"),
        (None, "no test_split"),
        (None, "no field 'qq'"),
    ],
)
def test_cli_errors_without_traceback(llama_pool, recipe, tmp_path, capsys, args, message):
    base, _ = llama_pool
    path, _ = recipe
    argv = ["score", *(args or [str(base)]), "--recipe", str(path)]
    if message == "no test_split":
        path.write_text(path.read_text().replace("    test_split: 'train[8:]'\n", ""))
        argv += ["--split", "test"]
    if message == "no field 'qq'":
        path.write_text(path.read_text().replace("prompt: '{q}'", "prompt: '{qq}'"))
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: " in err and message in err and "Traceback" not in err
