"""The three-column evaluation report (leave-one-task-out, task-balanced, random), shared by `router eval` and
`benchmarks/router_quality.py`: nested CV per split, curves on the fixed λ grid, the per-task table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from switchboard.router.curves import sweep
from switchboard.router.evaluate import Evaluation, TaskRow, evaluate, per_task_table
from switchboard.router.nested import NESTED, Candidate, NestedResult, nested_cross_validate
from switchboard.router.objective import OBJECTIVE_COST_WEIGHTS, Objective
from switchboard.router.protocol import SPLIT_ORDER, SplitKind
from switchboard.router.strategies import STRATEGIES


@dataclass(frozen=True)
class SplitReport:
    kind: SplitKind
    result: NestedResult
    evaluation: Evaluation
    seconds: float


def run_splits(
    candidates: Sequence[Candidate],
    x: np.ndarray,
    y: np.ndarray,
    prompts: Sequence[str],
    tasks: Sequence[str] | None,
    price: np.ndarray,
    experts: Sequence[str],
    seed: int,
    splits: Sequence[SplitKind] = SPLIT_ORDER,
    num_folds: int = 5,
    num_inner_folds: int = 3,
    progress: Callable[[int], None] = lambda _: None,
    clock: Callable[[], float] = lambda: 0.0,
) -> list[SplitReport]:
    """Nested CV under each split (task splits are skipped when rows carry no task)."""
    reports = []
    for kind in splits:
        if kind is not SplitKind.RANDOM and tasks is None:
            continue
        started = clock()
        result = nested_cross_validate(candidates, x, y, prompts, tasks, price, kind, seed, num_folds, num_inner_folds,
                                       progress=progress)
        rules = {c.label: STRATEGIES[c.strategy].selection_rule for c in candidates}
        predictions = {name: (pred, rules.get(name, STRATEGIES[candidates[0].strategy].selection_rule),
                              result.cautions.get(name))
                       for name, pred in result.predictions.items()}
        ev = evaluate(predictions, y, price, experts, np.random.default_rng([seed, 2]), weights=result.weights)
        reports.append(SplitReport(kind, result, ev, clock() - started))
    return reports


def _usd(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def format_summary(reports: Sequence[SplitReport], target_quality: float = 0.563) -> str:
    """One row per router, three column groups (best quality, USD/Mtok to reach `target_quality`, AUC) per split."""
    names = [r.name for r in reports[0].evaluation.rows if not r.name.startswith("single:")]
    width = max([20] + [len(n) for n in names])  # whole labels: twins differ only at their ends
    head = f"{'router':{width}s}" + "".join(f" | {rep.kind.value[:18]:>18s} best q  $@{target_quality:.3f}    AUC" for rep in reports)
    lines = [head, "-" * len(head)]
    for name in names:
        cells = []
        for rep in reports:
            row = next(r for r in rep.evaluation.rows if r.name == name)
            cells.append(f" | {'':18s} {row.best_quality:6.4f} {_usd(row.usd_at_target):>8s} {row.auc:6.4f}")
        lines.append(f"{name:{width}s}" + "".join(cells))
    for rep in reports:
        best = rep.evaluation.single[rep.evaluation.best_single]
        lines.append(
            f"{rep.kind.value}: best single {rep.evaluation.best_single} q={best.quality:.4f} at ${best.usd_per_mtok:.2f}; "
            f"nested selection's $ to match it: {_usd(_row(rep, NESTED).usd_at_best_single)}; "
            f"choices per outer fold: {_choice_counts(rep.result)}; {rep.seconds:.0f} s"
        )
    return "\n".join(lines)


def preset_table(reports: Sequence[SplitReport], y: np.ndarray, price: np.ndarray, experts: Sequence[str],
                 name: str = NESTED) -> str:
    """What each `routing.objective` preset gives and costs, per split, for router `name` (a candidate label, or
    the nested selection)."""
    lines = [f"{'objective':10s} {'λ':>6s}" + "".join(f" | {rep.kind.value[:18]:>18s} q     $/Mtok" for rep in reports)]
    for objective in Objective:
        lam = OBJECTIVE_COST_WEIGHTS[objective]
        cells = []
        for rep in reports:
            point = sweep(rep.result.predictions[name], y, price, experts, cost_weights=(lam,), weights=rep.result.weights,
                          caution=rep.result.cautions.get(name))[0]
            cells.append(f" | {'':18s} {point.quality:.4f} {point.usd_per_mtok:6.3f}")
        lines.append(f"{objective.value:10s} {lam:6.3f}" + "".join(cells))
    return "\n".join(lines)


def loto_task_rows(reports: Sequence[SplitReport], y: np.ndarray, price: np.ndarray, experts: Sequence[str],
                   tasks: Sequence[str], cost_weight: float, name: str = NESTED) -> list[TaskRow] | None:
    """The per-task table of router `name` (a candidate label, or the nested selection) under LOTO; None
    without a LOTO report."""
    rep = next((r for r in reports if r.kind is SplitKind.LEAVE_ONE_TASK_OUT), None)
    if rep is None:
        return None
    return per_task_table(rep.result.predictions[name], y, price, experts, tasks, cost_weight,
                          caution=rep.result.cautions.get(name))


def margins_per_fold(result: NestedResult, name: str) -> dict[str, float]:
    """Outer fold name → the conservative rule's margin κ router `name` chose for that fold (0: plain; a rule
    gated by confidence applies κ · (1 − c) per row)."""
    chosen = result.margins.get(name, {})
    return {fold.name: float(chosen.get(fold.name, 0.0)) for fold in result.folds}


def _row(rep: SplitReport, name: str):
    return next(r for r in rep.evaluation.rows if r.name == name)


def _choice_counts(result: NestedResult) -> str:
    counts: dict[str, int] = {}
    for label in result.chosen.values():
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
