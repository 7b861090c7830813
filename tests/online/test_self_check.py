"""The correction's self-check (`router.online.self_check_neighbors`): every feedback event is first predicted by
the correction from the events before it, and near a prompt the correction is scaled down where that record
says it predicted worse than the router — `correction.event_gain`, `correction.self_check`, and the learner."""

from __future__ import annotations

import math

import numpy as np
import pytest

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import OnlineLearner
from switchboard.online.correction import Events, event_gain, self_check, unit
from switchboard.router import load_default_router

CHECK = OnlineLearningConfig(min_similarity=0.3, self_check_neighbors=2)


def test_an_events_gain_is_positive_where_the_correction_moved_toward_the_score_and_negative_where_away():
    assert event_gain(1.0, 0.5, 0.8) == pytest.approx(0.25 - 0.04)
    assert event_gain(0.0, 0.5, 0.8) == pytest.approx(0.25 - 0.64)
    assert event_gain(0.7, 0.7, 0.7) == 0.0


def record(contexts, gains) -> Events:
    n = len(gains)
    return Events(np.stack([unit(c) for c in contexts]), np.zeros(n, np.int16), np.full(n, 0.5, np.float32),
                  np.full(n, 0.5, np.float32), None, np.asarray(gains, np.float32))


def test_the_share_is_two_phi_of_the_weighted_t_statistic_of_the_nearest_events_gains_capped_at_one():
    here = unit([1.0, 0.0])
    other = [0.65, math.sqrt(1 - 0.65**2)]  # cosine 0.65 with `here`: weight (0.65 − 0.3) / 0.7 = 0.5
    far = [0.0, 1.0]  # below min_similarity: never counts
    ev = record([[1.0, 0.0], other, far], [-0.2, 0.1, -5.0])
    w, g = np.array([1.0, 0.5]), np.array([-0.2, 0.1])
    z = float(np.sum(w * g) / np.sqrt(np.sum(w * w * g * g)))
    assert self_check(ev, here, CHECK) == pytest.approx(1.0 + math.erf(z / math.sqrt(2.0)))
    assert self_check(record([[1.0, 0.0], other], [0.2, -0.1]), here, CHECK) == 1.0  # it helped here: whole
    # Only the `self_check_neighbors` most similar count: a third, less similar event with a large gain is left out.
    third = [0.5, math.sqrt(1 - 0.25)]
    assert self_check(record([[1.0, 0.0], other, third], [-0.2, 0.1, 9.0]), here, CHECK) == pytest.approx(
        1.0 + math.erf(z / math.sqrt(2.0)))


def test_the_share_is_one_with_the_check_off_with_no_record_or_with_nothing_near():
    here = unit([1.0, 0.0])
    ev = record([[1.0, 0.0]], [-0.3])
    assert self_check(ev, here, CHECK) == pytest.approx(1.0 + math.erf(-1.0 / math.sqrt(2.0)))  # z = −1: ≈ 0.32
    assert self_check(ev, here, OnlineLearningConfig(min_similarity=0.3)) == 1.0  # off (the default)
    assert self_check(Events(ev.contexts, ev.experts, ev.predicted, ev.scores), here, CHECK) == 1.0  # no gains kept
    assert self_check(ev, unit([0.0, 1.0]), CHECK) == 1.0  # nothing near
    assert self_check(record([[1.0, 0.0]], [0.0]), here, CHECK) == 1.0  # a record without a verdict


@pytest.fixture(scope="module")
def router():
    return load_default_router()


def regions(router) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows A and B of the router's width, cosine 0.45 apart, and a prediction of 0.5 for every expert."""
    dims, num_experts = router.features(["x"]).shape[1], len(router.experts)
    b = np.zeros(dims, np.float32)
    b[1] = 1.0
    a = np.zeros(dims, np.float32)
    a[0], a[1] = 1.0, 0.5
    return a, b, np.full(num_experts, 0.5, np.float32)


def feed(learner: OnlineLearner, a: np.ndarray, b: np.ndarray, predictions: np.ndarray) -> None:
    """Expert 0's feedback: 20 scores of 1 at B (the router's 0.5 is wrong there), then 20 alternating 1 and 0 at A
    (right there)."""
    for _ in range(20):
        learner.add_event("t", b, 0, predictions, 1.0)
    for i in range(20):
        learner.add_event("t", a, 0, predictions, float(i % 2 == 0))


