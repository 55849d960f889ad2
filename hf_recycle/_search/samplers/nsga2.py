"""``nsga2``: NSGA-II, a population of max(4, min(50, trials // 3))."""

from __future__ import annotations

from hf_recycle._search.samplers import SamplerAdapter


class Nsga2(SamplerAdapter):
    name = "nsga2"
    pretty_name = "NSGA-II"
    order = 4

    def build(self, space, *, seed, n_objectives, trials):
        import optuna

        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, trials // 3)))
