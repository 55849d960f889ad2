"""LoRA adapters as merge inputs (base + ΔW) and the ``--output-format lora`` writer.

Every expectation comes from peft itself: ``PeftModel.from_pretrained(...).merge_and_unload()``
gives each adapter's full weights, and the merged adapter is loaded back with
``PeftModel.from_pretrained`` to compare logits.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from hf_recycle._merge.adapter_config import adapter_base_spec, is_adapter_folder
from hf_recycle._merge.lora import LoraSource, SharedBase
from hf_recycle._merge.lora_output import delta_coefficients, parse_lora_rank, write_lora_merge
from hf_recycle._merge.methods import get_method, resolve_params
from hf_recycle._merge.sources import SafetensorsSource
from hf_recycle.errors import (
    AdapterBaseError,
    CheckpointFormatError,
    IncompatibleCheckpointsError,
    MergeConfigError,
    PickleRefusedError,
    ShapeMismatchError,
    UnsupportedAdapterError,
)
from hf_recycle.testing import models

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

LLAMA_ADAPTERS = {
    # rank_pattern/alpha_pattern, an embedding target, modules_to_save
    "a": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "embed_tokens", "down_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"down_proj": 3},
        modules_to_save=["lm_head"],
        seed=11,
    ),
    # rslora, a larger rank
    "b": dict(r=8, lora_alpha=4, target_modules=["q_proj", "o_proj", "gate_proj"], use_rslora=True, seed=12),
    # rank 2, overlapping targets
    "c": dict(r=2, lora_alpha=2, target_modules=["q_proj", "k_proj", "down_proj"], seed=13),
}
GPT2_ADAPTERS = {
    # Conv1D (fan_in_fan_out), trained biases, the (tied) token embedding
    "g": dict(
        r=4,
        lora_alpha=8,
        target_modules=["c_attn", "c_proj", "wte"],
        fan_in_fan_out=True,
        bias="all",
        seed=21,
    ),
    "h": dict(r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, seed=22),
}


@pytest.fixture(scope="module")
def lora_env(tmp_path_factory) -> dict[str, Path]:
    """Llama and GPT-2 bases, one full fine-tune each, and real peft adapters over them."""
    root = tmp_path_factory.mktemp("lora")
    env: dict[str, Path] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env["llama_base"], (env["llama_full"],) = models.build_pool(root / "llama", "llama", n=1, seed=5)
        env["gpt2_base"], (env["gpt2_full"],) = models.build_pool(root / "gpt2", "gpt2", n=1, seed=6)
        for name, kwargs in LLAMA_ADAPTERS.items():
            env[name] = models.build_lora_adapter(env["llama_base"], root / f"lora-{name}", **kwargs)
        for name, kwargs in GPT2_ADAPTERS.items():
            env[name] = models.build_lora_adapter(env["gpt2_base"], root / f"lora-{name}", **kwargs)
    return env


def _base_of(name: str) -> str:
    return "gpt2_base" if name in GPT2_ADAPTERS else "llama_base"


def _load_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _peft_merged(env: dict[str, Path], name: str) -> dict[str, torch.Tensor]:
    """peft's own full weights for adapter ``name``: from_pretrained + merge_and_unload."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(_load_model(env[_base_of(name)]), env[name])
        return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def _open(env: dict[str, Path], names: list[str]) -> tuple[SharedBase, list[LoraSource]]:
    base = SharedBase(SafetensorsSource(env[_base_of(names[0])]))
    return base, [LoraSource(env[n], base) for n in names]


