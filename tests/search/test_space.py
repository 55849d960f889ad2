import numpy as np
import pytest

from hf_recycle._search.space import SearchSpace, group_tensors
from hf_recycle.errors import SearchError


def test_simplex_corners_and_interior_are_reachable():
    space = SearchSpace(4)
    for i in range(4):
        corner = np.eye(4)[i]
        params = space.params_for(corner)
        assert params[space.param_name(0, i)] == 1.0
        assert np.array_equal(space.candidate(params).weights[0], corner)
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = rng.dirichlet(np.ones(4))
        params = space.params_for(w)
        assert all(0.0 <= v <= 1.0 for v in params.values())
        np.testing.assert_allclose(space.candidate(params).weights[0], w, atol=1e-12)


def test_simplex_map_is_on_the_simplex_and_zero_is_uniform():
    space = SearchSpace(3)
    w = space.weights_of(np.array([[0.2, 0.0, 0.6]]))
    np.testing.assert_allclose(w, [[0.25, 0.0, 0.75]])
    np.testing.assert_allclose(space.weights_of(np.zeros((1, 3))), [[1 / 3] * 3])


def test_unnormalized_parameterizations_are_identity():
    signed = SearchSpace(2, parameterization="signed")
    assert signed.bounds == (-1.0, 1.0)
    np.testing.assert_allclose(signed.candidate({"w000": -0.5, "w001": 0.75}).weights, [[-0.5, 0.75]])
    nonneg = SearchSpace(2, parameterization="nonnegative")
    with pytest.raises(SearchError, match="outside"):
        nonneg.params_for([-0.1, 0.5])


def test_layer_groups_put_embeddings_and_head_apart():
    names = [
        "model.embed_tokens.weight",
        *[f"model.layers.{i}.mlp.up_proj.weight" for i in range(5)],
        "model.norm.weight",
        "lm_head.weight",
    ]
    groups, group_of = group_tensors(names, 2)
    assert groups == ["embeddings", "layers.0-1", "layers.2-3", "layers.4-4", "head"]
    assert group_of["model.embed_tokens.weight"] == 0
    assert group_of["model.layers.3.mlp.up_proj.weight"] == 2
    assert group_of["lm_head.weight"] == group_of["model.norm.weight"] == 4
    space = SearchSpace(3, groups=tuple(groups), search_density=True)
    assert len(space.param_names()) == 5 * 3 + 1
    w = np.arange(15, dtype=float).reshape(5, 3) + 1
    w /= w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(space.candidate(space.params_for(w, 0.4)).weights, w)
    assert space.candidate(space.params_for(w, 0.4)).density == 0.4


def test_fewer_than_two_checkpoints_is_refused():
    with pytest.raises(SearchError, match="at least 2 checkpoints"):
        SearchSpace(1)
