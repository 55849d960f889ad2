"""Where samplers start and how the simplex is parameterized, on synthetic objectives (issue 17).

Runs the real search loop (:func:`hf_recycle._search.worker.run_worker`: uniform soup, singles and
greedy soup first, then the sampler; :class:`hf_recycle._search.objective.TrialObjective`) on
objectives computed from the merge weights alone (no model), so hundreds of studies take minutes:

- ``mixture``: ``-100 * ||w - w*||^2`` with ``w*`` drawn from a flat Dirichlet (an interior optimum);
- ``face``: the same with ``w*`` on an edge of the simplex (two checkpoints, zero elsewhere);
- ``poisoned``: ``sum q_i w_i`` (the best single checkpoint, 0.84, is the optimum), but 0 whenever
  one diverged checkpoint gets weight > 0.07 (the uniform soup scores 0), as in the issue's pool;
- ``poisoned-mix``: ``1 - 2 * ||w - w*||^2`` with ``w*`` a flat Dirichlet over the other
  checkpoints, 0 when the diverged one gets weight > 0.07 (a better merge exists beside the poison).

Compared (``--variants``, ``SAMPLER/SPACE``):

- samplers: ``cmaes``, ``gp``, ``tpe``, ``random`` (the registry's); ``cmaes-centre``: Optuna's
  CmaEsSampler as before issue 17 (mean at the centre of the box, step 1/6);
  ``cmaes-s3``: the registry's start at the best baseline with step 1/3 instead of 1/6;
- spaces: ``box``: ``weights: simplex_box`` (``w = x / sum(x)``, ``x`` in ``[0, 1]^K``); ``sb``:
  ``weights: simplex`` (stick-breaking over ``K - 1`` variables, :mod:`hf_recycle._search.space`);
  ``rbox``: an exploration arm defined here (:func:`_rectified_space`).

Per K, objective, sampler and space, over seeds (seed s draws the same objective for every
variant): ``regret`` = optimum minus the study's best score (mean), ``low`` = share of sampled
trials scoring below half the best baseline's score (poisoned objectives only), and, against
``box`` with the same sampler, on how many seeds the regret is lower / higher.

    python benchmarks/search_parameterization.py [--quick] [--seeds N] [--trials T] [--ks 4,9]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class _Result:
    value: float
    per_example: tuple[float, ...]


class _Weights:
    """The live "model" is its weight vector."""

    model = None

    def set_weights(self, weights, density=None):
        self.model = np.asarray(weights, dtype=float)[0]


class _Objective:
    weight = 1.0
    higher_is_better = True
    num_examples = 1

    def __init__(self, name, k, rng):
        self.name = name
        self.k = k
        if name == "mixture":
            self.target = rng.dirichlet(np.ones(k))
        elif name == "face":
            pair = rng.choice(k, size=2, replace=False)
            self.target = np.zeros(k)
            self.target[pair] = rng.dirichlet(np.ones(2))
        elif name == "poisoned":
            self.quality = rng.uniform(0.3, 0.7, size=k)
            self.best = int(rng.integers(k))
            self.quality[self.best] = 0.84
            self.bad = int((self.best + 1 + rng.integers(k - 1)) % k)
        else:  # poisoned-mix
            self.bad = int(rng.integers(k))
            self.target = np.zeros(k)
            self.target[np.arange(k) != self.bad] = rng.dirichlet(np.ones(k - 1))

    def value(self, w):
        if self.name == "poisoned":
            return 0.0 if w[self.bad] > 0.07 else float(self.quality @ w)
        if self.name == "poisoned-mix":
            return 0.0 if w[self.bad] > 0.07 else 1.0 - 2.0 * float(np.sum((w - self.target) ** 2))
        return -100.0 * float(np.sum((w - self.target) ** 2))

    @property
    def optimum(self):
        return {"poisoned": 0.84, "poisoned-mix": 1.0}.get(self.name, 0.0)

    def score(self, model, limit=None, *, resume=None):
        v = self.value(model)
        return _Result(v, (v,))


def _rectified_space(k):
    """An exploration arm, not in hf-recycle: K variables ``x`` in [-1, 1],
    ``w = max(x, 0) / sum(max(x, 0))`` (all <= 0: uniform); a checkpoint outside a soup sits at -1/2,
    so that a sampler can move a checkpoint's variable away from the face where it enters the merge."""
    from hf_recycle._search.space import Candidate, SearchSpace

    class RectifiedSpace(SearchSpace):
        def distributions(self):
            from optuna.distributions import FloatDistribution

            return {n: FloatDistribution(-1.0, 1.0) for n in self.param_names()}

        def candidate(self, params):
            x = np.maximum(np.array([params[n] for n in self.param_names()]), 0.0)
            w = x / x.sum() if x.sum() > 0 else np.full(k, 1.0 / k)
            return Candidate(w[None, :], None)

        def params_for(self, weights, density=None):
            w = np.asarray(weights, dtype=float).reshape(-1)
            x = np.where(w > 0, w / w.max(), -0.5)
            return dict(zip(self.param_names(), map(float, x), strict=True))

    return RectifiedSpace(k, parameterization="simplex_box")


