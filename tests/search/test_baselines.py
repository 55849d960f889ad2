import numpy as np

from hf_recycle._search.baselines import greedy_soup_step, single_weights, soup_weights, uniform_weights


def test_baseline_weights():
    np.testing.assert_allclose(uniform_weights(4), [0.25] * 4)
    np.testing.assert_allclose(single_weights(2, 3), [0, 0, 1])
    np.testing.assert_allclose(soup_weights({0, 2}, 3), [0.5, 0, 0.5])


def test_greedy_soup_replays_wortsman_selection():
    # singles: ckpt 2 best, then 0, then 3, then 1
    singles = [0.5, 0.1, 0.9, 0.3]
    first = greedy_soup_step(singles, {})
    assert first.order == (2, 0, 3, 1)
    assert first.next_members == frozenset({2, 0})
    # adding 0 hurts -> rejected; next try {2, 3}
    s = {frozenset({0, 2}): 0.8}
    state = greedy_soup_step(singles, s)
    assert state.members == frozenset({2}) and state.next_members == frozenset({2, 3})
    # adding 3 helps -> kept; next try {2, 3, 1}
    s[frozenset({2, 3})] = 0.95
    state = greedy_soup_step(singles, s)
    assert state.members == frozenset({2, 3}) and state.next_members == frozenset({1, 2, 3})
    # adding 1 does not strictly improve -> rejected, done
    s[frozenset({1, 2, 3})] = 0.95
    state = greedy_soup_step(singles, s)
    assert state.done and state.members == frozenset({2, 3}) and state.score == 0.95
