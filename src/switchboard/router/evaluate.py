"""Router evaluation: quality/cost curves for strategies against baselines, summarised in one table.

Baselines: each single expert (a point), a seeded uniformly random router (a point) and the oracle (the true
scores fed to the same selection rule, swept over the same cost weights). Pure computation; plotting is in
`plot_curves`, which imports matplotlib (Agg) only when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from switchboard.router.curves import DEFAULT_COST_WEIGHTS, CurvePoint, apgr, auc, cost_to_reach, sweep
from switchboard.router.selection import Caution, SelectionRule


@dataclass(frozen=True)
class CurveSummary:
    name: str
    points: tuple[CurvePoint, ...]
    best_quality: float
    usd_at_best_single: float | None  # mean USD/Mtok to match the best single expert's quality
    usd_at_target: float | None  # ... to match `target_quality` (the issue's 0.563)
    auc: float
    apgr: float


@dataclass(frozen=True)
class Evaluation:
    experts: tuple[str, ...]
    single: dict[str, CurvePoint]
    best_single: str
    cheapest: str
    target_quality: float
    rows: list[CurveSummary]


def _summary(name, points, best_single: CurvePoint, weak: CurvePoint, target_quality: float, low, high) -> CurveSummary:
    points = tuple(points)
    return CurveSummary(
        name,
        points,
        max(p.quality for p in points),
        cost_to_reach(points, best_single.quality),
        cost_to_reach(points, target_quality),
        auc(points, low, high),
        apgr(points, weak, best_single),
    )


def evaluate(
    predictions: Mapping[str, tuple[np.ndarray, SelectionRule] | tuple[np.ndarray, SelectionRule, Caution | None]],
    true_scores: np.ndarray,
    price: np.ndarray,
    experts: Sequence[str],
    rng: np.random.Generator,
    target_quality: float = 0.563,
    cost_weights: Sequence[float] = DEFAULT_COST_WEIGHTS,
    weights: np.ndarray | None = None,
) -> Evaluation:
    """`predictions` maps a strategy name to its (n, m) predicted quality, selection rule and, optionally, its
    `Caution` (the conservative rule; None or absent: the plain one). `weights` (n,),
    summing to 1, weigh the rows (None: uniform; see `protocol.row_weights`)."""
    w = np.full(len(true_scores), 1.0 / len(true_scores)) if weights is None else np.asarray(weights, np.float64)
    means = w @ true_scores
    single = {e: CurvePoint(float("nan"), float(price[j]), float(means[j])) for j, e in enumerate(experts)}
    best_single = max(experts, key=lambda e: (single[e].quality, -single[e].usd_per_mtok))
    cheapest = min(experts, key=lambda e: (single[e].usd_per_mtok, -single[e].quality))
    strong, weak = single[best_single], single[cheapest]
    low, high = float(price.min()), float(price.max())
    rows = []
    for name, (pred, rule, *rest) in predictions.items():
        caution = rest[0] if rest else None
        rows.append(_summary(name, sweep(pred, true_scores, price, experts, rule, cost_weights, w, caution), strong, weak,
                             target_quality, low, high))
    rows.append(_summary("oracle", sweep(true_scores, true_scores, price, experts, SelectionRule.ARGMAX, cost_weights, w), strong, weak, target_quality, low, high))
    pick = rng.integers(0, len(experts), len(true_scores))
    rand = CurvePoint(float("nan"), float(w @ price[pick]), float(w @ true_scores[np.arange(len(pick)), pick]))
    rows.append(_summary("random", [rand], strong, weak, target_quality, low, high))
    for e in experts:
        rows.append(_summary(f"single:{e}", [single[e]], strong, weak, target_quality, low, high))
    return Evaluation(tuple(experts), single, best_single, cheapest, target_quality, rows)


def format_table(evaluation: Evaluation) -> str:
    def usd(v):
        return "   —  " if v is None else f"{v:6.3f}"

    best = evaluation.single[evaluation.best_single]
    head = (
        f"{'router':40s} {'best q':>7s} {'$@q=' + format(best.quality, '.3f'):>10s} "
        f"{'$@q=' + format(evaluation.target_quality, '.3f'):>10s} {'AUC':>6s} {'APGR':>6s}"
    )
    lines = [head, "-" * len(head)]
    for r in evaluation.rows:
        lines.append(
            f"{r.name[:40]:40s} {r.best_quality:7.4f} {usd(r.usd_at_best_single):>10s} "
            f"{usd(r.usd_at_target):>10s} {r.auc:6.4f} {r.apgr:6.3f}"
        )
    lines.append(
        f"best single expert: {evaluation.best_single} (q={best.quality:.4f}, ${best.usd_per_mtok:.2f}/Mtok); "
        f"cheapest: {evaluation.cheapest}; $ columns: mean USD/Mtok at the cheapest cost weight reaching that quality"
    )
    return "\n".join(lines)


def plot_curves(evaluation: Evaluation, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for r in evaluation.rows:
        if r.name.startswith("single:") or r.name == "random":
            p = r.points[0]
            ax.scatter([p.usd_per_mtok], [p.quality], marker="x" if r.name == "random" else "o", s=30, color="grey")
            ax.annotate(r.name.removeprefix("single:"), (p.usd_per_mtok, p.quality), fontsize=7)
        else:
            pts = sorted(r.points, key=lambda p: p.usd_per_mtok)
            style = "--" if r.name == "oracle" else "-"
            ax.plot([p.usd_per_mtok for p in pts], [p.quality for p in pts], style, marker=".", label=r.name)
    ax.set_xlabel("mean price of the chosen expert (USD per Mtok)")
    ax.set_ylabel("mean score")
    ax.set_title("Quality / cost over the cost-weight sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class TaskRow:
    """On one task's rows at one cost weight: the router against the best single expert that costs no more."""

    task: str
    num_rows: int
    cost_weight: float
    router_usd_per_mtok: float
    router_quality: float
    single: str
    single_usd_per_mtok: float
    single_quality: float

    @property
    def gap(self) -> float:
        return self.router_quality - self.single_quality


