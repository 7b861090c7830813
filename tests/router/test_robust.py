"""Training across tasks (Group DRO, V-REx) and the task-averaged kNN prior (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.router.nested import Candidate
from switchboard.router.strategies import StrategyName
from switchboard.router.strategies.ensemble import EnsembleModel
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel
from switchboard.router.strategies.robust import TaskObjective, TaskReweighting, row_bce, task_ids

from .helpers import synthetic_xy


def _two_tasks(rng: np.random.Generator, n: int = 600, minor_share: float = 0.1):
    """A major task where expert 0 wins when x0 > 0, and a minor one (marked by x1 ≈ 3) where it is the reverse."""
    x, y = synthetic_xy(rng, n=n)
    minor = np.arange(n) < int(n * minor_share)
    x[minor, 1] = 3.0 + 0.1 * rng.normal(size=minor.sum())
    y[minor, :2] = y[minor][:, ::-1][:, 1:]  # swap who wins
    return x, y, np.where(minor, 1, 0)


def test_task_ids_are_dense_and_follow_the_names():
    assert task_ids(["b", "a", "b", "c"]).tolist() == [1, 0, 1, 2]


def test_warmup_is_task_balanced_then_dro_leans_toward_the_worse_task():
    y = np.tile(np.asarray([[1.0, 0.0], [0.0, 1.0]], np.float32), (10, 1))
    groups = np.asarray([0] * 18 + [1] * 2)
    rw = TaskReweighting(TaskObjective.DRO, 0.05, groups, y, warmup_steps=1)
    idx = np.arange(20)
    scale = rw.row_scale(idx, np.full(20, 0.5))
    # Each task's rows weigh the same in total: 18 rows of task 0 against 2 of task 1.
    assert scale[groups == 0].sum() == pytest.approx(scale[groups == 1].sum())
    losses = np.where(groups == 1, 2.0, 0.2)  # task 1 fitted far worse
    for _ in range(30):
        scale = rw.row_scale(idx, losses)
    weights = rw.task_weights()
    assert weights[1] > 5 * weights[0] and weights.sum() == pytest.approx(2.0)


def test_vrex_weighs_tasks_by_their_loss_above_the_mean():
    y = np.tile(np.asarray([[1.0, 0.0], [0.0, 1.0]], np.float32), (10, 1))
    groups = np.asarray([0, 1] * 10)
    rw = TaskReweighting(TaskObjective.VREX, 10.0, groups, y, warmup_steps=0)
    idx = np.arange(20)
    for _ in range(50):
        rw.row_scale(idx, np.where(groups == 1, 1.0, 0.5))
    w = rw.task_weights()
    # 1 + 2β (ℓ_g − mean ℓ): the task 0.5 above the other gets 1 + 2·10·0.25, the other 1 − 5 (extrapolation).
    assert w == pytest.approx([1 - 5.0, 1 + 5.0], abs=0.05)


def test_excess_loss_discounts_what_the_task_alone_explains():
    # Task 1's scores are coin flips (high loss whatever the model does); task 0's are fitted perfectly.
    rng = np.random.default_rng(0)
    y = np.concatenate([np.tile([[1.0, 0.0]], (50, 1)), (rng.random((50, 2)) < 0.5)]).astype(np.float32)
    groups = np.repeat([0, 1], 50)
    rw = TaskReweighting(TaskObjective.DRO, 0.05, groups, y, warmup_steps=0)
    task_mean = np.stack([y[groups == g].mean(0) for g in (0, 1)])
    for _ in range(50):  # a model as good as the task means: no task is fitted worse than the other
        rw.row_scale(np.arange(100), row_bce(task_mean[groups], y))
    assert rw.task_weights() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_group_dro_fits_a_minor_task_better_than_plain_training():
    rng = np.random.default_rng(3)
    x, y, groups = _two_tasks(rng)
    minor = groups == 1

    def minor_loss(model):
        return float(row_bce(model.predict(x[minor]), y[minor]).mean())

    plain = MlpModel.fit(x, y, np.random.default_rng(0), hidden=16, epochs=20)
    dro = MlpModel.fit(x, y, np.random.default_rng(0), hidden=16, epochs=20, groups=groups, task_objective="dro",
                       task_strength=0.01)
    assert minor_loss(dro) < minor_loss(plain) - 0.02


def test_task_objective_needs_groups(rng):
    x, y = synthetic_xy(rng, n=50)
    with pytest.raises(ValueError, match="groups"):
        MlpModel.fit(x, y, rng, task_objective="dro", task_strength=0.03)
    with pytest.raises(ValueError, match="groups"):
        KnnModel.fit(x, y, rng, prior_by_task=True)


def test_task_averaged_prior_weighs_tasks_not_prompts(rng):
    x, y, groups = _two_tasks(rng, n=400)
    knn = KnnModel.fit(x, y, rng, 10, groups=groups, prior_by_task=True)
    expected = (y[groups == 0].mean(0) + y[groups == 1].mean(0)) / 2
    np.testing.assert_allclose(knn.prior(), expected, rtol=1e-3)
    assert not np.allclose(knn.prior(), y.mean(0), atol=1e-3)
    # A prompt with no neighbour weight (far away, soft kNN) falls back to that prior; saved and loaded alike.
    soft = KnnModel.fit(x, y, rng, 10, prior_weight=4.0, temperature=0.01, groups=groups, prior_by_task=True)
    far = -soft.points[:1].astype(np.float32)
    np.testing.assert_allclose(soft.predict(far)[0], expected, atol=1e-3)
    np.testing.assert_allclose(KnnModel.from_arrays(soft.arrays()).predict(far), soft.predict(far), rtol=1e-6)
    old = {k: v for k, v in knn.arrays().items() if k != "prior_scores"}  # a router saved before the field
    np.testing.assert_allclose(KnnModel.from_arrays(old).prior(), y.mean(0), atol=1e-3)


def test_candidate_passes_task_ids_and_refuses_rows_without_tasks(rng):
    x, y, groups = _two_tasks(rng, n=200)
    tasks = ["minor" if g else "major" for g in groups]
    candidate = Candidate("ensemble-dro", StrategyName.ENSEMBLE,
                          {"num_neighbours": 10, "temperature": 0.05, "prior_by_task": True, "task_objective": "dro",
                           "task_strength": 0.03, "epochs": 4}, group_by_task=True)
    model = candidate.fit(x, y, np.random.default_rng(0), tasks)
    assert isinstance(model, EnsembleModel)
    np.testing.assert_allclose(model.knn.prior(), (y[groups == 0].mean(0) + y[groups == 1].mean(0)) / 2, rtol=1e-3)
    with pytest.raises(ValueError, match="task label"):
        candidate.fit(x, y, np.random.default_rng(0), None)


def test_format_ensemble_feeds_its_mlp_the_last_columns_only(rng):
    x, y = synthetic_xy(rng, n=300)
    # The winner is decided by the last column here, the kNN sees every column, the MLP only the last two.
    x[:, -1], x[:, 0] = x[:, 0], rng.normal(size=len(x))
    model = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=10, mlp_columns=2)
    assert model.mlp.w1.shape[0] == 2
    np.testing.assert_allclose(model.predict(x), (model.knn.predict(x) + model.mlp.predict(x[:, -2:])) / 2, rtol=1e-5)
    pos, neg = x[:, -1] > 0.5, x[:, -1] < -0.5
    mlp = model.mlp.predict(x[:, -2:])
    assert mlp[pos, 0].mean() > mlp[pos, 1].mean() and mlp[neg, 1].mean() > mlp[neg, 0].mean()
    again = EnsembleModel.from_arrays(model.arrays())
    assert again.mlp_columns == 2
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)
    plain = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=10)
    old = {k: v for k, v in plain.arrays().items() if k != "mlp_columns"}  # saved before the field: every column
    np.testing.assert_allclose(EnsembleModel.from_arrays(old).predict(x), plain.predict(x), rtol=1e-6)


def test_three_member_ensemble_averages_knn_mlp_and_format_mlp(rng):
    x, y = synthetic_xy(rng, n=300)
    model = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=10, format_columns=3)
    assert model.format_mlp is not None and model.format_mlp.w1.shape[0] == 3 and model.mlp.w1.shape[0] == x.shape[1]
    expected = (model.knn.predict(x) + model.mlp.predict(x) + model.format_mlp.predict(x[:, -3:])) / 3
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-5)
    again = EnsembleModel.from_arrays(model.arrays())
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6)


def test_router_train_chooses_among_the_format_candidates_and_serves_them(tmp_path, rng):
    from switchboard.router import load_router
    from switchboard.router.persist import builtin_static_dir
    from switchboard.router.pipeline import TASK_ROBUST_CANDIDATES, TrainSettings, train_router, write_router

    from .helpers import PRICES, synthetic_examples

    candidates = tuple(c for c in TASK_ROBUST_CANDIDATES if c.label.startswith("ensemble-format"))
    settings = TrainSettings(candidates=candidates, folds=2, calibration_folds=2, cache_dir=tmp_path / "cache")
    result = train_router(synthetic_examples(rng, 80), PRICES, settings)
    assert result.chosen_label.split("+")[0] in {"ensemble-format", "ensemble-format3"}
    router = load_router(write_router(result, tmp_path / "router", settings, 80, builtin_static_dir()))
    assert router.model.mlp_columns or router.model.format_columns
    prompts = ["Write a python function that returns the sorted list", "How long should I boil pasta?"]
    np.testing.assert_allclose(router.predict_quality(prompts), result.router.predict_quality(prompts), rtol=1e-5)


def test_the_ensembles_fit_params_retrain_its_shape():
    x, y = synthetic_xy(np.random.default_rng(2), n=120)
    model = EnsembleModel.fit(x, y, np.random.default_rng(0), num_neighbours=10, temperature=0.05, format_columns=3)
    params = EnsembleModel.from_arrays(model.arrays()).fit_params()  # what a saved router carries
    assert params["num_neighbours"] == 10 and params["format_columns"] == 3 and params["temperature"] == pytest.approx(0.05)
    again = EnsembleModel.fit(x, y, np.random.default_rng(1), **params)
    assert again.format_mlp is not None and again.format_columns == 3 and again.knn.num_neighbours == 10


def test_candidate_pool_expands_default_and_names_unknown_labels():
    from switchboard.router.pipeline import DEFAULT_CANDIDATES, PACKAGED_CANDIDATES, TrainSettings, candidate_pool

    assert candidate_pool("default") == DEFAULT_CANDIDATES
    assert candidate_pool("packaged") == PACKAGED_CANDIDATES == TrainSettings().candidates
    assert [c.label for c in PACKAGED_CANDIDATES] == ["ensemble-format3-task-gated"]
    pool = candidate_pool("default,ensemble-format3,ensemble")
    assert [c.label for c in pool] == [c.label for c in DEFAULT_CANDIDATES] + ["ensemble-format3"]
    with pytest.raises(ValueError, match="nope"):
        candidate_pool("ensemble,nope")


def test_the_cautious_format3_label_is_format3_under_the_conservative_rule():
    from switchboard.router.features import FEATURE_NAMES
    from switchboard.router.pipeline import CAUTION_MARGINS, candidate_pool

    plain, cautious = candidate_pool("ensemble-format3,ensemble-format3-cautious")
    assert cautious.label == "ensemble-format3-cautious"
    assert (cautious.strategy, dict(cautious.params)) == (plain.strategy, dict(plain.params))
    assert dict(cautious.params) == {"num_neighbours": 100, "temperature": 0.05, "format_columns": len(FEATURE_NAMES)}
    assert (cautious.calibrations, cautious.balance_tasks, cautious.group_by_task) == (
        plain.calibrations, plain.balance_tasks, plain.group_by_task)
    assert cautious.caution_margins == CAUTION_MARGINS and len(CAUTION_MARGINS) > 1 and 0.0 in CAUTION_MARGINS
    assert plain.caution_margins == (0.0,)  # the packaged one stays plain


def test_the_packaged_gated_candidate_is_the_task_stage_under_the_gated_rule():
    from switchboard.router.pipeline import GATED_CAUTION_MARGIN, candidate_pool

    staged, gated = candidate_pool("ensemble-format3-task,ensemble-format3-task-gated")
    assert (gated.strategy, dict(gated.params), gated.calibrations, gated.group_by_task, gated.tasks_optional) == (
        staged.strategy, dict(staged.params), staged.calibrations, staged.group_by_task, staged.tasks_optional)
    assert gated.caution_margins == (GATED_CAUTION_MARGIN,) and gated.caution_by_confidence
    assert staged.caution_margins == (0.0,) and not staged.caution_by_confidence
