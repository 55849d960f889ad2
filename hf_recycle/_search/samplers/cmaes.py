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
        import warnings

        import optuna

        from hf_recycle._search.samplers._start import BaselineStartCmaEsSampler

        # a raced-out trial counts in its generation at its last reported mean (samplers/_pruned.py);
        # Optuna marks the setting experimental
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return BaselineStartCmaEsSampler(
                seed=seed, warn_independent_sampling=False, consider_pruned_trials=True
            )