def _space(param, k):
    from hf_recycle._search.space import SearchSpace

    if param == "rbox":
        return _rectified_space(k)
    return SearchSpace(k, parameterization={"box": "simplex_box", "sb": "simplex"}[param])


DEFAULT_VARIANTS = ",".join(
    [
        "cmaes-centre/box",
        "cmaes-s3/box",
        "cmaes-s3/sb",
        *(f"{s}/{p}" for s in ("cmaes", "gp", "tpe", "random") for p in ("box", "sb")),
        "cmaes/rbox",
        "tpe/rbox",
    ]
)


def _sampler(variant, space, seed):
    import optuna

    from hf_recycle._search.samplers import make_sampler
    from hf_recycle._search.samplers._start import BaselineStartCmaEsSampler

    if variant == "cmaes-centre":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if variant.startswith("cmaes-s"):  # cmaes-s3: the start at the best baseline with step 1/3

        class WithStep(BaselineStartCmaEsSampler):
            start_sigma0 = 1 / float(variant.removeprefix("cmaes-s"))

        return WithStep(seed=seed, warn_independent_sampling=False)
    return make_sampler(variant, space, seed=seed, n_objectives=1, trials=0)


def run_one(variant, param, objective_name, k, seed, trials, screen=None):
    import optuna
    from optuna.trial import TrialState

    from hf_recycle._search.objective import TrialObjective
    from hf_recycle._search.study import StudyConfig, create_or_load_study
    from hf_recycle._search.worker import run_worker

    rng = np.random.default_rng(1000 * k + seed)
    objective = _Objective(objective_name, k, rng)
    space = _space(param, k)
    config = StudyConfig(
        space=space, checkpoints=[str(i) for i in range(k)], tasks=[objective_name], directions=[True]
    )
    study = create_or_load_study(
        optuna.storages.InMemoryStorage(), "s", config, sampler=_sampler(variant, space, seed)
    )
    run_worker(study, config, TrialObjective(space, _Weights(), [objective], screen=screen), trials)
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    base = [t for t in done if "baseline" in t.user_attrs]
    sampled = [t for t in done if "baseline" not in t.user_attrs]
    best_base = max(base, key=lambda t: t.value)
    w_best = np.asarray(best_base.user_attrs["weights"][0])
    values = [t.value for t in sampled]
    poisoned = objective_name.startswith("poisoned")
    return {
        "gain": (max(values) - best_base.value) if values else 0.0,
        "regret": objective.optimum - max(t.value for t in done),
        "low": float(np.mean([v < best_base.value / 2 for v in values])) if values and poisoned else None,
        "near": float(
            np.mean([np.abs(np.asarray(t.user_attrs["weights"][0]) - w_best).sum() for t in sampled])
        )
        if sampled
        else 0.0,
        "sampled": len(sampled),
    }


