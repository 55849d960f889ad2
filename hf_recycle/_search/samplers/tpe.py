"""``tpe``: multivariate TPE."""

from __future__ import annotations

from hf_recycle._search.samplers import SamplerAdapter


class Tpe(SamplerAdapter):
    name = "tpe"
    pretty_name = "TPE"
    order = 1

    def build(self, space, *, seed, n_objectives, trials):
        import optuna

        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
