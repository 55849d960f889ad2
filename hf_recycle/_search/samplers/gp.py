"""``gp``: Gaussian-process Bayesian optimization."""

from __future__ import annotations

from hf_recycle._search.samplers import SamplerAdapter


class Gp(SamplerAdapter):
    name = "gp"
    pretty_name = "Gaussian-process Bayesian optimization"
    requires = ("scipy", "torch")
    order = 2

    def build(self, space, *, seed, n_objectives, trials):
        from hf_recycle._search.samplers._pruned import PrunedAwareGPSampler

        return PrunedAwareGPSampler(seed=seed, n_startup_trials=5)
