"""Which checkpoints merge tensor by tensor (:mod:`hf_recycle._merge.compat`), through the public merge:
tied and untied heads, and the errors for different architectures, tensor names and shapes."""

from __future__ import annotations

import json

import pytest
import torch
from merge_reference import assert_state_close, copy_checkpoint, f32_states, ref_task_vectors

from hf_recycle._merge.engine import merge
from hf_recycle.errors import IncompatibleCheckpointsError, ShapeMismatchError
from hf_recycle.testing import models


def test_tied_in_tied_out(gpt2_pool, tmp_path):
    base, ckpts = gpt2_pool
    merge(ckpts, tmp_path / "out", method="task_arithmetic", base=base)
    got = models.load_state_dict(tmp_path / "out")
    assert "lm_head.weight" not in got
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    assert_state_close(got, ref_task_vectors(f32_states(ckpts), f32_states([base])[0], [1 / 3] * 3))


def test_tied_and_untied_give_untied_output(gpt2_pool, gpt2_untied, tmp_path):
    _, ckpts = gpt2_pool
    merge([ckpts[0], gpt2_untied], tmp_path / "out", weights=[0.25, 0.75])
    got = models.load_state_dict(tmp_path / "out")
    tied, untied = f32_states([ckpts[0], gpt2_untied])
    torch.testing.assert_close(
        got["lm_head.weight"], 0.25 * tied["transformer.wte.weight"] + 0.75 * untied["lm_head.weight"]
    )
    torch.testing.assert_close(
        got["transformer.wte.weight"],
        0.25 * tied["transformer.wte.weight"] + 0.75 * untied["transformer.wte.weight"],
    )
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(model.lm_head.weight, got["lm_head.weight"])


def test_different_architectures(llama_pool, gpt2_pool, tmp_path):
    with pytest.raises(
        IncompatibleCheckpointsError, match="different architectures.*LlamaForCausalLM.*GPT2LMHeadModel"
    ):
        merge([llama_pool[1][0], gpt2_pool[1][0]], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_different_key_sets_lists_what_is_missing_where(llama_pool, tmp_path):
    _, ckpts = llama_pool

    def drop(state):
        del state["model.layers.1.self_attn.q_proj.weight"]
        state["extra.weight"] = torch.zeros(2)
        return state

    odd = copy_checkpoint(ckpts[1], tmp_path / "odd", drop)
    with pytest.raises(IncompatibleCheckpointsError) as info:
        merge([ckpts[0], odd], tmp_path / "out")
    message = str(info.value)
    assert "lacks 1 tensor(s)" in message and "'model.layers.1.self_attn.q_proj.weight'" in message
    assert "has 1 tensor(s)" in message and "'extra.weight'" in message and str(odd) in message


def test_shape_mismatch_names_tensor_shapes_and_checkpoints(llama_pool, tmp_path):
    _, ckpts = llama_pool

    def grow(state):
        state["model.embed_tokens.weight"] = torch.zeros(130, 32)
        return state

    big = copy_checkpoint(ckpts[1], tmp_path / "big", grow)
    with pytest.raises(ShapeMismatchError) as info:
        merge([ckpts[0], big], tmp_path / "out")
    message = str(info.value)
    assert "shape" in message and "'model.embed_tokens.weight'" in message
    assert f"(128, 32) in '{ckpts[0]}'" in message and f"(130, 32) in '{big}'" in message
