"""`hf-recycle run` against the local Hub lists each ref and each commit's tree once and fetches each file once."""

from __future__ import annotations

import collections

import pytest
from recipe_runs import write_recipe

pytestmark = pytest.mark.slow  # a real run: search, final merge, card


def test_run_resolves_lists_and_downloads_once(tiny_lm_hub, tmp_path, monkeypatch):
    """One plan per run (hf_recycle.recipe_inputs): the search and the final merge take the
    fetched folders; neither resolves a spec nor downloads a checkpoint again."""
    from hf_recycle.hub import download, resolve
    from hf_recycle.pipeline import run

    server, shas = tiny_lm_hub
    recipe = write_recipe(
        tmp_path,
        "once",
        merge={"method": "task_arithmetic", "lambda": 0.8, "dtype": "float32", "device": "cpu"},
        search={"sampler": "random", "trials": 6, "seed": 0, "baselines": ["uniform"]},
    )
    resolved, downloaded = collections.Counter(), collections.Counter()
    real_resolve, real_download = resolve.resolve, download._download

    def counting_resolve(specs, **kwargs):
        resolved.update(specs)
        return real_resolve(specs, **kwargs)

    def counting_download(pin, *args, **kwargs):
        downloaded[pin.spec] += 1
        return real_download(pin, *args, **kwargs)

    monkeypatch.setattr(resolve, "resolve", counting_resolve)
    monkeypatch.setattr(download, "_download", counting_download)
    before = len(server.requests())
    result = run(str(recipe), endpoint=server.endpoint)
    assert result.results.trials == 6
    assert resolved == {"demo/tiny-lm@step-*": 1, "demo/tiny-lm@base": 1}
    assert len(downloaded) == len(result.results.checkpoints) + 1  # the checkpoints and the base
    assert set(downloaded.values()) == {1}, downloaded
    seen = collections.Counter(server.requests()[before:])
    refs = [r for r in seen if r.startswith("GET /api/models/demo/tiny-lm/refs")]
    trees = {r: n for r, n in seen.items() if r.startswith("GET /api/models/demo/tiny-lm/tree/")}
    files = {r: n for r, n in seen.items() if r.startswith(("GET /demo/tiny-lm/resolve/", "GET /_blobs/"))}
    assert [seen[r] for r in refs] == [1]  # the step-* glob is expanded once, by the search
    assert trees and all(n == 1 for n in trees.values()), trees  # resolve, search and final merge share it
    assert all(n == 1 for n in files.values()), files
    assert {r.rsplit("/", 1)[1] for r in trees} <= set(shas.values())
