"""Quality/cost curves and their summaries (RouterBench's frontier, RouteLLM's APGR), as pure functions.

A router evaluated at each cost weight of a sweep gives points (mean USD per Mtok, mean score). `frontier_at`
reads the best quality reachable at or below a cost; AUC is its mean over the experts' price range, and APGR
the mean fraction of the gap between the cheapest expert and the best single expert that it recovers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from switchboard.router.selection import Caution, RoutingConstraints, SelectionRule, choose

DEFAULT_COST_WEIGHTS = tuple([0.0] + np.geomspace(0.001, 5.0, 80).round(6).tolist())


@dataclass(frozen=True)
class CurvePoint:
    cost_weight: float
    usd_per_mtok: float
    quality: float


def sweep(
    predicted: np.ndarray,
    true_scores: np.ndarray,
    price: np.ndarray,
    names: Sequence[str],
    rule: SelectionRule = SelectionRule.ARGMAX,
    cost_weights: Sequence[float] = DEFAULT_COST_WEIGHTS,
    weights: np.ndarray | None = None,
    caution: Caution | None = None,
) -> list[CurvePoint]:
    """One point per cost weight: the weighted mean price and score of the experts chosen. `weights` (n,) sum
    to 1 (None: every row the same); a task-balanced evaluation passes equal weight per task. `caution`: the
    conservative rule of `selection.Caution`, its prior choice recomputed at each cost weight."""
    points = []
    rows = np.arange(len(true_scores))
    w = np.full(len(rows), 1.0 / max(len(rows), 1)) if weights is None else np.asarray(weights, np.float64)
    for lam in cost_weights:
        index, _ = choose(predicted, price, names, RoutingConstraints(cost_weight=float(lam)), rule, caution=caution)
        points.append(CurvePoint(float(lam), float(w @ price[index]), float(w @ true_scores[rows, index])))
    return points


def frontier_at(points: Sequence[CurvePoint], usd_per_mtok: float) -> float:
    """Best quality among points costing at most `usd_per_mtok`; the cheapest point's quality if none does."""
    within = [p.quality for p in points if p.usd_per_mtok <= usd_per_mtok + 1e-12]
    return max(within) if within else min(points, key=lambda p: p.usd_per_mtok).quality


def cost_to_reach(points: Sequence[CurvePoint], quality: float) -> float | None:
    """Cheapest mean price of a point reaching `quality`; None if no cost weight reaches it."""
    costs = [p.usd_per_mtok for p in points if p.quality >= quality - 1e-12]
    return min(costs) if costs else None


def auc(points: Sequence[CurvePoint], low_usd: float, high_usd: float, num: int = 200) -> float:
    grid = np.linspace(low_usd, high_usd, num)
    return float(np.mean([frontier_at(points, c) for c in grid]))


def apgr(points: Sequence[CurvePoint], weak: CurvePoint, strong: CurvePoint, num: int = 200) -> float:
    grid = np.linspace(weak.usd_per_mtok, strong.usd_per_mtok, num)
    gap = strong.quality - weak.quality
    return float(np.mean([(frontier_at(points, c) - weak.quality) / gap for c in grid]))
