"""The streaming engine end to end on tiny checkpoints, checked against whole-state-dict references."""

from __future__ import annotations

import json

import pytest
import torch
from merge_reference import (
    assert_state_close,
    copy_checkpoint,
    f32_states,
    ref_linear,
    ref_task_vectors,
    ref_topk,
)
from safetensors import safe_open

from hf_recycle._merge import methods, streaming, writer
from hf_recycle._merge.engine import merge
from hf_recycle._merge.methods import GroupWeights
from hf_recycle.errors import (
    CheckpointNotFoundError,
    MergeConfigError,
    NonFiniteError,
    OutputExistsError,
    PickleRefusedError,
)
from hf_recycle.testing import models


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_linear_uniform_default(llama_pool, tmp_path, small_blocks):
    base, ckpts = llama_pool
    result = merge(ckpts, tmp_path / "out")
    assert result.files == ("model.safetensors",) and result.method == "linear"
    assert_state_close(models.load_state_dict(tmp_path / "out"), ref_linear(f32_states(ckpts), [1, 1, 1]))
    record = json.loads((tmp_path / "out" / "merge_config.json").read_text())
    assert record["method"] == "linear" and record["parameters"]["normalize"] is True
    assert [c["spec"] for c in record["checkpoints"]] == [str(c) for c in ckpts]
    assert record["hf_recycle_version"]
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "out" / name).is_file()
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    assert _no_leftovers(tmp_path) == []


def test_linear_weights_no_normalize(llama_pool, tmp_path):
    _, ckpts = llama_pool
    merge(ckpts, tmp_path / "out", weights=[0.5, 0.25, 1.0], normalize=False)
    want = ref_linear(f32_states(ckpts), [0.5, 0.25, 1.0], normalize=False)
    assert_state_close(models.load_state_dict(tmp_path / "out"), want)


def test_task_arithmetic(llama_pool, tmp_path, small_blocks):
    base, ckpts = llama_pool
    merge(ckpts, tmp_path / "out", method="task_arithmetic", base=base, weights=[0.5, 0.3, 0.2], lambda_=0.8)
    want = ref_task_vectors(f32_states(ckpts), f32_states([base])[0], [0.5, 0.3, 0.2], lam=0.8)
    assert_state_close(models.load_state_dict(tmp_path / "out"), want)


@pytest.mark.parametrize("normalize", [None, False])
def test_ties(llama_pool, tmp_path, small_blocks, normalize):
    base, ckpts = llama_pool
    merge(
        ckpts,
        tmp_path / "out",
        method="ties",
        base=base,
        weights=[0.5, 0.3, 0.2],
        density=0.3,
        normalize=normalize,
    )
    want = ref_task_vectors(
        f32_states(ckpts), f32_states([base])[0], [0.5, 0.3, 0.2],
        normalize=normalize is None, consensus=True, sparsify=lambda d, i, k: ref_topk(d, 0.3),
    )  # fmt: skip
    assert_state_close(models.load_state_dict(tmp_path / "out"), want)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_matches_reference_and_is_reproducible(llama_pool, tmp_path, name):
    base, ckpts = llama_pool
    merge(ckpts, tmp_path / "a", method=name, base=base, density=0.5, seed=4)

    def drop(d, i, key):
        return d * methods.dare_keep_mask(4, key, i, d.numel(), 0, d.numel(), 0.5).view_as(d) / 0.5

    want = ref_task_vectors(
        f32_states(ckpts), f32_states([base])[0], [1 / 3] * 3, consensus=name == "dare_ties", sparsify=drop
    )
    got = models.load_state_dict(tmp_path / "a")
    assert_state_close(got, want)
    streaming.CPU_BLOCK_ELEMENTS, saved = 64, streaming.CPU_BLOCK_ELEMENTS  # other chunking, same masks
    try:
        merge(ckpts, tmp_path / "b", method=name, base=base, density=0.5, seed=4)
    finally:
        streaming.CPU_BLOCK_ELEMENTS = saved
    again = models.load_state_dict(tmp_path / "b")
    assert all(torch.equal(got[k], again[k]) for k in got)
    merge(ckpts, tmp_path / "c", method=name, base=base, density=0.5, seed=5)
    other = models.load_state_dict(tmp_path / "c")
    assert not all(torch.equal(got[k], other[k]) for k in got)


