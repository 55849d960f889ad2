"""Bad task input: clear, typed messages naming the task and the field."""

from __future__ import annotations

import pytest
from score_reference import addition_spec, scorer_error

from hf_recycle._score.scorer import TaskResult, TaskScorer, build_scorers, macro_average
from hf_recycle.errors import TaskError


def test_unknown_metric(data_dir, char_tokenizer):
    assert "unknown metric 'bleurgh'" in scorer_error(
        addition_spec(metric="bleurgh"), data_dir, char_tokenizer
    )


def test_metric_that_rejects_the_predictions(data_dir, char_tokenizer):
    # accuracy takes integer labels; a generate task gives strings: caught when the scorer is built.
    message = scorer_error(addition_spec(metric="accuracy", target="x{answer}"), data_dir, char_tokenizer)
    assert "metric 'accuracy' failed" in message


def test_chat_template_missing(data_dir, char_tokenizer):
    assert "no chat template" in scorer_error(addition_spec(chat_template=True), data_dir, char_tokenizer)


def test_context_too_small_for_max_new_tokens(data_dir, char_tokenizer, llama_model):
    scorer = TaskScorer(addition_spec(max_new_tokens=300), char_tokenizer, base_dir=data_dir)
    with pytest.raises(TaskError, match="leaves no room"):
        scorer.score(llama_model)
    with pytest.raises(TaskError, match="limit must be >= 1"):
        scorer.score(llama_model, limit=0)


def test_build_scorers_and_macro_average(data_dir, char_tokenizer):
    scorers = build_scorers(
        [addition_spec(), addition_spec(name="b", weight=3.0)], char_tokenizer, base_dir=data_dir
    )
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