def test_feedback_from_a_new_kind_of_prompt_stops_moving_a_nearby_familiar_one_once_its_own_feedback_disagrees(router):
    """Region B is a kind the router misjudges (it predicts 0.5, every score is 1); region A, near B (cosine 0.45),
    is one it judges right (0.5 predicted, scores alternate 1 and 0). Without the check, B's feedback pulls A's
    estimate up; with it, A's own events — predicted worse by the pulled correction than by the router — scale the
    pull down by the share their record gives, and B keeps its whole correction."""
    a, b, predictions = regions(router)
    estimates = {}
    for k in (0, 32):
        online = OnlineLearner(router, OnlineLearningConfig(explore_fraction=0.0, self_check_neighbors=k),
                               np.random.default_rng(0))
        feed(online, a, b, predictions)
        estimates[k] = (online.posterior_mean("t", a, predictions)[0], online.posterior_mean("t", b, predictions)[0])
        record = online._tenants["t"].events()
        share_at_a, share_at_b = self_check(record, unit(a), online.settings), self_check(record, unit(b), online.settings)
        gains = record.gains
        if k == 0:
            assert not gains.any()  # off: nothing computed
        else:
            assert gains[0] == 0.0 and (gains[1:20] > 0).all()  # B: the correction learned its scores
            assert gains[20:].mean() < 0  # A: the correction, pulled by B, predicted A's scores worse
            assert share_at_a < 0.8 and share_at_b == 1.0
    (a_off, b_off), (a_on, b_on) = estimates[0], estimates[32]
    assert a_off > 0.55  # B's pull on A
    assert a_on - 0.5 == pytest.approx(share_at_a * (a_off - 0.5))
    assert b_on == pytest.approx(b_off) and b_on > 0.8


def test_a_tolerance_shifts_the_statistic_so_weak_evidence_against_the_correction_keeps_it_whole():
    here = unit([1.0, 0.0])
    ev = record([[1.0, 0.0]], [-0.3])  # one event against: z = −1
    tolerant = OnlineLearningConfig(min_similarity=0.3, self_check_neighbors=2, self_check_tolerance_sd=1.0)
    assert self_check(ev, here, tolerant) == 1.0
    two_against = record([[1.0, 0.0], [1.0, 0.0]], [-0.3, -0.3])  # z = −√2
    assert self_check(two_against, here, tolerant) == pytest.approx(1.0 + math.erf((1.0 - math.sqrt(2.0)) / math.sqrt(2.0)))


def test_against_a_more_local_correction_the_served_one_blends_toward_it_where_the_record_prefers_it(router):
    """The same two regions, the check now against the correction fitted on events at cosine ≥ 0.6 only (region A's
    own): A's events record that the broad correction, pulled by B, predicted them worse than A's local one did,
    so A is served a blend γ·broad + (1 − γ)·local, closer to A's own scores than the broad correction alone."""
    a, b, predictions = regions(router)
    settings = OnlineLearningConfig(explore_fraction=0.0, self_check_neighbors=32, self_check_alternative_similarity=0.6)
    online = OnlineLearner(router, settings, np.random.default_rng(0))
    broad_only = OnlineLearner(router, OnlineLearningConfig(explore_fraction=0.0), np.random.default_rng(0))
    local_only = OnlineLearner(router, OnlineLearningConfig(explore_fraction=0.0, min_similarity=0.6), np.random.default_rng(0))
    for learner in (online, broad_only, local_only):
        feed(learner, a, b, predictions)
    record = online._tenants["t"].events()
    assert record.gains[20:].mean() < 0  # on A, the broad correction did worse than the local one
    share = self_check(record, unit(a), settings)
    assert share < 0.8
    broad, local = (x.posterior_mean("t", a, predictions)[0] for x in (broad_only, local_only))
    assert abs(local - 0.5) < abs(broad - 0.5)  # A's own scores average 0.5: the local correction is nearer
    assert online.posterior_mean("t", a, predictions)[0] == pytest.approx(share * broad + (1 - share) * local)
    assert record.gains[1:20] == pytest.approx(np.zeros(19), abs=1e-6)  # on B, before A's events, the two corrections were the same