def test_bf16_inputs_keep_dtype_and_exact_float32_arithmetic(llama_pool_bf16, tmp_path, small_blocks):
    base, ckpts = llama_pool_bf16
    merge(ckpts, tmp_path / "out", method="ties", base=base, density=0.2, weights=[1, 2, 3])
    got = models.load_state_dict(tmp_path / "out")
    assert {t.dtype for t in got.values()} == {torch.bfloat16}
    want = ref_task_vectors(
        f32_states(ckpts), f32_states([base])[0], [1.0, 2.0, 3.0], normalize=True, consensus=True,
        sparsify=lambda d, i, k: ref_topk(d, 0.2),
    )  # fmt: skip
    # float32 arithmetic, one rounding to bfloat16 (at most one ulp from the reference's summation order)
    assert_state_close(got, {k: v.to(torch.bfloat16) for k, v in want.items()}, atol=1e-6, rtol=2**-7)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_output_dtype(llama_pool_bf16, tmp_path, dtype):
    _, ckpts = llama_pool_bf16
    merge(ckpts, tmp_path / "out", dtype=dtype, weights=[0.2, 0.3, 0.5])
    got = models.load_state_dict(tmp_path / "out")
    want = {k: v.to(getattr(torch, dtype)) for k, v in ref_linear(f32_states(ckpts), [0.2, 0.3, 0.5]).items()}
    eps = torch.finfo(getattr(torch, dtype)).eps
    assert_state_close(got, want, atol=1e-6, rtol=eps)
    assert all(t.dtype == getattr(torch, dtype) for t in got.values())
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == dtype


