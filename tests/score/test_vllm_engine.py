"""The ``vllm`` scoring engine against the ``hf`` engine and plain transformers, and weights written in place.

One vLLM instance, on the base folder's weights, serves the module (see tests/vllm_support.py).
"""

from __future__ import annotations

import pytest
from vllm_support import VLLM_OPTIONS, build_vllm_pool, skip_without_vllm

skip_without_vllm()

import torch  # noqa: E402
from score_reference import (  # noqa: E402
    MAX_NEW,
    STOP,
    choice_rows,
    jsonl_task,
    random_prompts,
    reference_generate,
    reference_logprob,
    text_rows,
)

from hf_recycle._score.engines import get_engine  # noqa: E402
from hf_recycle.testing import models  # noqa: E402

pytestmark = pytest.mark.vllm

EOS = [2, *"bdfhj13579"]  # several common characters end generation, so rows stop at different steps


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """Base + 3 fine-tunes; the base's generation config ends generation on many characters."""
    from transformers import GenerationConfig

    base, ckpts = build_vllm_pool(tmp_path_factory.mktemp("vllm-pool"))
    tokenizer = models.build_char_tokenizer()
    eos = [EOS[0], *tokenizer.convert_tokens_to_ids(EOS[1:])]
    GenerationConfig(bos_token_id=1, eos_token_id=eos, pad_token_id=0).save_pretrained(base)
    return base, ckpts


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """One task per kind; the generate task has a prompt the context cuts (250 + 10 > 256 tokens)."""
    folder = tmp_path_factory.mktemp("vllm-tasks")
    prompts = random_prompts(16, seed=5, lengths=(1, 2, 5, 17, 40, 90, 250))
    gen = jsonl_task(
        folder,
        [{"q": p, "a": "x"} for p in prompts],
        name="gen",
        prompt="{q}",
        target="{a}",
        max_new_tokens=MAX_NEW,
        stop=list(STOP),
    )
    plain = jsonl_task(
        folder, [{"q": p, "a": "x"} for p in prompts[:6]], name="plain", prompt="{q}", target="{a}"
    )
    mc = jsonl_task(
        folder,
        choice_rows(12, seed=6),
        name="mc",
        kind="choice",
        options="options",
        prompt="{q}:",
        target="{label}",
    )
    rows = text_rows(12, seed=8)
    ll = jsonl_task(folder, rows, name="ll", kind="loglikelihood", prompt="{q}|", target="{a}")
    ppl = jsonl_task(folder, rows, name="ppl", kind="perplexity", prompt="{q}|", target="{a}", weight=2.0)
    return folder, [gen, plain, mc, ll, ppl], prompts, rows


@pytest.fixture(scope="module")
def engines(pool, tasks):
    """``(hf engine, vllm engine on the base folder's weights, base model, tokenizer)``."""
    from hf_recycle._score.api import load_model

    base, _ = pool
    folder, specs, _, _ = tasks
    model, tokenizer = load_model(base, device="cpu", dtype="float32")
    hf = get_engine("hf").build(tokenizer, specs, "search", folder)
    vllm = get_engine("vllm").build(tokenizer, specs, "search", folder, model_dir=base, **VLLM_OPTIONS)
    yield hf, vllm, model, tokenizer
    vllm.close()


def assert_same_results(ours, reference):
    assert list(ours) == list(reference)
    for name, result in ours.items():
        expected = reference[name]
        assert result.predictions == expected.predictions, name
        assert result.per_example == pytest.approx(expected.per_example, rel=1e-4, abs=1e-4), name
        assert result.value == pytest.approx(expected.value, rel=1e-4, abs=1e-4), name


def test_every_kind_equals_the_hf_engine(engines, tasks):
    hf, vllm, model, tokenizer = engines
    _, _, prompts, rows = tasks
    reference = hf.score(model)
    ours = vllm.score(None)  # the folder's weights, which vLLM loaded itself
    assert_same_results(ours, reference)
    # independent of both engines: plain transformers, one example at a time
    assert list(ours["gen"].predictions) == [
        reference_generate(model, tokenizer, p, MAX_NEW, STOP) for p in prompts
    ]
    expected = [reference_logprob(model, tokenizer, r["q"] + "|", r["a"])[0] for r in rows]
    assert ours["ll"].per_example == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert any(len(p) > 1 for p in ours["gen"].predictions) and len(set(ours["mc"].predictions)) > 1

    # the same model object as the search hands in (facts only) gives the same results
    assert_same_results(vllm.score(model), reference)
    # a quarter first, then the rest: the same as all at once
    part = vllm.score(None, limit_fraction=0.25)
    assert [len(r.per_example) for r in part.values()] == [4, 2, 3, 3, 3]
    assert_same_results(vllm.score(None, resume=part), reference)
    assert len(vllm.score(None, limit=5)["ppl"].per_example) == 5


def test_weights_written_in_place_reach_vllm(engines, pool, tasks):
    from hf_recycle._score.api import load_model

    hf, vllm, base_model, tokenizer = engines
    base, ckpts = pool
    folder, specs, _, _ = tasks
    before = vllm.score(None)
    other = load_model(ckpts[1], device="cpu", dtype="float32")[0]
    try:
        vllm.weights_changed(other)
        after = vllm.score(other)
        assert after["ll"].per_example != pytest.approx(before["ll"].per_example, rel=1e-3)
        assert_same_results(after, hf.score(other))
        # a half-way mixture, written in place into the transformers model first (as the search does)
        with torch.no_grad():
            for p, q in zip(other.parameters(), base_model.parameters(), strict=True):
                p.mul_(0.5).add_(q, alpha=0.5)
        vllm.weights_changed(other)
        assert_same_results(vllm.score(other), hf.score(other))
    finally:
        vllm.weights_changed(base_model)
    # the base's weights written back score as vLLM's own load of the base folder did: a weight
    # written in place is one loaded from disk (tests/search/test_search_vllm.py: merges on disk)
    assert_same_results(vllm.score(None), before)


def test_one_vllm_model_per_process(engines, pool, tasks):
    from hf_recycle.errors import TaskError

    _, vllm, _, tokenizer = engines
    _, ckpts = pool
    folder, specs, _, _ = tasks
    with pytest.raises(TaskError, match="vLLM runs one model per process: close it"):
        get_engine("vllm").build(tokenizer, specs, "search", folder, model_dir=ckpts[0], **VLLM_OPTIONS)
    twin = get_engine("vllm").build(
        tokenizer, specs, "search", folder, model_dir=vllm._model_dir, **VLLM_OPTIONS
    )
    assert twin.llm is vllm.llm  # same arguments: one shared instance (a search's two splits)
    twin.close()
    assert vllm.llm is not None and len(vllm.score(None, limit=1)) == len(specs)
