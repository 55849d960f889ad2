import numpy as np
import pytest

from hf_recycle._search.space import SearchSpace, group_tensors
from hf_recycle.errors import SearchError


def test_simplex_corners_and_interior_are_reachable():
    space = SearchSpace(4, parameterization="simplex_box")
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
    space = SearchSpace(3, parameterization="simplex_box")
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
    assert len(space.param_names()) == 5 * (3 - 1) + 1  # simplex: K - 1 variables per group
    w = np.arange(15, dtype=float).reshape(5, 3) + 1
    w /= w.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(space.candidate(space.params_for(w, 0.4)).weights, w)
    assert space.candidate(space.params_for(w, 0.4)).density == 0.4


def test_fewer_than_two_checkpoints_is_refused():
    with pytest.raises(SearchError, match="at least 2 checkpoints"):
        SearchSpace(1)


def test_simplex_is_stick_breaking_over_k_minus_1_variables():
    """``simplex`` has K - 1 variables per group; its map is the stick-breaking of the docstring,
    computed here by hand for K = 3."""
    space = SearchSpace(3)
    assert space.param_names() == ["s000", "s001"]
    s0, s1 = 0.36, 0.25
    v0, v1 = 1 - s0 ** (1 / 2), 1 - s1  # Beta(1, 2) and Beta(1, 1) quantiles of 1 - s
    expected = [v0, (1 - v0) * v1, (1 - v0) * (1 - v1)]
    np.testing.assert_allclose(space.candidate({"s000": s0, "s001": s1}).weights, [expected], rtol=1e-15)
    assert space.weight_attrs(np.array([expected])) == {f"weight:w00{i}": w for i, w in enumerate(expected)}


@pytest.mark.parametrize("k", [2, 3, 4, 9, 16])
def test_simplex_maps_soups_exactly_and_round_trips_every_point(k):
    """Baselines (corners, soups) enqueue as parameters that map back to exactly their weights;
    any point of the simplex, near a corner too, comes back to rounding; and no two parameter
    points give one merge (unlike ``simplex_box``, where x and 2x are the same)."""
    from hf_recycle._search.baselines import soup_weights

    space = SearchSpace(k)
    rng = np.random.default_rng(k)
    for members in ([0], [k - 1], [0, 1], list(range(k)), [0, k - 1], list(range(1, k))):
        w = soup_weights(members, k)
        params = space.params_for(w)
        assert all(0.0 <= v <= 1.0 for v in params.values())
        assert np.array_equal(space.candidate(params).weights[0], w)
    near_corner = np.array([1 - 1e-9, *([1e-9 / (k - 1)] * (k - 1))])
    for w in [*rng.dirichlet(np.full(k, 0.3), size=50), near_corner, near_corner[::-1]]:
        np.testing.assert_allclose(space.candidate(space.params_for(w)).weights[0], w, rtol=0, atol=1e-15)
    s = rng.uniform(size=(50, k - 1))
    np.testing.assert_allclose(
        [list(space.params_for(w).values()) for w in space.weights_of(s)], s, atol=1e-9
    )
    box = SearchSpace(k, parameterization="simplex_box")
    x = rng.uniform(size=(1, k))
    assert np.allclose(box.weights_of(x), box.weights_of(x / 2))


def test_simplex_uniform_variables_are_a_uniform_point_of_the_simplex():
    """A uniform draw of the K - 1 variables is a flat Dirichlet draw of the weights: each weight
    is Beta(1, K - 1), P(w_i > t) = (1 - t)^(K - 1), for every checkpoint (the order does not
    matter); the box map's draws crowd around the uniform soup instead."""
    k, n = 6, 20000
    rng = np.random.default_rng(0)
    w = SearchSpace(k).weights_of(rng.uniform(size=(n, k - 1)))
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    for t in (0.1, 0.3, 0.5):
        np.testing.assert_allclose((w > t).mean(axis=0), (1 - t) ** (k - 1), atol=0.012)
    box = SearchSpace(k, parameterization="simplex_box").weights_of(rng.uniform(size=(n, k)))
    assert (box > 0.5).mean() < 0.2 * (1 - 0.5) ** (k - 1)


def test_a_study_made_when_simplex_had_k_variables_is_refused_on_resume():
    """Studies made before ``simplex`` was stick-breaking stored ``"weights": "simplex"`` without
    ``variables``: resuming one is an error naming the space, not a mix of w... and s... trials."""
    import warnings

    import optuna

    from hf_recycle._search.study import FINGERPRINT_ATTR, StudyConfig, create_or_load_study

    config = StudyConfig(space=SearchSpace(3), checkpoints=["a", "b", "c"], tasks=["t"], directions=[True])
    assert config.space.describe()["variables"] == "stick_breaking"
    assert "variables" not in SearchSpace(3, parameterization="simplex_box").describe()
    storage = optuna.storages.InMemoryStorage()
    old = config.fingerprint()
    old["space"] = {k: v for k, v in old["space"].items() if k != "variables"}
    made = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    made.set_user_attr(FINGERPRINT_ATTR, old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        made.set_metric_names(config.metric_names)  # as create_or_load_study made it then
    with pytest.raises(
        SearchError, match=r"different search \(space differ\).*set search.weights: simplex_box"
    ):
        create_or_load_study(storage, "s", config)
    box = StudyConfig(  # the old map under its new name: the study resumes
        space=SearchSpace(3, parameterization="simplex_box"),
        checkpoints=["a", "b", "c"],
        tasks=["t"],
        directions=[True],
    )
    assert create_or_load_study(storage, "s", box).user_attrs[FINGERPRINT_ATTR] == old
