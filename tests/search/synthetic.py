"""Search test helpers: a synthetic task whose best mixture is known, and the tests' recipes.

The synthetic task is the closeness of the live weights to a target merge.

The scorer follows the TaskScorer interface and computes a real function of the live
model: per tensor ("example"), minus the mean squared distance of the live parameter to
the target mixture Σ w*ᵢ θᵢ (times 1e4), so the score is maximal (0) at w = w*.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hf_recycle.testing.models import load_state_dict


@dataclass(frozen=True)
class Result:
    name: str
    value: float
    per_example: tuple[float, ...]
    higher_is_better: bool
    examples: int = 0  # how many "examples" (tensors) were scored, tied heads included


@dataclass(frozen=True)
class ScoreResult:
    """What a scorer of the weights alone returns: a value and its per-example scores."""

    value: float
    per_example: tuple[float, ...]


class WeightsModel:
    """A live "model" that is its merge weights: ``model`` is the last ``(G, K)`` array written."""

    model = None

    def set_weights(self, weights, density=None):
        import numpy as np

        self.model = np.asarray(weights, dtype=float)


class TargetMixtureScorer:
    """Scores a live model by its distance to the mixture ``target`` of ``checkpoints``."""

    def __init__(self, name, checkpoints, target, weight=1.0, sleep=0.0, marker=None):
        self.name = name
        self.weight = weight
        self.higher_is_better = True
        states = [load_state_dict(p) for p in checkpoints]
        self.target = {
            k: sum(float(w) * s[k].float() for w, s in zip(target, states, strict=True)) for k in states[0]
        }
        self.keys = sorted(self.target)
        self.num_examples = len(self.keys)
        self.sleep = sleep
        self.marker = Path(marker) if marker else None
        self.calls = 0

    def score(self, model, limit=None, *, resume=None):
        self.calls += 1
        if self.marker is not None:
            self.marker.write_text(f"{os.getpid()} {self.calls}\n")
        if self.sleep:
            time.sleep(self.sleep)
        live = dict(model.named_parameters())
        n = self.num_examples if limit is None else min(limit, self.num_examples)
        done = 0 if resume is None else resume.examples
        per = [] if resume is None else list(resume.per_example)
        for key in self.keys[done:n]:
            param = live.get(key)
            if param is None:  # tied head: lm_head is the embedding
                continue
            per.append(-1e4 * float(((param.detach().float() - self.target[key]) ** 2).mean()))
        return Result(self.name, sum(per) / len(per), tuple(per), True, n)


def synthetic_recipe(ckpts, out, tasks=(), **search_spec):
    """A recipe over ``ckpts``; ``tasks`` are placeholders named like the injected synthetic scorers."""
    from hf_recycle.recipe import Recipe

    specs = [{"name": t, "data": "json", "prompt": "{q}", "target": "{a}"} for t in tasks]
    return Recipe.model_validate(
        {
            "name": "t",
            "checkpoints": [str(p) for p in ckpts],
            "search": search_spec,
            "tasks": specs,
            "output": {"dir": str(out)},
        }
    )


def write_sums_recipe(tmp_path, checkpoints, *, name, trials, base=None, merge=None, **search):
    """``tmp_path/recipe.yaml``: a real ``sums`` loglikelihood task over 8 rows of data.jsonl
    (search split the first 4, test split the other 4), output in ``tmp_path/out``."""
    import yaml

    rows = [{"q": f"{i}+{i}=", "a": str(2 * i)} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = {
        "name": name,
        "checkpoints": [str(p) for p in checkpoints],
        **({"merge": merge} if merge else {}),
        "search": {"trials": trials, "sampler": "random", **search},
        "tasks": [
            {
                "name": "sums",
                "data": {"path": "json", "data_files": "data.jsonl"},
                "search_split": "train[:4]",
                "test_split": "train[4:]",
                "kind": "loglikelihood",
                "prompt": "{q}",
                "target": "{a}",
            }
        ],
        "output": {"dir": str(tmp_path / "out")},
    }
    if base is not None:
        recipe["base"] = str(base)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
