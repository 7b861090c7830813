"""The correction's math: prior with no evidence, shrinkage toward the router, locality, what the slope learns,
and the hard exploration budget."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online.correction import Events, correction, unit
from switchboard.online.exploration import ExplorationBudget
from switchboard.router.training import residual_correlation

OFFSET = OnlineLearningConfig(num_neighbors=8, min_similarity=0.5, prior_events=4.0, noise_var=0.1, slope_prior_mean=1.0, slope_prior_var=0.0)
SLOPE = OFFSET.model_copy(update={"num_neighbors": 256, "slope_prior_var": 1.0})
PRIOR_STD = np.sqrt(0.1 / 4.0)


def events(contexts, experts, predicted, scores) -> Events:
    return Events(np.stack([unit(c) for c in contexts]), np.asarray(experts, np.int16),
                  np.asarray(predicted, np.float32), np.asarray(scores, np.float32))


def test_without_events_the_posterior_is_the_prior():
    empty = Events(np.zeros((0, 3), np.float32), np.zeros(0, np.int16), np.zeros(0, np.float32), np.zeros(0, np.float32))
    corr = correction(empty, unit([1, 0, 0]), np.array([0, 1]), np.array([0.5, 0.5]), SLOPE)
    assert np.all(corr.mean == 0) and np.allclose(corr.std, PRIOR_STD) and np.all(corr.evidence == 0)


def test_identical_prompts_pull_the_mean_toward_their_residual_and_shrink_the_std():
    here = [1.0, 0.0, 0.0]
    few = correction(events([here] * 2, [1, 1], [0.8, 0.8], [0.3, 0.3]), unit(here), np.array([0, 1]), np.array([0.6, 0.8]), OFFSET)
    many = correction(events([here] * 8, [1] * 8, [0.8] * 8, [0.3] * 8), unit(here), np.array([0, 1]), np.array([0.6, 0.8]), OFFSET)
    assert few.mean[0] == 0 and few.std[0] == PRIOR_STD  # expert 0 has no events: untouched
    assert np.isclose(few.mean[1], -0.5 * 2 / 6) and np.isclose(many.mean[1], -0.5 * 8 / 12)
    assert many.std[1] < few.std[1] < PRIOR_STD


def test_dissimilar_events_do_not_count_and_only_the_nearest_k_do():
    here, far = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]  # cosine 0 < min_similarity
    assert correction(events([far] * 5, [0] * 5, [0.5] * 5, [1.0] * 5), unit(here), np.array([0]), np.array([0.5]), OFFSET).evidence[0] == 0
    near = [[1.0, 0.05 * i, 0.0] for i in range(20)]
    corr = correction(events(near, [0] * 20, [0.5] * 20, [0.5] * 8 + [1.0] * 12), unit(here), np.array([0]), np.array([0.5]), OFFSET)
    assert corr.mean[0] == 0.0  # the 8 nearest all scored as predicted; the 12 farther ones are not among them


def test_uniform_weights_average_the_nearest_k_alike_whatever_their_similarity():
    uniform = OFFSET.model_copy(update={"neighbor_weight": "uniform", "num_neighbors": 2})
    here, near, farther, farthest = [1.0, 0.0], [1.0, 0.1], [1.0, 0.9], [1.0, 0.95]
    corr = correction(events([near, farther, farthest], [0, 0, 0], [0.5] * 3, [1.0, 0.0, 1.0]), unit(here), np.array([0]),
                      np.array([0.5]), uniform)
    assert np.isclose(corr.mean[0], (0.5 + -0.5) / (4 + 2)) and corr.evidence[0] == 2  # the two nearest, one each; not the third
    linear = correction(events([near, farther], [0, 0], [0.5] * 2, [1.0, 0.0]), unit(here), np.array([0]), np.array([0.5]), OFFSET)
    assert linear.mean[0] > corr.mean[0]  # linear weights trust the nearer event more


def test_weights_fall_with_distance():
    close, midway = [1.0, 0.1], [1.0, 0.9]
    corr = correction(events([close, midway], [0, 0], [0.5, 0.5], [1.0, 0.0]), unit([1.0, 0.0]), np.array([0]), np.array([0.5]), OFFSET)
    assert corr.mean[0] > 0


def _varied(rng, scores_follow_predictions: bool, n: int = 200):
    predicted = rng.uniform(0.2, 0.8, n)
    scores = predicted + rng.normal(0, 0.05, n) if scores_follow_predictions else np.full(n, 0.5) + rng.normal(0, 0.05, n)
    return events([[1.0, 0.0]] * n, [0] * n, predicted, scores)


def test_the_slope_keeps_the_routers_per_prompt_differences_only_where_they_hold(rng=np.random.default_rng(5)):
    here = unit([1.0, 0.0])
    # Scores track the router's predictions: a prompt predicted at 0.8 keeps about 0.8.
    informative = correction(_varied(rng, True), here, np.array([0]), np.array([0.8]), SLOPE)
    assert abs(informative.mean[0]) < 0.05
    # Scores are 0.5 whatever the router says (a task it never saw): 0.8 is corrected to about 0.5 —
    # which a pure offset (slope fixed at 1) cannot do: it only moves the average.
    noise = _varied(rng, False)
    assert abs(0.8 + correction(noise, here, np.array([0]), np.array([0.8]), SLOPE).mean[0] - 0.5) < 0.05
    assert correction(noise, here, np.array([0]), np.array([0.8]), SLOPE.model_copy(update={"slope_prior_var": 0.0})).mean[0] > -0.2


def test_a_slope_held_at_0_moves_toward_the_local_mean_score_where_an_offset_keeps_the_routers_guess():
    here = [1.0, 0.0]
    varied = events([here] * 8, [0] * 8, np.linspace(0.2, 0.8, 8), [0.5] * 8)  # scores ignore the router's guesses
    local_mean = correction(varied, unit(here), np.array([0]), np.array([0.9]), OFFSET.model_copy(update={"slope_prior_mean": 0.0}))
    offset = correction(varied, unit(here), np.array([0]), np.array([0.9]), OFFSET)
    assert np.isclose(0.9 + local_mean.mean[0], 0.9 + 8 * (0.5 - 0.9) / 12)  # shrunk from 0.9 toward 0.5 by 8 events against 4
    assert np.isclose(offset.mean[0], 0.0, atol=1e-6)  # on average the router was right: its 0.9 stands
    # A per-call b₀ (what `slope_prior_by_confidence` passes) is the same as the settings' b₀.
    as_setting = OFFSET.model_copy(update={"slope_prior_mean": 0.0})
    assert np.allclose(correction(varied, unit(here), np.array([0]), np.array([0.9]), OFFSET, slope_prior_mean=0.0).mean,
                       local_mean.mean)
    assert np.allclose(correction(varied, unit(here), np.array([0]), np.array([0.9]), as_setting, slope_prior_mean=1.0).mean,
                       offset.mean)


@hypothesis_settings(deadline=None)
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


def _reference(events: Events, context, experts, predicted, settings) -> np.ndarray:
    """The posterior mean, one expert at a time, straight from the module docstring's model."""
    out = np.zeros(len(experts))
    sims = events.contexts @ context
    for c, j in enumerate(experts):
        mine = [i for i in np.argsort(-sims, kind="stable") if events.experts[i] == j and sims[i] >= settings.min_similarity]
        mine = mine[: settings.num_neighbors]
        w = (sims[mine] - settings.min_similarity) / (1 - settings.min_similarity)
        if settings.neighbor_weight == "uniform":
            w = np.ones(len(mine))
        phi = np.stack([np.ones(len(mine)), events.predicted[mine] - predicted[c]], axis=1)
        prior_precision = np.diag([settings.prior_events, settings.noise_var / settings.slope_prior_var])
        a = prior_precision + (phi * w[:, None]).T @ phi
        r = prior_precision @ np.array([predicted[c], settings.slope_prior_mean]) + (phi * w[:, None]).T @ events.scores[mine]
        out[c] = np.linalg.solve(a, r)[0] - predicted[c]
    return out


