"""Merge methods: pure float32 arithmetic on tensors or blocks of rows, no I/O.

Each method is a small object in its own module, found by the registry (:data:`METHODS`;
see :mod:`~hf_recycle._merge.methods.registry`) with a ``pretty_name``, a paper
``reference_url``, whether it ``needs_base``, its ``default_normalize``, and
:meth:`MergeMethod.combine`, which merges the same tensor (or the same block of rows
of it) from every checkpoint. The streaming engine calls ``combine`` on row blocks
read from disk; the resident search model calls it on whole tensors held in memory.

The semantics are mergekit's for the same names and parameters (per tensor, float32):

- ``linear``: θ = Σ wᵢθᵢ, divided by Σ wᵢ when normalize (default on).
- ``task_arithmetic``: θ = θ_base + λ·Σ wᵢτᵢ with τᵢ = θᵢ − θ_base (normalize default
  off; when on the sum is divided by Σ wᵢ, or by 1 if |Σ wᵢ| < 1e-8).
- ``ties``: each τᵢ keeps its k = max(1, ⌊density·numel⌋) largest-magnitude entries
  (density ≥ 1 keeps all; the threshold is taken over the whole tensor, ties at the
  threshold broken by flat position); dᵢ = wᵢτᵢ; elected sign s = +1 where Σ dᵢ ≥ 0
  else −1; mᵢ = [sign(dᵢ) = s]; mixed = Σ mᵢdᵢ, divided by Σ mᵢwᵢ (zeros → 1) when
  normalize (default on); θ = θ_base + λ·mixed.
- ``dare_linear`` / ``dare_ties``: as task_arithmetic / ties (normalize default off,
  as in mergekit), but each τᵢ keeps each entry with probability ``density`` and the
  survivors are divided by ``density``. The mask depends only on (seed, tensor name,
  input index): it is drawn on the CPU in fixed blocks of the flattened tensor, so it
  is the same whatever the chunking or device.
"""

from hf_recycle._merge.methods._base import (
    KeepThreshold,
    MergeMethod,
    MethodParams,
    TensorStats,
    Workspace,
)
from hf_recycle._merge.methods.dare import DareLinear, DareTies
from hf_recycle._merge.methods.linear import Linear
from hf_recycle._merge.methods.registry import (
    LINEAR_IN_DELTA,
    METHOD_NAMES,
    METHODS,
    NEEDS_BASE,
    get_method,
    resolve_params,
)
from hf_recycle._merge.methods.sparsify import (
    DARE_BLOCK,
    apply_threshold,
    dare_keep_mask,
    magnitude_threshold,
    stable_seed,
)
from hf_recycle._merge.methods.task_arithmetic import TaskArithmetic, TaskVectorMethod
from hf_recycle._merge.methods.ties import Ties
from hf_recycle._merge.methods.weights import GroupWeights, check_weights

__all__ = [
    "DARE_BLOCK",
    "METHODS",
    "METHOD_NAMES",
    "NEEDS_BASE",
    "DareLinear",
    "DareTies",
    "GroupWeights",
    "KeepThreshold",
    "LINEAR_IN_DELTA",
    "Linear",
    "MergeMethod",
    "MethodParams",
    "TaskArithmetic",
    "TaskVectorMethod",
    "TensorStats",
    "Ties",
    "Workspace",
    "apply_threshold",
    "check_weights",
    "dare_keep_mask",
    "get_method",
    "magnitude_threshold",
    "resolve_params",
    "stable_seed",
]
