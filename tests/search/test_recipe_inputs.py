"""fetch_recipe_inputs: the run's one plan of checkpoints, base and the base adapters name."""

from __future__ import annotations

import pytest
from synthetic import write_sums_recipe

from hf_recycle.recipe import Recipe
from hf_recycle.recipe_inputs import fetch_recipe_inputs
from hf_recycle.testing.models import build_lora_adapter


def _recipe(tmp_path, checkpoints, base=None, method="linear"):
    path = write_sums_recipe(
        tmp_path, checkpoints, name="inputs", trials=8, base=base, merge={"method": method}
    )
    return Recipe.from_yaml(path)


@pytest.fixture(scope="module")
def named(llama_pool, tmp_path_factory):
    base, _ = llama_pool
    root = tmp_path_factory.mktemp("named")
    other = root / "other-base"
    other.mkdir()
    same = [
        build_lora_adapter(base, root / f"a-{i}", seed=i, base_model_name_or_path=str(base)) for i in range(2)
    ]
    odd = build_lora_adapter(base, root / "odd", seed=5, base_model_name_or_path=str(other))
    return base, same, odd


def test_full_checkpoints_use_the_base_only_when_the_method_does(llama_pool, tmp_path):
    base, ckpts = llama_pool
    linear = fetch_recipe_inputs(_recipe(tmp_path, ckpts, base))
    assert [c.path for c in linear.checkpoints] == list(ckpts)
    assert linear.base is None and linear.merge_base is None and linear.named_bases == {}
    ta = fetch_recipe_inputs(_recipe(tmp_path, ckpts, base, method="task_arithmetic"))
    assert ta.merge_base is not None and ta.merge_base.path == base
    assert [p.spec for p in ta.pins] == [c.spec for c in ta.checkpoints]


def test_adapters_naming_one_base_get_it_fetched_once(named, tmp_path):
    base, same, _ = named
    got = fetch_recipe_inputs(_recipe(tmp_path, same))
    assert got.base is None and got.named_base is not None
    assert got.named_base.path == base and got.merge_base is got.named_base
    assert got.named_bases == {str(base): got.named_base}


def test_adapters_naming_different_bases_are_left_to_open_inputs(named, tmp_path):
    _, same, odd = named
    got = fetch_recipe_inputs(_recipe(tmp_path, [same[0], odd]))
    assert got.named_base is None and got.named_bases == {}


def test_too_few_checkpoints_fail_before_any_download(llama_pool, tmp_path):
    from hf_recycle.errors import SearchError

    _, ckpts = llama_pool
    with pytest.raises(SearchError, match="at least 2"):
        fetch_recipe_inputs(_recipe(tmp_path, ckpts[:1]))
