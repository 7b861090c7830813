"""Curve summaries on hand-made points."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.router.curves import CurvePoint, apgr, auc, cost_to_reach, frontier_at, sweep
from switchboard.router.evaluate import evaluate, format_table


def P(cost, quality):
    return CurvePoint(0.0, cost, quality)


def test_frontier_cost_and_area():
    points = [P(0.1, 0.5), P(0.5, 0.7), P(0.3, 0.6)]
    assert frontier_at(points, 0.05) == 0.5 and frontier_at(points, 0.4) == 0.6 and frontier_at(points, 1.0) == 0.7
    assert cost_to_reach(points, 0.6) == 0.3 and cost_to_reach(points, 0.9) is None
    assert auc([P(0.1, 0.5)], 0.1, 0.9) == pytest.approx(0.5)


def test_apgr_is_zero_for_weak_and_one_for_strong():
    weak, strong = P(0.1, 0.5), P(0.9, 0.6)
    assert apgr([weak], weak, strong) == pytest.approx(0.0)
    assert apgr([weak, P(0.1 + 1e-9, 0.6)], weak, strong) == pytest.approx(1.0, abs=0.01)


def test_oracle_dominates_and_single_experts_are_points(rng):
    y = (rng.random((200, 3)) < [0.3, 0.5, 0.7]).astype(np.float32)
    price = np.array([0.1, 0.2, 0.9])
    noisy = np.clip(y + rng.normal(0, 0.5, y.shape), 0, 1)
    evaluation = evaluate({"noisy": (noisy, __import__("switchboard.router.selection", fromlist=["x"]).SelectionRule.ARGMAX)}, y, price, ["a", "b", "c"], rng)
    rows = {r.name: r for r in evaluation.rows}
    assert rows["oracle"].best_quality >= rows["noisy"].best_quality
    assert rows["oracle"].auc >= rows["noisy"].auc
    assert len(rows["single:a"].points) == 1 and evaluation.best_single == "c"
    assert "oracle" in format_table(evaluation)
    points = sweep(y, y, price, ["a", "b", "c"])
    costs = [p.usd_per_mtok for p in points]
    assert costs == sorted(costs, reverse=True)
