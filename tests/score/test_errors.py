"""Bad task input: clear, typed messages naming the task and the field."""

from __future__ import annotations

import pytest
from score_reference import write_jsonl

from hf_recycle.errors import TaskError
from hf_recycle.score.scorer import TaskResult, TaskScorer, build_scorers, macro_average
from hf_recycle.score.tasks import TaskSpec


def _spec(**kw) -> TaskSpec:
    base = {
        "name": "addition",
        "data": {"path": "json", "data_files": "d.jsonl"},
        "prompt": "{question}=",
        "target": "{answer}",
    }
    return TaskSpec.model_validate({**base, **kw})


@pytest.fixture
def data_dir(tmp_path):
    write_jsonl(
        tmp_path / "d.jsonl",
        [{"question": f"{i}+1", "answer": str(i + 1), "opts": ["a", "b"]} for i in range(5)],
    )
    return tmp_path


def _error(spec, data_dir, tokenizer, split="search") -> str:
    with pytest.raises(TaskError) as info:
        TaskScorer(spec, tokenizer, split=split, base_dir=data_dir)
    return str(info.value)


def test_template_field_missing(data_dir, char_tokenizer):
    message = _error(_spec(prompt="{quest}="), data_dir, char_tokenizer)
    assert "task 'addition'" in message and "'quest' (in prompt)" in message and "question, answer" in message
    message = _error(_spec(kind="choice", options="choices", target="{answer}"), data_dir, char_tokenizer)
    assert "'choices' (in options)" in message


def test_empty_data(tmp_path, char_tokenizer):
    (tmp_path / "d.jsonl").write_text("")
    assert "task 'addition'" in _error(_spec(), tmp_path, char_tokenizer)


def test_split_selecting_nothing(data_dir, char_tokenizer):
    message = _error(_spec(search_split="train[10:]"), data_dir, char_tokenizer)
    assert "task 'addition'" in message and "'train[10:]' selects no examples" in message


@pytest.mark.parametrize("split", ["validation", "train[:3", "tr ain"])
def test_invalid_split(data_dir, char_tokenizer, split):
    message = _error(_spec(search_split=split), data_dir, char_tokenizer)
    assert f"invalid search_split '{split}'" in message and "task 'addition'" in message


def test_missing_test_split_and_data_file(data_dir, char_tokenizer):
    assert "has no test_split" in _error(_spec(), data_dir, char_tokenizer, split="test")
    assert "data not found" in _error(
        _spec(data={"path": "json", "data_files": "nope.jsonl"}), data_dir, char_tokenizer
    )


def test_unknown_metric(data_dir, char_tokenizer):
    assert "unknown metric 'bleurgh'" in _error(_spec(metric="bleurgh"), data_dir, char_tokenizer)


def test_metric_that_rejects_the_predictions(data_dir, char_tokenizer):
    # accuracy takes integer labels; a generate task gives strings: caught when the scorer is built.
    message = _error(_spec(metric="accuracy", target="x{answer}"), data_dir, char_tokenizer)
    assert "metric 'accuracy' failed" in message


def test_choice_target_not_an_option(data_dir, char_tokenizer):
    message = _error(_spec(kind="choice", options="opts"), data_dir, char_tokenizer)
    assert "example 0" in message and "none of the options" in message


def test_chat_template_missing(data_dir, char_tokenizer):
    assert "no chat template" in _error(_spec(chat_template=True), data_dir, char_tokenizer)


def test_context_too_small_for_max_new_tokens(data_dir, char_tokenizer, llama_model):
    scorer = TaskScorer(_spec(max_new_tokens=300), char_tokenizer, base_dir=data_dir)
    with pytest.raises(TaskError, match="leaves no room"):
        scorer.score(llama_model)
    with pytest.raises(TaskError, match="limit must be >= 1"):
        scorer.score(llama_model, limit=0)


def test_build_scorers_and_macro_average(data_dir, char_tokenizer):
    scorers = build_scorers([_spec(), _spec(name="b", weight=3.0)], char_tokenizer, base_dir=data_dir)
    assert [(s.name, s.weight, s.num_examples, s.higher_is_better) for s in scorers] == [
        ("addition", 1.0, 5, True),
        ("b", 3.0, 5, True),
    ]
    a = TaskResult("a", 0.5, (0.5,), True)
    ppl = TaskResult("p", 10.0, (10.0,), False)
    assert macro_average([a, ppl], [3, 1]) == pytest.approx((1.5 - 10.0) / 4)
    assert macro_average({"a": a}, {"a": 2.0}) == 0.5
    with pytest.raises(TaskError, match="no weight"):
        macro_average([a, ppl], {"a": 1.0})