def test_pickle_refused_unless_allowed(llama_pool, tmp_path):
    _, ckpts = llama_pool
    pickled = tmp_path / "pickled"
    copy_checkpoint(ckpts[1], pickled)
    torch.save(models.load_state_dict(pickled), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(PickleRefusedError, match="pytorch_model.bin.*--allow-pickle"):
        merge([ckpts[0], pickled], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    merge([ckpts[0], pickled], tmp_path / "out", allow_pickle=True)
    assert_state_close(models.load_state_dict(tmp_path / "out"), ref_linear(f32_states(ckpts[:2]), [1, 1]))


def test_existing_output_refused_then_overwritten(llama_pool, tmp_path):
    _, ckpts = llama_pool
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        merge(ckpts, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").exists()
    merge(ckpts, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").exists()
    assert _no_leftovers(tmp_path) == []


def test_failure_midway_leaves_nothing(llama_pool, tmp_path, monkeypatch):
    _, ckpts = llama_pool
    calls = {"n": 0}
    real = writer.ShardedSafetensorsWriter.write

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(writer.ShardedSafetensorsWriter, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        merge(ckpts, tmp_path / "out", max_shard_size="30KB")
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []
    # a failed overwrite keeps the previous output intact
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous.txt").write_text("x")
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        merge(ckpts, tmp_path / "out", overwrite=True)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]
    assert _no_leftovers(tmp_path) == []


def test_nan_produced_is_an_error_and_writes_nothing(llama_pool, tmp_path):
    base, ckpts = llama_pool
    with pytest.raises(NonFiniteError, match="produced NaN or Inf"):
        merge(ckpts, tmp_path / "out", method="task_arithmetic", base=base, lambda_=1e39)
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []

    def poison(state):
        state["model.layers.1.mlp.down_proj.weight"][3, 4] = float("nan")
        return state

    bad = copy_checkpoint(ckpts[2], tmp_path / "bad", poison)
    with pytest.raises(NonFiniteError, match="'model.layers.1.mlp.down_proj.weight'"):
        merge([ckpts[0], bad], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overflow_when_casting_to_float16_is_an_error(llama_pool, tmp_path):
    _, ckpts = llama_pool

    def scale(state):
        state["model.norm.weight"] = state["model.norm.weight"] * 1e6  # finite in float32, not in float16
        return state

    big = copy_checkpoint(ckpts[0], tmp_path / "big", scale)
    with pytest.raises(NonFiniteError, match=r"'model.norm.weight'.*after casting to float16"):
        merge([big, ckpts[1]], tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []
    merge([big, ckpts[1]], tmp_path / "out", dtype="float32")  # the same merge fits float32


def test_stream_hands_every_block_to_a_sink(llama_pool, tmp_path, small_blocks):
    from hf_recycle._merge.inputs import open_inputs
    from hf_recycle._merge.streaming import StreamingMerger

    _, ckpts = llama_pool
    merge(ckpts, tmp_path / "out", weights=[0.5, 0.2, 0.3])
    want = models.load_state_dict(tmp_path / "out")

    class Collect:
        def __init__(self):
            self.parts = {}

        def write(self, key, data, row_start=0):
            self.parts.setdefault(key, []).append((row_start, data.clone()))

    sink = Collect()
    inputs = open_inputs(ckpts)
    try:
        linear = methods.get_method("linear")
        merger = StreamingMerger(
            inputs.checkpoints, None, linear, [0.5, 0.2, 0.3], methods.resolve_params(linear)
        )
        merger.stream(sink)
    finally:
        inputs.close()
    got = {k: torch.cat([d for _, d in sorted(v, key=lambda p: p[0])]) for k, v in sink.parts.items()}
    assert set(got) == set(want) and all(torch.equal(got[k].view_as(want[k]), want[k]) for k in want)
    assert max(len(v) for v in sink.parts.values()) > 1  # blocks of rows


def _by_layer(names):
    """Groups: the embeddings, each decoder layer by parity, everything else."""
    groups = {}
    for name in names:
        if "embed_tokens" in name:
            groups[name] = "embeddings"
        elif ".layers." in name:
            groups[name] = "even" if int(name.split(".layers.")[1].split(".")[0]) % 2 == 0 else "odd"
        else:
            groups[name] = "head"
    return groups


def test_group_weights_merge_each_group_with_its_row(llama_pool, tmp_path, small_blocks):
    _, ckpts = llama_pool
    rows = {"embeddings": [1.0, 0.0, 0.0], "even": [0.2, 0.3, 0.5], "odd": [0.0, 2.0, 1.0], "head": [1, 1, 1]}
    merge(ckpts, tmp_path / "out", weights=GroupWeights(rows, _by_layer))
    got = models.load_state_dict(tmp_path / "out")
    states = f32_states(ckpts)
    groups = _by_layer(list(got))
    assert set(groups.values()) == set(rows)
    for key, value in got.items():
        row = rows[groups[key]]
        want = sum(w * s[key] for w, s in zip(row, states, strict=True)) / sum(row)
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6, msg=key)
    parameters = json.loads((tmp_path / "out" / "merge_config.json").read_text())["parameters"]
    assert parameters["weights"] is None and parameters["group_weights"]["odd"] == [0.0, 2.0, 1.0]


def test_group_weights_errors(llama_pool, tmp_path):
    base, ckpts = llama_pool
    rows = {"embeddings": [1, 1, 1], "even": [1, 1, 1], "odd": [1, 1, 1]}  # no "head"
    with pytest.raises(MergeConfigError, match=r"weight group\(s\) \['head'\] have no row"):
        merge(ckpts, tmp_path / "out", weights=GroupWeights(rows, _by_layer))
    with pytest.raises(
        MergeConfigError, match=r"'lm_head.weight'.*\(and \d+ more\) belong to no weight group"
    ):
        merge(
            ckpts, tmp_path / "out", weights=GroupWeights(rows, {"model.embed_tokens.weight": "embeddings"})
        )
    with pytest.raises(MergeConfigError, match="weight group .all.: got 2 weights for 3 checkpoints"):
        merge(
            ckpts,
            tmp_path / "out",
            weights=GroupWeights({"all": [1, 1]}, lambda names: dict.fromkeys(names, "all")),
        )
    with pytest.raises(MergeConfigError, match="not weights per group"):
        merge(ckpts, tmp_path / "out", base=base, output_format="lora", weights=GroupWeights(rows, _by_layer))
    assert not (tmp_path / "out").exists() and _no_leftovers(tmp_path) == []


def test_missing_folder_and_folder_without_weights(llama_pool, tmp_path):
    _, ckpts = llama_pool
    with pytest.raises(CheckpointNotFoundError, match="nope' does not exist"):
        merge([ckpts[0], tmp_path / "nope"], tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(CheckpointNotFoundError, match="holds no weights"):
        merge([ckpts[0], empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weights": [1.0, 2.0]}, "got 2 weights for 3 checkpoints"),
        ({"method": "ties", "density": 0.0}, r"density must be in \(0, 1\]"),
        ({"method": "ties", "density": 1.5}, r"density must be in \(0, 1\]"),
        ({"method": "ties"}, "needs a base checkpoint"),
        ({"weights": [1.0, -1.0, 0.0]}, "sum to 0"),
        ({"dtype": "int8"}, "dtype 'int8' is not supported"),
        ({"max_shard_size": "big"}, "max_shard_size"),
        ({"device": "tpu"}, "device 'tpu'"),
    ],
)
def test_bad_parameters(llama_pool, tmp_path, kwargs, match):
    _, ckpts = llama_pool
    with pytest.raises(MergeConfigError, match=match):
        merge(ckpts, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_inside_an_input_is_refused(llama_pool, tmp_path):
    _, ckpts = llama_pool
    with pytest.raises(MergeConfigError, match="holds the input checkpoint"):
        merge(ckpts, ckpts[0].parent, overwrite=True)
    assert ckpts[0].exists()


def test_cuda_requested_without_cuda(llama_pool, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(MergeConfigError, match="no CUDA device"):
        merge(llama_pool[1], tmp_path / "out", device="cuda")