def _mean(values):
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), 4) if values else None


def main(argv=None):
    import optuna

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds, K = 9 only")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--trials", type=int, default=40, help="trials per study, baselines included")
    parser.add_argument("--ks", default="4,9")
    parser.add_argument("--objectives", default="mixture,face,poisoned,poisoned-mix")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument(
        "--screen",
        type=float,
        default=None,
        help="search.screen for the sampled trials (e.g. 0.5, the recipe default); unset: off, as before it existed",
    )
    parser.add_argument("--out", default=str(HERE / "search_parameterization.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.ks = 3, "9"
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)  # GP's small matrices: 2 threads took twice as long as one
    variants = [tuple(v.split("/")) for v in args.variants.split(",")]
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        for objective_name in args.objectives.split(","):
            per_seed = {}
            for variant, param in variants:
                start = time.perf_counter()
                runs = [
                    run_one(variant, param, objective_name, k, s, args.trials, args.screen)
                    for s in range(args.seeds)
                ]
                per_seed[variant, param] = runs
                row = {
                    "k": k,
                    "objective": objective_name,
                    "variant": variant,
                    "param": param,
                    "seeds": args.seeds,
                    "trials": args.trials,
                    "screen": args.screen,
                    "sampled": runs[0]["sampled"],
                    "seconds": round(time.perf_counter() - start, 1),
                    **{m: _mean(r[m] for r in runs) for m in ("gain", "regret", "low", "near")},
                    "regret_per_seed": [round(r["regret"], 4) for r in runs],
                }
                reference = per_seed.get((variant, "box"))
                if param != "box" and reference is not None:
                    pairs = [(r["regret"], b["regret"]) for r, b in zip(runs, reference, strict=True)]
                    row["better_than_box"] = sum(a < b - 1e-9 for a, b in pairs)
                    row["worse_than_box"] = sum(a > b + 1e-9 for a, b in pairs)
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return 0


def table(rows):
    """The markdown table of ``rows``: one line per K, objective and sampler, one column group per space."""
    params = list(dict.fromkeys(r["param"] for r in rows))
    head = "| K | objective | sampler | " + " | ".join(f"regret {p}" for p in params)
    head += (
        " | "
        + " | ".join(f"low {p}" for p in params)
        + " | "
        + " | ".join(f"vs box {p}" for p in params if p != "box")
    )
    lines = [head + " |", "|" + "---|" * (head.count("|"))]
    keyed = {(r["k"], r["objective"], r["variant"], r["param"]): r for r in rows}
    for k, objective, variant in dict.fromkeys((r["k"], r["objective"], r["variant"]) for r in rows):
        cells = [str(k), objective, variant]
        got = [keyed.get((k, objective, variant, p)) for p in params]
        cells += [f"{r['regret']:.3f}" if r else "" for r in got]
        cells += [f"{r['low']:.2f}" if r and r["low"] is not None else "" for r in got]
        cells += [
            f"{r['better_than_box']}/{r['worse_than_box']}" if r and "better_than_box" in r else ""
            for p, r in zip(params, got, strict=True)
            if p != "box"
        ]
        lines.append("| " + " | ".join(cells) + " |")
    totals: dict[tuple[str, str], list[int]] = {}
    for r in rows:
        if "better_than_box" in r:
            total = totals.setdefault((r["param"], r["variant"]), [0, 0])
            total[0] += r["better_than_box"]
            total[1] += r["worse_than_box"]
    if totals:
        lines.append("")
    for (param, variant), (better, worse) in totals.items():
        lines.append(
            f"- {param} vs box with {variant}, seeds of every K and objective: lower regret {better}, higher {worse}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
