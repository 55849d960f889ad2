"""``dare_linear`` and ``dare_ties``: random drop-and-rescale of task vectors."""

from __future__ import annotations

from hf_recycle._merge.methods.task_arithmetic import TaskVectorMethod


class DareLinear(TaskVectorMethod):
    """DARE: drop task-vector entries at random, rescale survivors, add (task arithmetic)."""

    name = "dare_linear"
    order = 3
    pretty_name = "Linear DARE"
    reference_url = "https://arxiv.org/abs/2311.03099"
    uses_density = True
    sparsify = "random"


class DareTies(TaskVectorMethod):
    """DARE sparsification followed by TIES sign election."""

    name = "dare_ties"
    order = 4
    pretty_name = "DARE TIES"
    reference_url = "https://arxiv.org/abs/2311.03099"
    uses_density = True
    consensus = True
    sparsify = "random"
