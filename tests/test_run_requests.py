"""`hf-recycle run` against the local Hub lists each ref and each commit's tree once and fetches each file once."""

from __future__ import annotations

import collections

import pytest
from recipe_runs import write_recipe

pytestmark = pytest.mark.slow  # a real run: search, final merge, card


def test_run_resolves_lists_and_downloads_once(tiny_lm_hub, tmp_path):
    from hf_recycle.pipeline import run

    server, shas = tiny_lm_hub
    recipe = write_recipe(
        tmp_path, "once", search={"sampler": "random", "trials": 6, "seed": 0, "baselines": ["uniform"]}
    )
    before = len(server.requests())
    result = run(str(recipe), endpoint=server.endpoint)
    assert result.results.trials == 6
    seen = collections.Counter(server.requests()[before:])
    refs = [r for r in seen if r.startswith("GET /api/models/demo/tiny-lm/refs")]
    trees = {r: n for r, n in seen.items() if r.startswith("GET /api/models/demo/tiny-lm/tree/")}
    files = {r: n for r, n in seen.items() if r.startswith(("GET /demo/tiny-lm/resolve/", "GET /_blobs/"))}
    assert [seen[r] for r in refs] == [1]  # the step-* glob is expanded once, by the search
    assert trees and all(n == 1 for n in trees.values()), trees  # resolve, search and final merge share it
    assert all(n == 1 for n in files.values()), files
    assert {r.rsplit("/", 1)[1] for r in trees} <= set(shas.values())
