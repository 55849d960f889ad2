"""``random``: independent uniform sampling."""

from __future__ import annotations

from hf_recycle._search.samplers import SamplerAdapter


class Random(SamplerAdapter):
    name = "random"
    pretty_name = "random search"
    order = 3

    def build(self, space, *, seed, n_objectives, trials):
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)
