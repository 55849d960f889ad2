"""``ties``: TIES-merging."""

from __future__ import annotations

from hf_recycle._merge.methods.task_arithmetic import TaskVectorMethod


class Ties(TaskVectorMethod):
    """TIES-merging: trim small task-vector entries, elect signs, merge agreeing entries."""

    name = "ties"
    order = 2
    pretty_name = "TIES"
    reference_url = "https://arxiv.org/abs/2306.01708"
    default_normalize = True
    uses_density = True
    consensus = True
    sparsify = "magnitude"