def per_task_table(
    predicted: np.ndarray,
    true_scores: np.ndarray,
    price: np.ndarray,
    experts: Sequence[str],
    tasks: Sequence[str],
    cost_weight: float,
    rule: SelectionRule = SelectionRule.ARGMAX,
    caution: Caution | None = None,
) -> list[TaskRow]:
    """For each task, the router's mean price and score at `cost_weight` vs the best single expert (on that
    task, in hindsight) among those priced at or below the router's mean price there. `caution` (per row or
    per expert) as in `curves.sweep`."""
    tasks_arr = np.asarray(tasks, dtype=object)
    rows = []
    for task in sorted(set(tasks_arr.tolist())):
        idx = np.flatnonzero(tasks_arr == task)
        point = sweep(predicted[idx], true_scores[idx], price, experts, rule, (cost_weight,), caution=_rows_of(caution, idx))[0]
        means = true_scores[idx].mean(axis=0)
        affordable = [j for j in range(len(experts)) if price[j] <= point.usd_per_mtok + 1e-9]
        j = max(affordable, key=lambda k: (means[k], -price[k]))
        rows.append(TaskRow(task, len(idx), cost_weight, point.usd_per_mtok, point.quality, experts[j], float(price[j]), float(means[j])))
    return rows


def _rows_of(caution: Caution | None, idx: np.ndarray) -> Caution | None:
    if caution is None:
        return None
    def take(a):
        a = np.asarray(a)
        return a[idx] if a.ndim == 2 else a
    return Caution(take(caution.prior), take(caution.margin))


def tasks_below(rows: Sequence[TaskRow], margin: float = 0.02) -> int:
    """How many tasks the router is more than `margin` below their best single expert at its cost (issue 13's
    target: none)."""
    return sum(r.gap < -margin for r in rows)


def format_task_table(rows: Sequence[TaskRow]) -> str:
    head = f"{'task':22s} {'n':>4s} {'router $':>8s} {'router q':>8s} {'best single at ≤ cost':32s} {'$':>5s} {'q':>6s} {'gap':>7s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.task[:22]:22s} {r.num_rows:4d} {r.router_usd_per_mtok:8.3f} {r.router_quality:8.3f} "
            f"{r.single[:32]:32s} {r.single_usd_per_mtok:5.2f} {r.single_quality:6.3f} {r.gap:+7.3f}"
        )
    worst = min(rows, key=lambda r: r.gap)
    lines.append(f"worst gap {worst.gap:+.3f} ({worst.task}); tasks more than 0.02 below: {tasks_below(rows)} of {len(rows)}")
    return "\n".join(lines)
