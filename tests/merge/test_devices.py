"""One device rule for the merge engine and the search's live model."""

from __future__ import annotations

import pytest
import torch

from hf_recycle._merge.engine import resolve_device
from hf_recycle._search.live import pick_device
from hf_recycle.errors import MergeConfigError


@pytest.mark.parametrize("device", ["gpu", "cuda1", "tpu", "cudaa:0"])
def test_unknown_devices_are_refused_by_both(device):
    for choose in (resolve_device, pick_device):
        with pytest.raises(
            MergeConfigError, match=f"device '{device}' is not supported: use auto, cpu, cuda or cuda:N"
        ):
            choose(device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_refused_by_both(device):
    for choose in (resolve_device, pick_device):
        with pytest.raises(MergeConfigError, match=f"--device {device} was asked for but no CUDA device"):
            choose(device)


def test_both_agree_on_cpu_and_auto():
    assert pick_device("cpu") == str(resolve_device("cpu")) == "cpu"
    assert pick_device("auto") == str(resolve_device("auto"))
