"""The task stage (`strategies.task_stage`): category first, then expert, blended into the ensemble by the task
classifier's confidence; trained from task labels where rows have them, and the ensemble alone where not."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.router.strategies.ensemble import EnsembleModel
from switchboard.router.strategies.robust import task_ids
from switchboard.router.strategies.task_stage import TaskStage
from switchboard.router.training import fit_calibrated_like

# Three tasks, each a cluster of prompts; on each task a different expert is right 90% of the time and the others
# 10%, independently per prompt, so per-prompt scores are noisy and each task's means are what to learn.
CENTRES = np.array([[4.0, 0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0, 0], [0, 0, 4.0, 0, 0, 0]], np.float32)


def clustered(rng: np.random.Generator, n: int = 600, centres: np.ndarray = CENTRES):
    labels = rng.integers(0, len(centres), n)
    x = (centres[labels] + rng.normal(0, 0.5, (n, centres.shape[1]))).astype(np.float32)
    right = np.eye(3, dtype=bool)[labels % 3]
    y = (rng.random((n, 3)) < np.where(right, 0.9, 0.1)).astype(np.float32)
    return x, y, [f"task{i}" for i in labels]


def test_the_stage_learns_the_task_and_predicts_its_mean_scores(rng):
    x, y, tasks = clustered(rng)
    groups = task_ids(tasks)
    stage = TaskStage.fit(x, y, groups, np.random.default_rng(0))
    estimate, confidence = stage.predict(x)
    assert np.allclose(stage.posterior(x).sum(axis=1), 1.0, atol=1e-5)
    for g in range(3):
        rows = groups == g
        np.testing.assert_allclose(stage.task_means[g], y[rows].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(estimate[rows].mean(axis=0), y[rows].mean(axis=0), atol=0.03)
    assert np.median(confidence) > 0.95
    # A prompt between two tasks' clusters is one the classifier is unsure of.
    between = ((CENTRES[0] + CENTRES[1]) / 2)[None, :]
    assert stage.predict(between)[1][0] < 0.8
    again = TaskStage.from_arrays(stage.arrays())
    np.testing.assert_allclose(again.predict(x)[0], estimate, rtol=1e-6)


def test_the_stage_needs_two_tasks(rng):
    x, y, _ = clustered(rng, n=50)
    with pytest.raises(ValueError, match="at least 2 tasks"):
        TaskStage.fit(x, y, np.zeros(len(x), np.int64), np.random.default_rng(0))


def test_the_ensemble_blends_the_stage_in_by_its_confidence_to_the_power(rng):
    x, y, tasks = clustered(rng)
    plain = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=20, format_columns=2)
    staged = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=20, format_columns=2,
                               groups=task_ids(tasks), task_gate_power=4.0)
    assert staged.task_stage is not None and staged.uses_tasks and not plain.uses_tasks
    probe = np.concatenate([x[:20], ((CENTRES[0] + CENTRES[1]) / 2)[None, :]])
    estimate, confidence = staged.task_stage.predict(probe)
    weight = confidence[:, None] ** 4
    # The same seed draws the same members before the stage, so the ensemble part is `plain`'s.
    expected = weight * estimate + (1 - weight) * plain.predict(probe)
    np.testing.assert_allclose(staged.predict(probe), expected, rtol=1e-5)
    assert weight[-1, 0] < 0.5 < weight[:20, 0].min()  # the unfamiliar prompt keeps mostly the ensemble's estimate
    again = EnsembleModel.from_arrays(staged.arrays())
    np.testing.assert_allclose(again.predict(probe), staged.predict(probe), rtol=1e-6)
    assert again.fit_params()["task_gate_power"] == 4.0
    # A router saved before the stage existed loads without one.
    assert EnsembleModel.from_arrays(plain.arrays()).task_stage is None and "task_gate_power" not in plain.fit_params()


def test_without_task_labels_the_task_candidate_trains_the_ensemble_alone(rng):
    from switchboard.router.pipeline import candidate_pool

    (candidate,) = candidate_pool("ensemble-format3-task")
    x, y, tasks = clustered(rng, n=200)
    assert candidate.fit(x, y, np.random.default_rng(0), tasks).task_stage is not None
    assert candidate.fit(x, y, np.random.default_rng(0), None).task_stage is None
    assert candidate.fit(x, y, np.random.default_rng(0), tasks[:-1] + [None]).task_stage is None
    assert candidate.fit(x, y, np.random.default_rng(0), ["one task"] * len(x)).task_stage is None


def test_retraining_a_staged_recipe_uses_the_rows_task_labels_and_drops_the_stage_without_them(rng):
    x, y, tasks = clustered(rng, n=240)
    recipe = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=20, groups=task_ids(tasks),
                               task_gate_power=4.0)
    with_tasks, _ = fit_calibrated_like(recipe, x, y, np.random.default_rng(1), tasks=tasks)
    assert with_tasks.task_stage is not None and with_tasks.task_gate_power == 4.0
    assert with_tasks.knn.num_neighbours == 20
    without, _ = fit_calibrated_like(recipe, x, y, np.random.default_rng(1))
    assert without.task_stage is None and without.knn.num_neighbours == 20


def test_router_train_says_when_the_rows_left_the_packaged_recipe_without_its_stage(tmp_path, rng):
    import dataclasses

    from switchboard.router.pipeline import TrainSettings, train_router

    from .helpers import PRICES, synthetic_examples

    settings = TrainSettings(folds=2, calibration_folds=2, cache_dir=tmp_path / "cache")  # the packaged recipe
    examples = synthetic_examples(rng, 60)
    with_tasks = train_router(examples, PRICES, settings)
    assert with_tasks.router.model.task_stage is not None and "without" not in with_tasks.chosen_label
    unlabelled = [dataclasses.replace(e, task=None) for e in examples]
    without = train_router(unlabelled, PRICES, settings)
    assert without.router.model.task_stage is None
    assert without.chosen_label.startswith("ensemble-format3-task") and "without its task stage" in without.chosen_label
