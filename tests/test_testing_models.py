"""The fixtures' model builders: directly written LoRA adapters read as PEFT would."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from hf_recycle._merge.inputs import open_inputs
from hf_recycle.testing import models


def test_random_lora_adapters_are_read_with_peft_scaling(llama_pool, tmp_path):
    base_dir, _ = llama_pool
    shapes = {k: tuple(v.shape) for k, v in models.load_state_dict(base_dir).items()}
    folders = models.write_random_lora_adapters(shapes, [tmp_path / "a", tmp_path / "b"], r=4)
    inputs = open_inputs([str(f) for f in folders], base=str(base_dir))
    adapter = inputs.checkpoints[0]
    changed = {k for k in shapes if adapter.changes(k)}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    key = sorted(changed)[0]
    module = key.removesuffix(".weight")
    raw = load_file(str(folders[0] / "adapter_model.safetensors"))
    a, b = raw[f"base_model.model.{module}.lora_A.weight"], raw[f"base_model.model.{module}.lora_B.weight"]
    torch.testing.assert_close(adapter.delta(key), (8 / 4) * b @ a)  # lora_alpha / r = 2
    assert not torch.equal(raw[f"base_model.model.{module}.lora_A.weight"],
                           load_file(str(folders[1] / "adapter_model.safetensors"))[f"base_model.model.{module}.lora_A.weight"])  # fmt: skip
