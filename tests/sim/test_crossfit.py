"""Cross-fitted router predictions (`sim/crossfit.py`): no prompt is predicted by a router that saw its scores."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.sim.crossfit import cross_fitted_quality
from switchboard.sim.quality import routing_inputs
from switchboard.sim.workload import NO_PROMPT, Workload, load_routing_data


def small_data(num_prompts: int = 45):
    data = load_routing_data()
    rows = np.random.default_rng(3).choice(len(data), num_prompts, replace=False)
    return dataclasses.replace(data, prompts=tuple(data.prompts[i] for i in rows), tasks=tuple(data.tasks[i] for i in rows),
                               scores=data.scores[rows].copy())


def test_a_prompts_own_scores_never_reach_its_prediction(tmp_path):
    data = small_data()
    before = cross_fitted_quality(data, num_folds=3, cache_dir=tmp_path)
    assert before.shape == (len(data), len(data.model_names)) and np.all((before >= 0) & (before <= 1))
    # A leak — row 0 in the training folds of its own router — would move row 0's prediction with its scores.
    poisoned = dataclasses.replace(data, scores=data.scores.copy())
    poisoned.scores[0] = 1.0 - poisoned.scores[0]
    after = cross_fitted_quality(poisoned, num_folds=3, cache_dir=tmp_path)
    assert np.allclose(after[0], before[0])
    assert not np.allclose(np.delete(after, 0, axis=0), np.delete(before, 0, axis=0))  # the other folds' routers did see it


def test_predictions_are_cached_by_content_and_fed_to_the_simulator(tmp_path):
    data = small_data()
    first = cross_fitted_quality(data, num_folds=3, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("crossfit-*.npy"))) == 1
    assert np.array_equal(cross_fitted_quality(data, num_folds=3, cache_dir=tmp_path), first)
    prompts = np.array([2, NO_PROMPT, 2, 7], np.int32)
    workload = Workload.from_arrays(np.arange(4.0), np.full(4, 10), np.full(4, 5), prompt_index=prompts)
    experts = (data.model_names[3], data.model_names[0])
    inputs = routing_inputs(workload, data, experts, predicted_by_prompt=first)
    assert np.allclose(inputs.predicted[0], first[2, [3, 0]]) and np.allclose(inputs.predicted[3], first[7, [3, 0]])
