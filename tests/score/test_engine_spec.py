"""The recipe's ``engine:`` section, ``--engine``, and the ``vllm`` engine's errors where vLLM is absent."""

from __future__ import annotations

import importlib.util

import pytest

from hf_recycle._score.engine_spec import EngineSpec, load_engine_spec
from hf_recycle._score.engines import get_engine
from hf_recycle.cli import main
from hf_recycle.errors import MissingDependencyError, RecipeError, TaskError
from hf_recycle.recipe import Recipe

TASK = """\
tasks:
  - name: t
    data: {path: json, data_files: d.jsonl}
    prompt: "{question}"
    target: "{answer}"
"""


def test_recipe_engine_defaults_to_hf_and_takes_the_engines_options():
    assert Recipe.from_text("name: r\n" + TASK).engine == EngineSpec(name="hf")
    text = "name: r\n" + TASK + "engine: {name: vllm, gpu_memory_utilization: 0.5, max_model_len: 512}\n"
    engine = Recipe.from_text(text).engine
    assert engine.name == "vllm" and engine.options == {"gpu_memory_utilization": 0.5, "max_model_len": 512}


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("{name: tgi}", "engine.name: Input should be 'hf' or 'vllm'"),
        (
            "{name: vllm, gpu_memory: 0.5}",
            "engine: engine 'vllm' has no option 'gpu_memory' (its options: dtype, enforce_eager, gpu_memory_utilization",
        ),
        ("{name: vllm, enforce_eager: 1}", "engine: engine option 'enforce_eager' must be bool, got 1"),
        ("{name: vllm, max_model_len: true}", "engine: engine option 'max_model_len' must be int, got True"),
        ("{max_model_len: 512}", "engine: engine 'hf' has no option 'max_model_len' (its options: none)"),
    ],
)
def test_recipe_engine_problems_name_the_line(engine, message):
    text = "name: r\n" + TASK + f"engine: {engine}\n"
    with pytest.raises(RecipeError) as info:
        Recipe.from_text(text, source="r.yaml")
    assert f"r.yaml:7: {message}" in str(info.value)


def test_engine_flag_replaces_the_name(tmp_path):
    spec = EngineSpec(name="vllm", dtype="float32")
    assert spec.named(None) is spec and spec.named("vllm") is spec
    assert spec.named("hf") == EngineSpec(name="hf")  # another engine: the options were vllm's
    assert EngineSpec().named("vllm").options == {}
    with pytest.raises(TaskError, match="unknown scoring engine 'tgi': use one of hf, vllm"):
        spec.named("tgi")
    # score reads a tasks-only recipe's engine: section too, with its line on errors
    path = tmp_path / "tasks.yaml"
    path.write_text(TASK + "engine: {name: vllm, dtype: float32}\n")
    assert load_engine_spec(path) == spec
    path.write_text(TASK + "engine:\n  name: vllm\n  dtype: 16\n")
    with pytest.raises(TaskError, match=r"tasks.yaml:6: engine: engine option 'dtype' must be str, got 16"):
        load_engine_spec(path)
    path.write_text(TASK)
    assert load_engine_spec(path) == EngineSpec()


def test_cli_engine_choices_come_from_the_registry(capsys):
    with pytest.raises(SystemExit) as info:
        main(["score", "m", "--recipe", "r.yaml", "--engine", "tgi"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --engine: invalid choice: 'tgi'" in err and "hf" in err and "vllm" in err


def test_vllm_engine_needs_a_model_folder(char_tokenizer):
    with pytest.raises(TaskError, match="the vllm engine needs the folder of the model to score"):
        get_engine("vllm").build(char_tokenizer, [], "search")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_says_how_to_install_it(llama_pool, tmp_path, capsys):
    base, _ = llama_pool
    (tmp_path / "d.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TASK)
    with pytest.raises(
        MissingDependencyError, match="the scoring engine 'vllm' needs the package 'vllm': make install-vllm"
    ):
        from hf_recycle._score.api import score

        score(base, recipe, engine="vllm")
    assert main(["score", str(base), "--recipe", str(recipe), "--engine", "vllm"]) == 1
    assert "make install-vllm" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
@pytest.mark.parametrize("command", ["search", "run"])
def test_engine_flag_reaches_the_search(command, llama_pool, tmp_path, capsys):
    """``--engine vllm`` on search and run builds the vllm engine (here: the advice to install it)."""
    _, ckpts = llama_pool
    (tmp_path / "d.jsonl").write_text('{"question": "1+1", "answer": "2"}\n')
    recipe = tmp_path / "r.yaml"
    checkpoints = "".join(f"  - {p}\n" for p in ckpts[:2])
    recipe.write_text(
        f"name: r\ncheckpoints:\n{checkpoints}search: {{trials: 2, baselines: [uniform]}}\noutput: {{dir: {tmp_path / 'out'}}}\n"
        + TASK
    )
    assert main([command, str(recipe), "--engine", "vllm"]) == 1
    assert "the scoring engine 'vllm' needs the package 'vllm': make install-vllm" in capsys.readouterr().err
