"""``cmaes``: CMA-ES (the default; single objective), started at the best baseline."""

from __future__ import annotations

from hf_recycle._search.samplers import SamplerAdapter


class CmaEs(SamplerAdapter):
    name = "cmaes"
    pretty_name = "CMA-ES"
    multi_objective = False
    requires = ("cmaes",)
    order = 0

    def build(self, space, *, seed, n_objectives, trials):
        from hf_recycle._search.samplers._start import BaselineStartCmaEsSampler

        return BaselineStartCmaEsSampler(seed=seed, warn_independent_sampling=False)
