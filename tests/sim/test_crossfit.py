"""Cross-fitted router predictions (`sim/crossfit.py`): no prompt is predicted by a router that saw its scores."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.persist import load_default_router
from switchboard.sim.crossfit import cross_fitted
from switchboard.sim.quality import routing_inputs
from switchboard.sim.runner import RoutingInputs
from switchboard.sim.workload import NO_PROMPT, Workload, load_routing_data


def small_data(num_prompts: int = 45):
    data = load_routing_data()
    rows = np.random.default_rng(3).choice(len(data), num_prompts, replace=False)
    return dataclasses.replace(data, prompts=tuple(data.prompts[i] for i in rows), tasks=tuple(data.tasks[i] for i in rows),
                               scores=data.scores[rows].copy())


def test_a_prompts_own_scores_never_reach_its_prediction(tmp_path):
    data = small_data()
    before = cross_fitted(data, num_folds=3, cache_dir=tmp_path).quality
    assert before.shape == (len(data), len(data.model_names)) and np.all((before >= 0) & (before <= 1))
    # A leak — row 0 in the training folds of its own router — would move row 0's prediction with its scores.
    poisoned = dataclasses.replace(data, scores=data.scores.copy())
    poisoned.scores[0] = 1.0 - poisoned.scores[0]
    after = cross_fitted(poisoned, num_folds=3, cache_dir=tmp_path).quality
    assert np.allclose(after[0], before[0])
    assert not np.allclose(np.delete(after, 0, axis=0), np.delete(before, 0, axis=0))  # the other folds' routers did see it


def test_predictions_are_cached_by_content_and_fed_to_the_simulator(tmp_path):
    data = small_data()
    first = cross_fitted(data, num_folds=3, cache_dir=tmp_path).quality
    assert len(list(tmp_path.glob("crossfit-*.npz"))) == 1
    assert np.array_equal(cross_fitted(data, num_folds=3, cache_dir=tmp_path).quality, first)
    prompts = np.array([2, NO_PROMPT, 2, 7], np.int32)
    workload = Workload.from_arrays(np.arange(4.0), np.full(4, 10), np.full(4, 5), prompt_index=prompts)
    experts = (data.model_names[3], data.model_names[0])
    inputs = routing_inputs(workload, data, experts, predicted_by_prompt=first)
    assert np.allclose(inputs.predicted[0], first[2, [3, 0]]) and np.allclose(inputs.predicted[3], first[7, [3, 0]])


def test_the_conservative_rule_reaches_every_plane_as_judged_quality():
    """`RoutingInputs.judged` lowers a cheaper expert than each request's prior choice by its margin, as
    `Router.route` does before the fleet-aware choice; the prior choice moves with λ."""
    inputs = RoutingInputs(np.array([[0.75, 0.5, 0.7], [0.75, 0.5, 0.7]]), np.zeros((2, 3)),
                           caution_prior=np.array([[0.4, 0.5, 0.7]] * 2), caution_margin=np.array([[0.3], [0.0]]))
    price = np.array([0.1, 0.2, 0.9])
    judged = inputs.judged(price, 0.0)
    assert np.allclose(judged.predicted, [[0.45, 0.2, 0.7], [0.75, 0.5, 0.7]]) and judged.caution_margin is None
    # At λ = 1 the prior choice is `cheap` (0.4 − 0.1 beats 0.5 − 0.2 and 0.7 − 0.9): nothing is cheaper.
    assert np.allclose(inputs.judged(price, 1.0).predicted, inputs.predicted)
    assert RoutingInputs(inputs.predicted, inputs.true).judged(price, 0.0).predicted is inputs.predicted


def test_cross_fitted_rules_are_fed_per_prompt_with_none_for_requests_without_one(tmp_path):
    data = small_data()
    fitted = cross_fitted(data, num_folds=3, cache_dir=tmp_path)
    margin_cap = load_default_router().caution_margin
    assert fitted.prior.shape == fitted.quality.shape and fitted.margin.shape == (len(data), 1)
    assert np.all((fitted.margin >= 0) & (fitted.margin <= margin_cap + 1e-12))
    assert len(np.unique(fitted.prior, axis=0)) == 3  # one prior per fold: its training part's mean scores
    prompts = np.array([2, NO_PROMPT, 7], np.int32)
    workload = Workload.from_arrays(np.arange(3.0), np.full(3, 10), np.full(3, 5), prompt_index=prompts)
    experts = (data.model_names[3], data.model_names[0])
    inputs = routing_inputs(workload, data, experts, predicted_by_prompt=fitted.quality,
                            caution_by_prompt=fitted.caution)
    assert np.allclose(inputs.caution_prior[0], fitted.prior[2, [3, 0]])
    assert inputs.caution_margin[1, 0] == 0.0 and inputs.caution_margin[2, 0] == fitted.margin[7, 0]