@hypothesis_settings(deadline=None)  # no timing in tests: on two shared cores one example can take longer than 200 ms
@given(st.integers(0, 2**32 - 1))
def test_the_vectorised_correction_is_the_model(seed):
    rng = np.random.default_rng(seed)
    n, dims = int(rng.integers(1, 60)), 4
    ev = Events(np.stack([unit(v) for v in rng.normal(size=(n, dims))]), rng.integers(0, 5, n).astype(np.int16),
                rng.uniform(0, 1, n).astype(np.float32), rng.integers(0, 2, n).astype(np.float32))
    settings = SLOPE.model_copy(update={"num_neighbors": int(rng.integers(1, 10)), "min_similarity": float(rng.uniform(-0.5, 0.8)),
                                        "slope_prior_mean": float(rng.choice([0.0, 0.5, 1.0])),
                                        "neighbor_weight": str(rng.choice(["linear", "uniform"]))})
    experts, predicted = np.array([4, 0, 2]), rng.uniform(0, 1, 3)
    context = unit(rng.normal(size=dims))
    got = correction(ev, context, experts, predicted, settings).mean
    assert np.allclose(got, _reference(ev, context, experts, predicted, settings), atol=1e-5)


LINKED = OnlineLearningConfig(min_similarity=0.5, prior_events=4.0, noise_var=0.1, slope_prior_var=0.0, expert_correlation=0.8)
PEERS = np.array([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
"""Experts 0 and 1 err together on the training data; expert 2 errs on its own."""


def test_feedback_on_one_expert_moves_its_correlated_peer_and_not_the_others():
    low = events([[1, 0, 0]] * 20, [0] * 20, [0.8] * 20, [0.2] * 20)  # expert 0 scores 0.6 below the router, here
    here = unit([1, 0, 0])
    linked = correction(low, here, np.arange(3), np.full(3, 0.8), LINKED, PEERS)
    alone = correction(low, here, np.arange(3), np.full(3, 0.8), LINKED.model_copy(update={"expert_correlation": 0.0}), PEERS)
    assert alone.mean[1] == 0 and alone.mean[2] == 0  # independent: the untried keep the router's prediction
    assert linked.mean[1] < -0.2 and abs(linked.mean[2]) < 1e-9  # linked: the peer falls, the unrelated one does not
    assert linked.std[1] < alone.std[1] and np.isclose(linked.std[2], alone.std[2])
    assert np.isclose(linked.mean[0], alone.mean[0], atol=0.02)  # the tried expert's own evidence still dominates


@hypothesis_settings(deadline=None)
@given(st.integers(0, 2**32 - 1), st.just(0.0) | st.floats(1e-4, 1.0))
def test_the_linked_posterior_without_correlation_is_the_independent_one(seed, slope_var):
    """The joint solve (each slope eliminated) is the per-expert closed form when the prior links nothing."""
    rng = np.random.default_rng(seed)
    n, m = 40, 4
    evs = events(rng.normal(1.0, 0.5, (n, 3)), rng.integers(0, m, n), rng.uniform(0, 1, n), rng.uniform(0, 1, n))
    settings = OnlineLearningConfig(min_similarity=0.0, slope_prior_var=slope_var, expert_correlation=0.5)
    args = (evs, unit([1, 1, 1]), np.arange(m), rng.uniform(0, 1, m))
    linked = correction(*args, settings, np.eye(m))
    alone = correction(*args, settings.model_copy(update={"expert_correlation": 0.0}), np.eye(m))
    assert np.allclose(linked.mean, alone.mean) and np.allclose(linked.std, alone.std)


def test_residual_correlation_is_a_correlation_of_the_routers_errors():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=500)
    scores = np.stack([shared + 0.1 * rng.normal(size=500), shared + 0.1 * rng.normal(size=500), rng.normal(size=500),
                       np.zeros(500)], axis=1)
    corr = residual_correlation(np.zeros_like(scores), scores)
    assert corr[0, 1] > 0.95 and abs(corr[0, 2]) < 0.15 and np.allclose(np.diag(corr), 1) and np.allclose(corr, corr.T)
    assert not corr[3, :3].any()  # an expert whose residual never varies correlates with nothing
