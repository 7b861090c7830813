"""The router end to end on a small synthetic corpus with the real (built-in) static embedder, and the
packaged default router."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from switchboard.router import RouteOutcome, RoutingConstraints, load_default_router, load_router
from switchboard.router.cache import EmbeddingCache
from switchboard.router.data import RoutingExample, load_models
from switchboard.router.features import FEATURE_NAMES
from switchboard.router.nested import Candidate
from switchboard.router.pipeline import TASK_STAGE_POWER, TrainSettings, train_router, write_router
from switchboard.router.persist import RouterLoadError, builtin_static_dir
from switchboard.router.protocol import SplitKind
from switchboard.router.strategies import StrategyName

from .helpers import PRICES, synthetic_examples


@pytest.fixture
def trained(tmp_path, rng):
    settings = TrainSettings(strategy=StrategyName.LINEAR, calibration_folds=2, cache_dir=tmp_path / "cache")
    result = train_router(synthetic_examples(rng, 80), PRICES, settings)
    out = write_router(result, tmp_path / "router", settings, 80, builtin_static_dir())
    return load_router(out)


def test_routes_by_topic_and_cost(trained):
    code = "Write a python function that returns the sorted list of numbers"
    cooking = "How long should I boil pasta for this recipe?"
    assert trained.route(code).expert == "mid"
    assert trained.route(cooking).expert == "cheap"
    assert trained.route(code, RoutingConstraints(cost_weight=50.0)).expert == "cheap"


def test_candidates_constraints_and_outcomes(trained):
    prompt = "Write a python function that reverses a string"
    decision = trained.route(prompt, candidates=["big", "unknown-expert", "cheap"])
    assert decision.outcome is RouteOutcome.ROUTED and decision.expert in {"big", "cheap"}
    assert decision.skipped == ("unknown-expert",)
    assert {c.expert for c in decision.ranking} == {"big", "cheap"}
    capped = trained.route(prompt, RoutingConstraints(max_usd_per_mtok=0.15))
    assert capped.expert == "cheap" and [c.is_feasible for c in capped.ranking].count(True) == 1
    assert trained.route(prompt, RoutingConstraints(experts=frozenset({"big"}))).expert == "big"
    none = trained.route(prompt, RoutingConstraints(min_quality=1.0, max_usd_per_mtok=0.0))
    assert none.outcome is RouteOutcome.NO_FEASIBLE_EXPERT and none.expert is None
    assert trained.route(prompt, candidates=["nobody"]).outcome is RouteOutcome.NO_KNOWN_CANDIDATE
    header = json.loads(decision.header_value())
    assert header["expert"] == decision.expert and 0 <= header["predicted_quality"] <= 1


def test_predict_quality_shape_and_range(trained):
    q = trained.predict_quality(["a", "", "Write a python function"])
    assert q.shape == (3, 3) and np.all((q >= 0) & (q <= 1))


def test_training_reuses_the_embedding_cache(tmp_path, rng):
    examples = synthetic_examples(rng, 20)
    settings = TrainSettings(strategy=StrategyName.KNN, calibration_folds=2, cache_dir=tmp_path)
    router = train_router(examples, PRICES, settings).router
    cache = EmbeddingCache(tmp_path, router.embedder.name)
    calls = []
    cache.get_or_compute([e.prompt for e in examples] + ["new prompt"], lambda texts: calls.append(texts) or router.embedder.embed(texts))
    assert calls == [["new prompt"]]


def test_default_router_covers_shipped_experts(shipped_models_path):
    router = load_default_router()
    assert set(router.experts) == set(load_models(shipped_models_path))
    decision = router.route("What is 17 * 23? Answer with a number.")
    assert decision.outcome is RouteOutcome.ROUTED and len(decision.ranking) == len(router.experts)
    cheap = router.route("What is 17 * 23?", RoutingConstraints(cost_weight=100.0))
    assert cheap.chosen().usd_per_mtok == min(router.usd_per_mtok)


def test_the_packaged_router_is_the_ensemble_with_a_format_member_and_a_task_stage():
    router = load_default_router()  # `pipeline.PACKAGED_CANDIDATES`, docs/router.md
    assert router.strategy == "ensemble" and router.model.fit_params()["format_columns"] == len(FEATURE_NAMES)
    assert router.model.task_stage is not None and router.model.task_stage.task_means.shape == (14, len(router.experts))
    assert router.model.fit_params()["task_gate_power"] == TASK_STAGE_POWER


def test_rows_with_enough_tasks_are_chosen_on_and_reported_under_leave_one_task_out(tmp_path, rng):
    candidates = (Candidate("linear", StrategyName.LINEAR, {"epochs": 5}),)
    settings = TrainSettings(candidates=candidates, folds=3, calibration_folds=2, cache_dir=tmp_path / "cache")
    words = "pasta python boil sort list recipe oven function salt loop array bake".split()
    tasks = ("code", "cooking", "maths", "travel")
    tagged = [RoutingExample(f"{tasks[i % 4]}: {' '.join(rng.choice(words, 8))} {i}",
                             {"cheap": float(i % 4 == 1), "mid": float(i % 4 == 0), "big": float(rng.random() < 0.6)},
                             tasks[i % 4]) for i in range(80)]
    result = train_router(tagged, PRICES, settings)
    assert result.split is SplitKind.LEAVE_ONE_TASK_OUT and result.num_folds == 4
    assert set(result.chosen_per_fold) == {f"task:{t}" for t in tasks}
    report = json.loads((write_router(result, tmp_path / "r", settings, 80, builtin_static_dir()) / "router.json").read_text())["report"]
    assert report["split"] == "leave-one-task-out" and report["folds"] == 4
    # Two tasks cannot leave whole tasks out on 2 inner folds of a training part that holds one: task-balanced.
    examples = synthetic_examples(rng, 60)
    assert train_router(examples, PRICES, settings).split is SplitKind.TASK_BALANCED
    untagged = train_router([dataclasses.replace(e, task=None) for e in examples], PRICES, settings)
    assert untagged.split is SplitKind.RANDOM and untagged.num_folds == 3


def test_loading_a_non_router_dir_fails_clearly(tmp_path):
    with pytest.raises(RouterLoadError, match="router.json"):
        load_router(tmp_path)
