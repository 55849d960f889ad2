"""Loading a task's data and rendering its examples (:mod:`hf_recycle._score.data`), through the
scorer: missing fields, empty data, bad or empty splits, missing files, and ``choice`` targets
given as an option's text or index."""

from __future__ import annotations

import pytest
from score_reference import addition_spec, choice_rows, choice_task, scorer_error

from hf_recycle._score.scorer import TaskScorer


def test_template_field_missing(data_dir, char_tokenizer):
    message = scorer_error(addition_spec(prompt="{quest}="), data_dir, char_tokenizer)
    assert "task 'addition'" in message and "'quest' (in prompt)" in message and "question, answer" in message
    message = scorer_error(
        addition_spec(kind="choice", options="choices", target="{answer}"), data_dir, char_tokenizer
    )
    assert "'choices' (in options)" in message


def test_empty_data(tmp_path, char_tokenizer):
    (tmp_path / "d.jsonl").write_text("")
    assert "task 'addition'" in scorer_error(addition_spec(), tmp_path, char_tokenizer)


def test_split_selecting_nothing(data_dir, char_tokenizer):
    message = scorer_error(addition_spec(search_split="train[10:]"), data_dir, char_tokenizer)
    assert "task 'addition'" in message and "'train[10:]' selects no examples" in message


@pytest.mark.parametrize("split", ["validation", "train[:3", "tr ain"])
def test_invalid_split(data_dir, char_tokenizer, split):
    message = scorer_error(addition_spec(search_split=split), data_dir, char_tokenizer)
    assert f"invalid search_split '{split}'" in message and "task 'addition'" in message


def test_missing_test_split_and_data_file(data_dir, char_tokenizer):
    assert "has no test_split" in scorer_error(addition_spec(), data_dir, char_tokenizer, split="test")
    assert "data not found" in scorer_error(
        addition_spec(data={"path": "json", "data_files": "nope.jsonl"}), data_dir, char_tokenizer
    )


def test_choice_target_not_an_option(data_dir, char_tokenizer):
    message = scorer_error(addition_spec(kind="choice", options="opts"), data_dir, char_tokenizer)
    assert "example 0" in message and "none of the options" in message


def test_choice_target_as_option_text(tmp_path, char_tokenizer, llama_model):
    rows = choice_rows(6, seed=8)
    for row in rows:
        row["answer"] = row["options"][row["label"]]
    by_text = choice_task(tmp_path, rows, prompt="{q}", target="{answer}")
    by_index = by_text.model_copy(update={"target": "{label}"})
    a = TaskScorer(by_text, char_tokenizer, base_dir=tmp_path).score(llama_model)
    b = TaskScorer(by_index, char_tokenizer, base_dir=tmp_path).score(llama_model)
    assert a == b
