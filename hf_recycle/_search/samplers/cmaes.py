"""``cmaes``: CMA-ES (the default; single objective)."""

from __future__ import annotations

from hf_recycle._search.samplers import SamplerAdapter


class CmaEs(SamplerAdapter):
    name = "cmaes"
    pretty_name = "CMA-ES"
    multi_objective = False
    requires = ("cmaes",)
    order = 0

    def build(self, space, *, seed, n_objectives, trials):
        import optuna

        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
