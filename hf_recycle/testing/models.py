"""Tiny random models and tokenizers, saved like real checkpoints, for tests and demos.

The builders write folders that look exactly like ``save_pretrained`` output (they are
``save_pretrained`` output): ``config.json``, ``generation_config.json``, tokenizer
files, and ``model.safetensors`` or sharded ``model-*.safetensors`` with an index.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

# Character vocabulary of the tiny tokenizer: special tokens, then printable ASCII.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.digits + string.ascii_letters + string.punctuation + " \n")
VOCAB_SIZE = 128  # >= len(SPECIAL_TOKENS) + len(CHARS); padded for nicer shapes


def build_char_tokenizer(model_max_length: int = 256):
    """A character-level ``PreTrainedTokenizerFast`` (one token per character), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def tiny_llama_config(**overrides: Any):
    """Config of a ~60k-parameter Llama with untied embeddings."""
    from transformers import LlamaConfig

    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_gpt2_config(**overrides: Any):
    """Config of a tiny GPT-2 (Conv1D layers, tied embeddings)."""
    from transformers import GPT2Config

    kwargs: dict[str, Any] = dict(
        vocab_size=VOCAB_SIZE,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def build_model(config, seed: int = 0):
    """A randomly initialised causal LM for ``config`` (deterministic for ``seed``)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Default init leaves some tensors (norms, biases) constant; make every tensor distinct
    # per seed so that merge tests see real differences everywhere.
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.02)
    return model.eval()


def save_checkpoint(
    model,
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = None,
    tokenizer=None,
) -> Path:
    """Save ``model`` in ``dtype`` with ``save_pretrained`` (safetensors), plus a tokenizer."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = model.to(dtype)
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(path, **kwargs)
    (tokenizer or build_char_tokenizer()).save_pretrained(path)
    return path


def perturb(model, scale: float, seed: int):
    """A copy-free in-place perturbation: every parameter += scale * N(0, 1) (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen, dtype=torch.float32).to(param.dtype) * scale)
    return model


def build_pool(
    root: str | Path,
    arch: str = "llama",
    n: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | int | None = None,
    scale: float = 0.05,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Path, list[Path]]:
    """A base checkpoint and ``n`` fine-tunes of it (base + independent noise).

    Returns ``(base_dir, [ckpt_dir, ...])`` under ``root`` (``base``, ``ckpt-0``...).
    """
    root = Path(root)
    config_fn = {"llama": tiny_llama_config, "gpt2": tiny_gpt2_config}[arch]
    config = config_fn(**(config_overrides or {}))
    base = build_model(config, seed=seed)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    base_dir = save_checkpoint(base, root / "base", dtype=dtype, max_shard_size=max_shard_size)
    ckpts: list[Path] = []
    for i in range(n):
        base.load_state_dict(base_state)
        perturb(base.float(), scale, seed=seed * 1000 + i + 17)
        ckpts.append(save_checkpoint(base, root / f"ckpt-{i}", dtype=dtype, max_shard_size=max_shard_size))
        base = base.float()
    return base_dir, ckpts


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a saved checkpoint folder (single file or sharded), as saved."""
    from safetensors.torch import load_file

    path = Path(path)
    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(file))
    return state


def weights_files(path: str | Path) -> Sequence[Path]:
    """The safetensors files of a checkpoint folder, sorted."""
    return sorted(Path(path).glob("*.safetensors"))


def build_lora_adapter(
    base_dir: str | Path,
    path: str | Path,
    *,
    r: int = 4,
    lora_alpha: float = 8,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 0,
    scale: float = 0.1,
    dtype: torch.dtype = torch.float32,
    base_model_name_or_path: str | None = None,
    **lora_kwargs: Any,
) -> Path:
    """A real PEFT LoRA adapter over the checkpoint in ``base_dir``, saved with ``save_pretrained``.

    The base is loaded with transformers, wrapped with ``peft.get_peft_model`` and every
    LoRA factor (and ``modules_to_save`` copy) is set to ``scale * N(0, 1)`` noise so that
    ΔW ≠ 0. ``lora_kwargs`` go to ``peft.LoraConfig`` (``use_rslora``, ``rank_pattern``,
    ``alpha_pattern``, ``modules_to_save``, ``fan_in_fan_out``, ``bias``, ``use_dora``...).

    Returns:
        ``path``, holding ``adapter_config.json`` and ``adapter_model.safetensors``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=list(target_modules), **lora_kwargs)
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if param.requires_grad:  # LoRA factors, modules_to_save copies, trainable biases
                noise = torch.randn(param.shape, generator=gen) * scale
                if "lora_" in name:
                    param.copy_(noise)
                else:
                    param.add_(noise)
    peft_model.to(dtype).save_pretrained(path)
    config_file = path / "adapter_config.json"  # save_pretrained fills in the model's own path
    adapter_config = json.loads(config_file.read_text())
    adapter_config["base_model_name_or_path"] = base_model_name_or_path
    config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    return path


def write_random_lora_adapters(
    shapes: dict[str, Sequence[int]],
    folders: Sequence[str | Path],
    *,
    r: int = 8,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    scale: float = 0.01,
    seed: int = 1,
) -> list[Path]:
    """PEFT-layout LoRA adapters with ``scale * N(0, 1)`` factors, written directly (no model is loaded).

    For benchmarks that need tens of adapters over a large base: :func:`build_lora_adapter`
    loads the base with transformers for each one. ``shapes``: the base's tensor shapes; the
    targeted modules are its ``*.weight`` tensors whose module name is in ``target_modules``.
    ``lora_alpha`` is ``2 * r``; the factors are float32.
    """
    from safetensors.torch import save_file

    modules = sorted(k.rsplit(".", 1)[0] for k in shapes if k.rsplit(".", 2)[-2] in target_modules)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for folder in map(Path, folders):
        folder.mkdir(parents=True)
        tensors = {}
        for module in modules:
            out_f, in_f = shapes[module + ".weight"]
            tensors[f"base_model.model.{module}.lora_A.weight"] = torch.randn(r, in_f, generator=gen) * scale
            tensors[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_f, r, generator=gen) * scale
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": list(target_modules),
                  "task_type": "CAUSAL_LM", "base_model_name_or_path": None}  # fmt: skip
        (folder / "adapter_config.json").write_text(json.dumps(config))
        out.append(folder)
    return out
