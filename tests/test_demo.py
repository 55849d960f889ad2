"""The demo: committed task data match the generator, and a reduced demo runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

from hf_recycle.demo.tasks import TASK_NAMES, TrainingStream, eval_examples, write_task_data

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_committed_data_match_the_generator(tmp_path):
    for path in write_task_data(tmp_path):
        assert path.read_text() == (RECIPES / "data" / path.name).read_text()


def test_training_never_draws_an_evaluation_question():
    held_out = {q for task in TASK_NAMES for q, _ in eval_examples(task)}
    stream = TrainingStream(seed=0)
    prompts = [stream.sample(0.5)[0][:-1] for _ in range(2000)]
    assert not held_out.intersection(prompts)


def test_reduced_demo_runs_end_to_end(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    from hf_recycle.demo.run import run_demo

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)  # the demo serves its own Hub on 127.0.0.1

    result = run_demo(tmp_path / "demo", steps_scale=0.25, trials=20, echo=lambda *_: None)
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["winner"]["test"] is not None
    assert result.push_url and "demo/tiny-lm-recycled" in result.push_url
    kinds = [row["kind"] for row in result.table]
    assert kinds.count("checkpoint") == 8 and kinds[-1] == "merge"
    assert (tmp_path / "demo" / "pareto.png").is_file()