def _logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(4, models.VOCAB_SIZE, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


# --- LoraSource ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "b", "c", "g", "h"])
def test_source_equals_peft_merge_and_unload(lora_env, name):
    expected = _peft_merged(lora_env, name)
    base, (source,) = _open(lora_env, [name])
    changed = 0
    for key in source.keys():
        got = source.read(key)
        torch.testing.assert_close(got.float(), expected[key], rtol=0, atol=2e-6, msg=key)
        if source.changes(key):
            changed += 1
            assert got.dtype == torch.float32
            assert not torch.allclose(got, base.read(key).float()), f"{key} unchanged: ΔW is zero"
    assert changed >= 4
    source.close()


def test_source_parses_ranks_scalings_and_layouts(lora_env):
    _, (a, b) = _open(lora_env, ["a", "b"])
    _, (g,) = _open(lora_env, ["g"])
    q0, v0 = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.v_proj.weight"
    assert (a.modules[q0].rank, a.modules[q0].scaling) == (4, 2.0)
    assert (a.modules[v0].rank, a.modules[v0].scaling) == (2, 4.0)  # rank_pattern: 8 / 2
    assert a.modules["model.layers.1.mlp.down_proj.weight"].scaling == 3 / 4  # alpha_pattern
    assert a.modules["model.embed_tokens.weight"].kind == "embedding"
    assert "lm_head.weight" in a.replaced  # modules_to_save
    assert b.modules[q0].scaling == pytest.approx(4 / 8**0.5)  # rslora
    c_attn = g.modules["transformer.h.0.attn.c_attn.weight"]
    assert c_attn.transposed and c_attn.kind == "linear"
    assert "transformer.h.0.attn.c_attn.bias" in g.replaced  # bias="all"


@pytest.mark.parametrize("name", ["a", "g"])
def test_row_blocks_match_whole_tensor(lora_env, name):
    _, (source,) = _open(lora_env, [name])
    for key in [k for k in source.keys() if source.changes(k)]:
        whole = source.read(key)
        rows = whole.shape[0]
        for block in (slice(0, 1), slice(1, rows // 2), slice(rows // 2, rows)):
            torch.testing.assert_close(source.read(key, block), whole[block], rtol=0, atol=1e-6)
        buf = torch.empty((rows - 3, *whole.shape[1:]), dtype=source.dtype(key))
        torch.testing.assert_close(source.read_into(key, buf, slice(3, rows)), whole[3:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["a", "b", "g"])
def test_low_rank_form_is_the_base_plus_u_v(lora_env, name):
    base, (source,) = _open(lora_env, [name])
    seen = set()
    for key in source.keys():
        form = source.low_rank_form(key)
        if form is None:  # saved whole (modules_to_save, bias="all"): read() it
            assert key in source.replaced
            continue
        assert form.base is base
        want = source.read(key).float()
        if form.u is None:
            assert not source.changes(key) and torch.equal(want, base.read(key).float())
            seen.add("unchanged")
        else:
            got = base.read(key).float() + form.u @ form.v
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=key)
            seen.add("delta")
    assert seen == {"unchanged", "delta"}


def test_shared_base_reads_each_tensor_once(lora_env):
    class Counting(SafetensorsSource):
        reads = 0

        def read(self, key, rows=None, device="cpu"):
            Counting.reads += 1
            return super().read(key, rows, device)

    base = SharedBase(Counting(lora_env["llama_base"]))
    sources = [LoraSource(lora_env[n], base) for n in ("a", "b", "c")]
    key = "model.layers.0.self_attn.q_proj.weight"
    for s in sources:
        s.read(key, slice(0, 8))
    assert Counting.reads == 1


# --- bad inputs ---------------------------------------------------------------------------


def test_dora_is_refused_with_reason(lora_env, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = models.build_lora_adapter(lora_env["llama_base"], tmp_path / "dora", use_dora=True)
    with pytest.raises(UnsupportedAdapterError, match=r"DoRA.*not W \+ ΔW.*merge_and_unload"):
        LoraSource(path, SafetensorsSource(lora_env["llama_base"]))


def test_non_lora_peft_type_is_refused(lora_env, tmp_path):
    from peft import IA3Config, get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            _load_model(lora_env["llama_base"]),
            IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]),
        )
        model.save_pretrained(tmp_path / "ia3")
    with pytest.raises(UnsupportedAdapterError, match=r"PEFT IA3, not LORA.*linear weight deltas"):
        LoraSource(tmp_path / "ia3", SafetensorsSource(lora_env["llama_base"]))


def test_adapter_over_the_wrong_base_is_a_shape_error(lora_env, tmp_path):
    other, _ = models.build_pool(tmp_path / "wide", "llama", n=0, config_overrides={"intermediate_size": 48})
    with pytest.raises(ShapeMismatchError, match=r"adapter '.*lora-a' does not fit base.*down_proj.*--base"):
        LoraSource(lora_env["a"], SafetensorsSource(other))
    with pytest.raises(
        IncompatibleCheckpointsError,
        match=r"changes (module|tensor) 'transformer\.h\.0.*no tensor of that name",
    ):
        LoraSource(lora_env["g"], SafetensorsSource(lora_env["llama_base"]))


def test_base_resolution(lora_env, tmp_path):
    assert adapter_base_spec(lora_env["a"], "given/base") == "given/base"
    with pytest.raises(
        AdapterBaseError, match=r"needs the base model.*--base.*names no base_model_name_or_path"
    ):
        adapter_base_spec(lora_env["a"], None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        named = models.build_lora_adapter(
            lora_env["llama_base"], tmp_path / "named", base_model_name_or_path=str(lora_env["llama_base"])
        )
    assert adapter_base_spec(named, None) == str(lora_env["llama_base"])
    assert is_adapter_folder(named) and not is_adapter_folder(lora_env["llama_base"])


def test_pickle_adapter_needs_permission(lora_env, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "adapter_config.json").write_text((lora_env["c"] / "adapter_config.json").read_text())
    state = load_file(lora_env["c"] / "adapter_model.safetensors")
    torch.save(state, folder / "adapter_model.bin")
    base = SafetensorsSource(lora_env["llama_base"])
    with pytest.raises(PickleRefusedError, match="adapter_model.bin"):
        LoraSource(folder, base)
    allowed = LoraSource(folder, base, allow_pickle=True)
    key = "model.layers.0.self_attn.k_proj.weight"
    torch.testing.assert_close(allowed.read(key), LoraSource(lora_env["c"], base).read(key))


def test_rank_disagreeing_with_config_is_a_format_error(lora_env, tmp_path):
    folder = tmp_path / "bad-r"
    folder.mkdir()
    config = json.loads((lora_env["c"] / "adapter_config.json").read_text())
    config["r"] = 3
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(
        (lora_env["c"] / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(CheckpointFormatError, match=r"rank 2 on disk but adapter_config.json gives r=3"):
        LoraSource(folder, SafetensorsSource(lora_env["llama_base"]))


# --- --output-format lora ----------------------------------------------------------------


def _expected_merge(env, names, coefficients) -> dict[str, torch.Tensor]:
    """base + Σ cᵢ(θᵢ − base), with θᵢ from peft's merge_and_unload."""
    from hf_recycle.testing.models import load_state_dict

    base = {k: v.float() for k, v in load_state_dict(env[_base_of(names[0])]).items()}
    merged = {k: v.clone() for k, v in base.items()}
    for c, name in zip(coefficients, names, strict=True):
        theta = _peft_merged(env, name)
        for k in merged:
            merged[k] += c * (theta[k] - base[k])
    return merged


def _model_with(env, base_name: str, state: dict[str, torch.Tensor]):
    model = _load_model(env[base_name])
    model.load_state_dict(state, strict=False)
    return model


def _load_adapter(env, base_name: str, folder: Path):
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PeftModel.from_pretrained(_load_model(env[base_name]), folder).eval()


@pytest.mark.parametrize(
    ("names", "method", "weights", "normalize", "lambda_"),
    [
        (["a", "b", "c"], "linear", [0.5, 0.3, 0.2], None, 1.0),
        (["a", "b", "c"], "linear", [2.0, 1.0, 1.0], None, 1.0),
        (["b", "c"], "task_arithmetic", [0.7, 0.6], None, 0.8),
        (["g", "h"], "linear", [0.25, 0.75], None, 1.0),
    ],
)
def test_exact_lora_output_gives_the_full_merge(
    lora_env, tmp_path, names, method, weights, normalize, lambda_
):
    merge_method = get_method(method)
    params = resolve_params(merge_method, lambda_=lambda_, normalize=normalize)
    coefficients = delta_coefficients(merge_method, weights, params)
    _, sources = _open(lora_env, names)
    report = write_lora_merge(tmp_path, sources, method=merge_method, weights=weights, params=params)
    base_name = _base_of(names[0])
    expected = _expected_merge(lora_env, names, coefficients)

    # exact: rank Σ rᵢ per module, zero truncation error
    q0 = "model.layers.0.self_attn.q_proj" if base_name == "llama_base" else "transformer.h.0.attn.c_attn"
    assert report.modules[q0]["rank"] == sum(s.modules[q0 + ".weight"].rank for s in sources)
    assert all(m["relative_error"] == 0.0 for m in report.modules.values())

    # loaded by peft, the adapter gives the full merge's logits ...
    adapter_model = _load_adapter(lora_env, base_name, tmp_path)
    full_model = _model_with(lora_env, base_name, expected)
    tied_embedding_target = base_name == "gpt2_base" and "g" in names  # tied head sees only the merged ΔW
    if not tied_embedding_target:
        torch.testing.assert_close(_logits(adapter_model), _logits(full_model), rtol=1e-4, atol=1e-5)
    # ... and its merge_and_unload is the full merge, tensor by tensor
    merged = adapter_model.merge_and_unload().state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=5e-6, msg=key)
    torch.testing.assert_close(_logits(_model_with(lora_env, base_name, merged)), _logits(full_model))


def test_peft_add_weighted_adapter_linear_has_cross_terms(lora_env, tmp_path):
    """Why we do not use peft's add_weighted_adapter("linear"): it mixes A and B separately."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = [
            models.build_lora_adapter(
                lora_env["llama_base"], tmp_path / f"same-{i}", r=4, lora_alpha=4, seed=40 + i
            )
            for i in range(2)
        ]
    weights = [0.5, 0.5]
    linear = get_method("linear")
    base = SharedBase(SafetensorsSource(lora_env["llama_base"]))
    out = tmp_path / "ours"
    out.mkdir()
    write_lora_merge(
        out,
        [LoraSource(p, base) for p in paths],
        method=linear,
        weights=weights,
        params=resolve_params(linear),
    )
    lora_env = {**lora_env, "s0": paths[0], "s1": paths[1]}
    expected = _logits(_model_with(lora_env, "llama_base", _expected_merge(lora_env, ["s0", "s1"], weights)))
    torch.testing.assert_close(
        _logits(_load_adapter(lora_env, "llama_base", out)), expected, rtol=1e-4, atol=1e-5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(_load_model(lora_env["llama_base"]), paths[0], adapter_name="s0")
        model.load_adapter(paths[1], adapter_name="s1")
        model.add_weighted_adapter(["s0", "s1"], weights, "mixed", combination_type="linear")
        model.set_adapter("mixed")
        theirs = _logits(model)
    assert not torch.allclose(theirs, expected, rtol=1e-3, atol=1e-4)


def test_truncated_lora_output_records_relative_errors(lora_env, tmp_path):
    names, weights = ["a", "b", "c"], [1.0, 1.0, 1.0]
    merge_method = get_method("linear")
    params = resolve_params(merge_method)
    coefficients = delta_coefficients(merge_method, weights, params)
    _, sources = _open(lora_env, names)
    report = write_lora_merge(
        tmp_path, sources, method=merge_method, weights=weights, params=params, lora_rank=3
    )
    expected = _expected_merge(lora_env, names, coefficients)
    base = models.load_state_dict(lora_env["llama_base"])
    adapter = _load_adapter(lora_env, "llama_base", tmp_path)
    merged = adapter.merge_and_unload().state_dict()
    for module, info in report.modules.items():
        key = module + ".weight"
        delta = expected[key] - base[key]
        singular = torch.linalg.svdvals(delta.double())
        want = float((singular[3:].square().sum() / singular.square().sum()).sqrt())
        assert info["rank"] == min(3, sum(s.modules[key].rank for s in sources if key in s.modules))
        assert info["relative_error"] == pytest.approx(want, abs=1e-6), module
        got = float(
            torch.linalg.norm(merged[key].double() - expected[key]) / torch.linalg.norm(delta.double())
        )
        assert got == pytest.approx(want, abs=1e-5), module
    assert report.record()["max_relative_error"] > 0.05  # rank 3 < Σ rᵢ really truncates


def test_truncation_at_full_rank_is_exact(lora_env, tmp_path):
    merge_method = get_method("linear")
    params = resolve_params(merge_method)
    _, sources = _open(lora_env, ["b", "c"])
    report = write_lora_merge(
        tmp_path, sources, method=merge_method, weights=[0.5, 0.5], params=params, lora_rank=64
    )
    assert max(m["relative_error"] for m in report.modules.values()) < 1e-6
    expected = _expected_merge(lora_env, ["b", "c"], [0.5, 0.5])
    adapter = _load_adapter(lora_env, "llama_base", tmp_path)
    torch.testing.assert_close(
        _logits(adapter), _logits(_model_with(lora_env, "llama_base", expected)), rtol=1e-4, atol=1e-5
    )


def test_lora_output_refusals(lora_env, tmp_path):
    base, sources = _open(lora_env, ["b", "c"])
    full = SafetensorsSource(lora_env["llama_full"])
    linear = get_method("linear")
    with pytest.raises(MergeConfigError, match=r"ckpt-0' is a full checkpoint.*--output-format full"):
        write_lora_merge(
            tmp_path, [sources[0], full], method=linear, weights=[1, 1], params=resolve_params(linear)
        )
    ties = get_method("ties")
    with pytest.raises(MergeConfigError, match=r"'ties' trims or drops entries.*--output-format full"):
        write_lora_merge(tmp_path, sources, method=ties, weights=[1, 1], params=resolve_params(ties))
    with pytest.raises(MergeConfigError, match=r"sum(ming)? to 2.*not base \+ an adapter"):
        write_lora_merge(
            tmp_path, sources, method=linear, weights=[1, 1], params=resolve_params(linear, normalize=False)
        )
    for bad in ("0", "-2", "full", 1.5):
        with pytest.raises(MergeConfigError, match="--lora-rank"):
            parse_lora_rank(bad)
    assert parse_lora_rank("exact") == "exact" and parse_lora_rank("16") == 16
    _, (g,) = _open(lora_env, ["g"])
    with pytest.raises(IncompatibleCheckpointsError, match="over one base"):
        write_lora_merge(
            tmp_path, [sources[0], g], method=linear, weights=[1, 1], params=resolve_params(linear)
        )


# --- through the engine and the command line ------------------------------------------------


def _reference_inputs(env, names) -> list[dict[str, torch.Tensor]]:
    """Each input's full weights: peft's merge_and_unload for adapters, the file for full checkpoints."""
    return [
        {k: v.float() for k, v in models.load_state_dict(env[n]).items()}
        if n.endswith("_full")
        else _peft_merged(env, n)
        for n in names
    ]


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("linear", {}),
        ("task_arithmetic", {"lambda_": 0.9}),
        ("ties", {"density": 0.5}),
        ("dare_ties", {"density": 0.7, "seed": 3}),
    ],
)
def test_engine_merges_adapters_with_full_checkpoints(lora_env, tmp_path, method, kwargs):
    from hf_recycle._merge.engine import merge

    names, weights = ["a", "llama_full", "b"], [0.5, 0.3, 0.2]
    specs = [str(lora_env[n]) for n in names]
    merge(specs, tmp_path / "out", method=method, weights=weights, base=str(lora_env["llama_base"]), **kwargs)
    got = models.load_state_dict(tmp_path / "out")
    refs = _reference_inputs(lora_env, names)
    base = {k: v.float() for k, v in models.load_state_dict(lora_env["llama_base"]).items()}
    merge_method = get_method(method)
    params = resolve_params(merge_method, **kwargs)
    for key, value in got.items():
        want = merge_method.combine([r[key] for r in refs], weights, base[key], params, key)
        torch.testing.assert_close(value, want, rtol=0, atol=1e-5, msg=key)
    record = json.loads((tmp_path / "out" / "merge_config.json").read_text())
    assert [c["kind"] for c in record["checkpoints"]] == ["LoraSource", "SafetensorsSource", "LoraSource"]


@pytest.mark.parametrize("normalize", [True, False])
def test_engine_linear_adds_the_deltas_of_adapters_over_one_base_at_once(
    lora_env, tmp_path, monkeypatch, normalize
):
    from hf_recycle._merge import streaming
    from hf_recycle._merge.engine import merge

    monkeypatch.setattr(streaming, "CPU_BLOCK_ELEMENTS", 100)  # factors sliced by row blocks
    monkeypatch.setattr(streaming, "LOW_RANK_ROWS_PER_COLUMN", 0)  # (LoRA-targeted tensors too)
    computed = []
    real_read = LoraSource.read

    def read(self, key, rows=None, device="cpu"):
        computed.append(key)
        return real_read(self, key, rows, device)

    monkeypatch.setattr(LoraSource, "read", read)
    names, weights = ["g", "gpt2_full", "h"], [0.5, 1.0, 0.25]
    specs = [str(lora_env[n]) for n in names]
    merge(specs, tmp_path / "out", weights=weights, base=str(lora_env["gpt2_base"]), normalize=normalize)
    got = models.load_state_dict(tmp_path / "out")
    refs = _reference_inputs(lora_env, names)
    params = resolve_params(get_method("linear"), normalize=normalize)
    for key, value in got.items():
        want = get_method("linear").combine([r[key] for r in refs], weights, None, params, key)
        torch.testing.assert_close(value, want, rtol=0, atol=1e-5, msg=key)
    # base + ΔW is never built per adapter: only tensors saved whole (bias="all") are read()
    g = LoraSource(lora_env["g"], SafetensorsSource(lora_env["gpt2_base"]))
    assert computed and set(computed) <= set(g.replaced)


@pytest.mark.parametrize("cap", [None, 400])
def test_lora_targeted_tensors_are_merged_in_tall_blocks(lora_env, monkeypatch, cap):
    """U[rows] @ V reads all of V per block: a tensor with deltas comes in blocks of at least
    8 rows per factor column (up to the cap), the others in the usual blocks; values unchanged."""
    from hf_recycle._merge import streaming
    from hf_recycle._merge.inputs import open_inputs

    monkeypatch.setattr(streaming, "CPU_BLOCK_ELEMENTS", 100)
    if cap is not None:
        monkeypatch.setattr(streaming, "LOW_RANK_MAX_BLOCK_ELEMENTS", cap)
    names, weights = ["g", "h"], [0.6, 0.4]
    inputs = open_inputs([str(lora_env[n]) for n in names], str(lora_env["gpt2_base"]))
    blocks: dict[str, list[tuple[int, torch.Tensor]]] = {}

    class Collect:
        def write(self, key, data, row_start=0):
            blocks.setdefault(key, []).append((row_start, data.clone()))

    linear = get_method("linear")
    try:
        merger = streaming.StreamingMerger(
            inputs.checkpoints, inputs.base, linear, weights, resolve_params(linear)
        )
        merger.stream(Collect())
        widths = {key: sum(s.low_rank_width(key) for s in inputs.checkpoints) for key in blocks}
    finally:
        inputs.close()
    refs = _reference_inputs(lora_env, names)
    targeted = [key for key, width in widths.items() if width]
    assert targeted and any(not width for width in widths.values())
    for key, parts in blocks.items():
        shape = refs[0][key].shape
        row_numel = shape[1:].numel() if len(shape) > 1 else 1
        most = max(data.shape[0] if data.dim() else 1 for _, data in parts)
        if widths[key]:
            want = min(8 * widths[key] * row_numel, cap or 1 << 24) // row_numel
            assert most == min(shape[0], max(want, 100 // row_numel, 1)), key
        elif len(shape) > 1:
            assert most == min(shape[0], max(1, 100 // row_numel)), key
        if widths[key] and cap:
            assert len(parts) > 1, key  # the factors sliced by rows
        got = torch.cat([d.reshape(-1, *shape[1:]) for _, d in sorted(parts, key=lambda p: p[0])])
        want_value = linear.combine([r[key] for r in refs], weights, None, resolve_params(linear), key)
        torch.testing.assert_close(got.reshape(shape), want_value.to(got.dtype), rtol=0, atol=1e-5, msg=key)


def test_engine_uses_the_adapters_named_base_and_keeps_dtypes(lora_env, tmp_path):
    from hf_recycle._merge.engine import merge

    bf16_base, _ = models.build_pool(tmp_path / "bf16", "llama", n=0, seed=5, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adapter = models.build_lora_adapter(
            bf16_base,
            tmp_path / "named",
            r=4,
            target_modules=["q_proj"],
            base_model_name_or_path=str(bf16_base),
        )
    merge([str(adapter), str(adapter)], tmp_path / "out")  # no --base: adapter_config.json names it
    got = models.load_state_dict(tmp_path / "out")
    assert {v.dtype for v in got.values()} == {torch.bfloat16}
    expected = _peft_merged({"llama_base": bf16_base, "x": adapter}, "x")
    key = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(got[key].float(), expected[key].bfloat16().float(), rtol=0, atol=1e-2)
    assert not torch.equal(got[key], models.load_state_dict(bf16_base)[key])
    # an adapter folder has no config or tokenizer: they come from the base it names, and
    # that base is recorded as the merge's base
    out = tmp_path / "out"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (bf16_base / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((bf16_base / "config.json").read_text())
    assert {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")} == {
        k: v for k, v in base_config.items() if k not in ("dtype", "torch_dtype")
    }
    record = json.loads((out / "merge_config.json").read_text())["base"]
    assert record["role"] == "base" and record["path"] == str(bf16_base.resolve())
    lock = json.loads((out / "checkpoints.lock.json").read_text())
    assert lock["base"] is not None and str(bf16_base.resolve()) in json.dumps(lock["base"])


def test_output_inside_an_input_is_refused(lora_env, tmp_path):
    from hf_recycle._merge.engine import merge

    full, base = tmp_path / "full", tmp_path / "base"
    shutil.copytree(lora_env["llama_full"], full)
    shutil.copytree(lora_env["llama_base"], base)
    before = {f: sorted(p.name for p in f.iterdir()) for f in (full, base)}
    for inside in (full / "merged", base / "sub" / "merged"):
        with pytest.raises(MergeConfigError, match=r"is inside the input checkpoint"):
            merge([str(full), str(lora_env["a"])], inside, base=str(base))
        assert not inside.exists()
    assert {f: sorted(p.name for p in f.iterdir()) for f in (full, base)} == before


def test_engine_without_a_base_for_an_adapter(lora_env, tmp_path):
    from hf_recycle._merge.engine import merge

    with pytest.raises(AdapterBaseError, match=r"lora-a' needs the base model.*--base"):
        merge([str(lora_env["a"]), str(lora_env["llama_full"])], tmp_path / "out")
    folder = tmp_path / "gone"
    folder.mkdir()
    config = json.loads((lora_env["c"] / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "deleted-base")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(
        (lora_env["c"] / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(AdapterBaseError, match=r"names '.*deleted-base', which cannot be opened.*--base"):
        merge([str(folder)], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_lora_output_matches_cli_full_merge(lora_env, tmp_path):
    from hf_recycle.cli import main

    common = [str(lora_env[n]) for n in ("a", "b", "c")]
    common += ["--base", str(lora_env["llama_base"]), "--weights", "0.2,0.5,0.3", "--device", "cpu"]
    assert main(["merge", *common, "--output", str(tmp_path / "full")]) == 0
    assert main(["merge", *common, "--output-format", "lora", "--output", str(tmp_path / "lora")]) == 0
    assert (
        main(["merge", *common, "--output-format", "lora", "--lora-rank", "4", "-o", str(tmp_path / "r4")])
        == 0
    )
    full = _load_model(tmp_path / "full")
    adapter = _load_adapter(lora_env, "llama_base", tmp_path / "lora")
    torch.testing.assert_close(_logits(adapter), _logits(full), rtol=1e-4, atol=1e-5)
    record = json.loads((tmp_path / "r4" / "merge_config.json").read_text())
    assert record["lora"]["lora_rank"] == 4
    assert all(m["rank"] <= 4 for m in record["lora"]["modules"].values())
    assert 0 < record["lora"]["max_relative_error"] < 1
    assert (
        json.loads((tmp_path / "lora" / "merge_config.json").read_text())["lora"]["max_relative_error"] == 0
    )
    assert (tmp_path / "lora" / "checkpoints.lock.json").is_file()
    # a full checkpoint among the inputs, or a bad rank, is a one-line error
    bad = [str(lora_env["a"]), str(lora_env["llama_full"]), "--base", str(lora_env["llama_base"])]
    assert main(["merge", *bad, "--output-format", "lora", "-o", str(tmp_path / "bad")]) == 1
    assert (
        main(["merge", *common, "--output-format", "lora", "--lora-rank", "x", "-o", str(tmp_path / "x")])
        == 1
    )
