"""Reading ahead: where each tensor's bytes lie, and the hints the engine gives the OS."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from safetensors.torch import load_file

from hf_recycle._merge import streaming
from hf_recycle._merge.engine import merge
from hf_recycle._merge.inputs import open_inputs
from hf_recycle._merge.sources import SafetensorsSource, TiedHeadSource
from hf_recycle.testing.models import build_lora_adapter


def _bytes_at(ranges):
    out = b""
    for file, offset, length in ranges:
        with open(file, "rb") as f:
            f.seek(offset)
            out += f.read(length)
    return out


def test_file_ranges_hold_each_tensors_bytes(llama_pool_sharded, gpt2_pool, llama_pool, tmp_path):
    _, ckpts = llama_pool_sharded
    source = SafetensorsSource(ckpts[0])
    assert len(source.files) > 1  # the ranges name the shard each tensor is in
    files = set()
    for key in source.keys():
        ranges = source.file_ranges(key)
        files.update(file for file, _, _ in ranges)
        tensor = source.read(key)
        assert _bytes_at(ranges) == tensor.contiguous().view(torch.uint8).numpy().tobytes(), key
    assert files == set(source.files)

    tied = SafetensorsSource(gpt2_pool[1][0])
    head = TiedHeadSource(tied, "lm_head.weight", "transformer.wte.weight")
    assert head.file_ranges("lm_head.weight") == tied.file_ranges("transformer.wte.weight")

    base_dir, _ = llama_pool
    adapter = build_lora_adapter(base_dir, tmp_path / "lora", target_modules=["q_proj"], seed=1)
    inputs = open_inputs([str(adapter)], str(base_dir))
    lora = inputs.checkpoints[0]
    base = SafetensorsSource(base_dir)
    changed = next(k for k in lora.keys() if "q_proj" in k)
    unchanged = next(k for k in lora.keys() if "k_proj" in k)
    for key in (changed, unchanged):  # an adapter's merge reads the base's bytes of every tensor
        assert lora.file_ranges(key) == base.file_ranges(key)


def test_read_ahead_stays_within_its_window(monkeypatch, tmp_path):
    file = tmp_path / "data.bin"
    file.write_bytes(b"\0" * 1000)
    tensors = {f"t{i}": [(file, 100 * i, 100)] for i in range(10)}
    hinted: list[int] = []
    too_far: list[tuple[int, int]] = []
    progress = threading.Condition()
    read_ahead = streaming._ReadAhead(tensors, window=250)

    def fake_fadvise(fd, offset, length, advice):
        assert advice == os.POSIX_FADV_WILLNEED and length == 100
        index = offset // 100
        reached = read_ahead._reached
        if sum(100 for i in range(reached, index)) >= 250:  # more than the window ahead
            too_far.append((index, reached))
        with progress:
            hinted.append(index)
            progress.notify_all()

    monkeypatch.setattr(os, "posix_fadvise", fake_fadvise)
    read_ahead.start()
    with progress:  # tensors 0-2: within 250 bytes of tensor 0 (3 x 100 would be 300 ahead of 0)
        assert progress.wait_for(lambda: len(hinted) >= 3, timeout=60)
    read_ahead.reached("t5")  # the workers skip ahead: 3 and 4 are not hinted any more
    with progress:
        assert progress.wait_for(lambda: len(hinted) >= 6, timeout=60)
    read_ahead.reached("t9")
    with progress:
        assert progress.wait_for(lambda: 9 in hinted, timeout=60)
    read_ahead.stop()
    assert not read_ahead.is_alive()
    assert hinted == [0, 1, 2, 5, 6, 7, 9] and too_far == []


def test_merge_hints_each_tensor_once_and_goes_on_when_refused(llama_pool, tmp_path, monkeypatch):
    base_dir, ckpts = llama_pool
    merge(ckpts, tmp_path / "reference", weights=[0.2, 0.3, 0.5])
    sources = [SafetensorsSource(p) for p in ckpts]
    expected = {
        (os.stat(file).st_ino, offset, length)
        for source in sources
        for key in source.keys()
        for file, offset, length in source.file_ranges(key)
    }
    assert sum(length for *_, length in expected) < streaming.READ_AHEAD_BYTES
    hints: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    all_hinted = threading.Event()

    def record(fd, offset, length, advice):
        with lock:
            hints.append((os.fstat(fd).st_ino, offset, length))
            if len(hints) == len(expected):
                all_hinted.set()

    # the whole pool fits in the window: the workers start once every range is hinted (they would
    # otherwise skip the hints of tensors they have passed, as they should)
    reached = streaming._ReadAhead.reached
    monkeypatch.setattr(
        streaming._ReadAhead, "reached", lambda self, key: all_hinted.wait(60) and reached(self, key)
    )
    monkeypatch.setattr(os, "posix_fadvise", record)
    merge(ckpts, tmp_path / "hinted", weights=[0.2, 0.3, 0.5])
    assert sorted(hints) == sorted(expected)  # every tensor of every input, once
    monkeypatch.setattr(streaming._ReadAhead, "reached", reached)

    def refuse(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    merge(ckpts, tmp_path / "refused", weights=[0.2, 0.3, 0.5])
    want = load_file(tmp_path / "reference" / "model.safetensors")
    for name in ("hinted", "refused"):
        got = load_file(tmp_path / name / "model.safetensors")
        assert got.keys() == want.keys()
        for key, tensor in want.items():
            assert torch.equal(got[key], tensor), (name, key)


@pytest.mark.parametrize("window", [0, 1 << 40])
def test_merge_equal_whatever_the_window(llama_pool, tmp_path, monkeypatch, small_blocks, window):
    _, ckpts = llama_pool
    monkeypatch.setattr(streaming, "READ_AHEAD_BYTES", 1 << 20)
    want = _merged(ckpts, tmp_path / "a")
    monkeypatch.setattr(streaming, "READ_AHEAD_BYTES", window)
    got = _merged(ckpts, tmp_path / "b")
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key


def _merged(ckpts, folder):
    merge(ckpts, folder, weights=[0.2, 0.3, 0.5])
    return load_file(folder / "model.safetensors")
