"""The correction's math: prior with no evidence, shrinkage toward the router, locality, and the hard
exploration budget."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online.correction import Events, ExplorationBudget, correction, unit

SETTINGS = OnlineLearningConfig(num_neighbors=8, min_similarity=0.5, prior_events=4.0, noise_var=0.1)


def events(contexts, experts, residuals) -> Events:
    return Events(np.stack([unit(c) for c in contexts]), np.asarray(experts, np.int16), np.asarray(residuals, np.float32))


def test_without_events_the_posterior_is_the_prior():
    empty = Events(np.zeros((0, 3), np.float32), np.zeros(0, np.int16), np.zeros(0, np.float32))
    corr = correction(empty, unit([1, 0, 0]), 2, SETTINGS)
    assert np.all(corr.mean == 0) and np.allclose(corr.std, np.sqrt(0.1 / 4.0)) and np.all(corr.evidence == 0)


def test_identical_prompts_pull_the_mean_toward_their_residual_and_shrink_the_std():
    here = [1.0, 0.0, 0.0]
    corr_few = correction(events([here] * 2, [1, 1], [-0.5, -0.5]), unit(here), 2, SETTINGS)
    corr_many = correction(events([here] * 8, [1] * 8, [-0.5] * 8), unit(here), 2, SETTINGS)
    assert corr_few.mean[0] == 0 and corr_few.std[0] == np.sqrt(0.1 / 4.0)  # expert 0 untouched
    assert np.isclose(corr_few.mean[1], -0.5 * 2 / 6) and np.isclose(corr_many.mean[1], -0.5 * 8 / 12)
    assert corr_many.std[1] < corr_few.std[1] < np.sqrt(0.1 / 4.0)


def test_dissimilar_events_do_not_count_and_only_the_nearest_k_do():
    here, far = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]  # cosine 0 < min_similarity
    assert correction(events([far] * 5, [0] * 5, [1.0] * 5), unit(here), 1, SETTINGS).evidence[0] == 0
    near = [[1.0, 0.05 * i, 0.0] for i in range(20)]
    corr = correction(events(near, [0] * 20, [0.0] * 8 + [1.0] * 12), unit(here), 1, SETTINGS)
    assert corr.mean[0] == 0.0  # the 8 nearest all have residual 0; the 12 farther ones are not among them


def test_weights_fall_with_distance():
    here = unit([1.0, 0.0])
    close, midway = [1.0, 0.1], [1.0, 0.9]
    corr = correction(events([close, midway], [0, 0], [1.0, -1.0]), here, 1, SETTINGS)
    assert corr.mean[0] > 0


@given(st.floats(0.0, 1.0), st.lists(st.booleans(), max_size=300))
def test_sampled_decisions_never_exceed_the_budget(fraction, wants):
    budget = ExplorationBudget()
    for want in wants:
        sampled = want and budget.allows_sample(fraction)
        budget = budget.after(sampled)
        assert budget.num_sampled <= fraction * budget.num_decisions + 1e-9
    assert budget.num_decisions == len(wants)


def test_a_zero_budget_never_samples_and_a_full_one_always_may():
    assert not ExplorationBudget(10, 0).allows_sample(0.0)
    assert ExplorationBudget(10, 10).allows_sample(1.0)
