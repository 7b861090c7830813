"""Exploration's rule on its own: what an exploring decision offers, when it spends budget, and the bound."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online.exploration import ExplorationBudget, explore

RULE = OnlineLearningConfig(exploration="optimistic", explore_fraction=0.5, explore_min_evidence=3.0, explore_ucb_sd=0.0)
"""Forced exploration of the under-tried alone (no optimism for the tried), to see it on its own."""
OPEN = ExplorationBudget(10, 0)  # room to explore


def test_an_under_tried_expert_the_router_rates_worst_is_offered_above_the_rest():
    mean, std = np.array([0.9, 0.1, 0.6]), np.full(3, 0.1)
    step = explore(mean, std, np.array([20.0, 0.0, 20.0]), OPEN, RULE, np.random.default_rng(0))
    assert step.is_exploring and step.offered == (1,)
    assert int(np.argmax(step.quality)) == 1 and step.quality[0] == 0.9 and step.quality[2] == 0.6


def test_the_least_tried_of_several_under_tried_experts_comes_first():
    step = explore(np.array([0.9, 0.2, 0.1]), np.full(3, 0.1), np.array([20.0, 2.0, 0.5]), OPEN, RULE, np.random.default_rng(0))
    assert step.offered == (1, 2) and int(np.argmax(step.quality)) == 2 and step.quality[1] > 0.9


def test_nothing_to_explore_spends_no_budget_and_routes_on_the_mean():
    mean = np.array([0.9, 0.1, 0.6])
    step = explore(mean, np.full(3, 0.01), np.full(3, 50.0), OPEN, RULE, np.random.default_rng(0))
    assert not step.is_exploring and step.offered == () and np.array_equal(step.quality, mean)


def test_optimism_offers_a_tried_expert_whose_upper_bound_beats_the_best_mean():
    ucb = RULE.model_copy(update={"explore_ucb_sd": 2.0})
    mean, std, evidence = np.array([0.7, 0.6, 0.2]), np.array([0.02, 0.1, 0.1]), np.full(3, 50.0)
    step = explore(mean, std, evidence, OPEN, ucb, np.random.default_rng(0))
    assert step.is_exploring and step.offered == (1,) and int(np.argmax(step.quality)) == 1


def test_an_empty_budget_never_explores():
    step = explore(np.array([0.9, 0.1]), np.full(2, 0.1), np.zeros(2), ExplorationBudget(10, 5), RULE, np.random.default_rng(0))
    assert not step.is_exploring


def test_thompson_samples_within_the_budget():
    thompson = RULE.model_copy(update={"exploration": "thompson"})
    mean = np.array([0.5, 0.5])
    step = explore(mean, np.full(2, 0.2), np.full(2, 50.0), OPEN, thompson, np.random.default_rng(0))
    assert step.is_exploring and not np.array_equal(step.quality, mean) and np.all((0 <= step.quality) & (step.quality <= 1))


@hypothesis_settings(deadline=None)
@given(st.floats(0.0, 1.0), st.lists(st.floats(0.0, 6.0), max_size=200))
def test_explored_decisions_never_exceed_the_bound(fraction, evidences):
    """Each step: one expert's evidence near the prompt (below 3: under-tried, something to explore)."""
    settings = RULE.model_copy(update={"explore_fraction": fraction})
    budget, rng = ExplorationBudget(), np.random.default_rng(0)
    for evidence in evidences:
        step = explore(np.array([0.8, 0.3]), np.full(2, 0.1), np.array([50.0, evidence]), budget, settings, rng)
        assert step.is_exploring == (evidence < 3.0 and budget.allows_sample(fraction))
        budget = budget.after(step.is_exploring)
        assert budget.num_sampled <= fraction * budget.num_decisions + 1e-9


TOP_TWO = OnlineLearningConfig(exploration="top_two", explore_fraction=0.5)


def test_top_two_spends_exploration_on_the_close_challenger_not_on_hopeless_experts():
    """The leader 0.80 and a challenger 0.78 are close; an untried expert the router rates 0.45 has the prior's
    wide posterior, and one at 0.05 none at all. The optimistic rule always tries the untried one (its upper
    bound, 0.81, is the highest); top-two tries each in proportion to its chance of being best: the challenger
    most, the hopeless one never."""
    mean, std, evidence = np.array([0.80, 0.78, 0.45, 0.05]), np.array([0.03, 0.02, 0.36, 0.03]), np.array([80.0, 60.0, 0.0, 60.0])
    rng = np.random.default_rng(0)
    tried = [explore(mean, std, evidence, OPEN, TOP_TWO, rng) for _ in range(400)]
    counts = np.bincount([s.offered[0] for s in tried if s.is_exploring], minlength=4)
    assert counts[1] > counts[2] > 0 and counts[0] == counts[3] == 0
    assert all(int(np.argmax(s.quality)) == s.offered[0] for s in tried if s.is_exploring)
    optimistic = explore(mean, std, evidence, OPEN, OnlineLearningConfig(explore_fraction=0.5), rng)
    assert int(np.argmax(optimistic.quality)) == 2


def test_top_two_does_not_explore_when_the_leader_is_clearly_best():
    mean = np.array([0.9, 0.5, 0.4])
    step = explore(mean, np.full(3, 0.02), np.full(3, 50.0), OPEN, TOP_TWO, np.random.default_rng(0))
    assert not step.is_exploring and step.offered == () and np.array_equal(step.quality, mean)


@hypothesis_settings(deadline=None)
@given(st.floats(0.0, 1.0), st.lists(st.floats(0.0, 0.3), max_size=200))
def test_top_two_never_exceeds_the_bound(fraction, gaps):
    """Each step: how far the challenger's mean lies below the leader's (close: something to explore)."""
    settings = TOP_TWO.model_copy(update={"explore_fraction": fraction})
    budget, rng = ExplorationBudget(), np.random.default_rng(0)
    for gap in gaps:
        step = explore(np.array([0.8, 0.8 - gap]), np.full(2, 0.05), np.full(2, 50.0), budget, settings, rng)
        assert not step.is_exploring or budget.allows_sample(fraction)
        budget = budget.after(step.is_exploring)
        assert budget.num_sampled <= fraction * budget.num_decisions + 1e-9
