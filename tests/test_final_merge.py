"""The final merge of a search's winner (:mod:`hf_recycle.final.merge`), through ``hf-recycle run``
against the local Hub server: a ``granularity: layers:N`` winner merges every tensor group with
its own row of weights, checked against Σ wᵢ θᵢ of the pinned checkpoints computed here."""

from __future__ import annotations

import pytest
import torch
import yaml
from recipe_runs import STEPS, download_state, write_recipe

from hf_recycle.testing import models


@pytest.mark.slow
def test_layer_groups_merge_each_group_with_its_weights(tiny_lm_hub, tmp_path):
    from hf_recycle._search.space import group_tensors
    from hf_recycle.pipeline import run

    server, shas = tiny_lm_hub
    recipe = write_recipe(
        tmp_path, "layered", search={"sampler": "random", "trials": 7, "granularity": "layers:1"}
    )
    data = yaml.safe_load(recipe.read_text())
    data["tasks"] = data["tasks"][1:]  # one task keeps this test fast
    recipe.write_text(yaml.safe_dump(data))
    result = run(recipe, endpoint=server.endpoint)
    layer_weights = result.results["winner"]["layer_weights"]
    assert list(layer_weights) == ["embeddings", "layers.0-0", "layers.1-1", "head"]
    merged = models.load_state_dict(result.model_dirs[0])
    sources = [download_state("demo/tiny-lm", shas[s], server.endpoint, tmp_path)[1] for s in STEPS]
    groups, group_of = group_tensors(list(merged), 1)
    for key, tensor in merged.items():
        row = layer_weights[groups[group_of[key]]]
        expected = sum(w * s[key].double() for w, s in zip(row, sources, strict=True)) / sum(row)
        torch.testing.assert_close(tensor.double(), expected, atol=1e-6, rtol=1e-5)
    assert "Weights per layer group" in (result.model_dirs[0] / "README.md").read_text()
