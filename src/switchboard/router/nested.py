"""Nested cross-validation: everything that is chosen is chosen on inner folds only.

For each outer fold of a split (`protocol.SplitKind`), every candidate (a strategy, its hyper-parameters and a
calibration kind) is scored on inner folds of the outer *training* part, of the same kind as the outer split;
the best by AUC of its task-weighted quality/cost curve on the fixed λ grid is refitted on the whole training
part, calibrated on its inner out-of-fold estimates, and only then predicts the outer test rows. No outer test
row ever influences a choice, and the λ grid (`curves.DEFAULT_COST_WEIGHTS`) is fixed in code before any run.

A candidate with several `caution_margins` also chooses the margin of the conservative rule
(`selection.Caution`) on inner folds — always leave-one-task-out inner folds when rows carry tasks, one per
task of the training part, whatever the outer split: the margin is there to protect against task shift and
would be chosen as zero on folds that have none, and one task held out at a time is the shift of the outer
LOTO split (it costs one inner fit per task).
The deployed router chooses it the same way. Candidates are still compared by the inner AUC of the plain rule:
pool a candidate with its cautious twin and the pick between them is noise (measure each alone).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from switchboard.router.calibration import Calibration, fit_calibration
from switchboard.router.curves import DEFAULT_COST_WEIGHTS, auc, sweep
from switchboard.router.protocol import (Fold, SplitKind, balanced_rows, check_covers, check_no_leak, inner_folds,
                                        leave_one_task_out_folds, make_folds, row_weights)
from switchboard.router.selection import Caution, rule_margins
from switchboard.router.strategies import STRATEGIES, QualityModel, StrategyName
from switchboard.router.strategies.robust import task_ids

Progress = Callable[[int], None]


class CalibrationKind(str, enum.Enum):
    ISOTONIC = "isotonic"  # per-expert isotonic regression on inner out-of-fold estimates
    NONE = "none"  # the strategy's raw estimate


@dataclass(frozen=True)
class Candidate:
    """One point of the search: `STRATEGIES[strategy].fit(x, y, rng, **params)`, then `calibration`."""

    label: str
    strategy: StrategyName
    params: Mapping[str, float | int] = field(default_factory=dict)
    calibrations: tuple[CalibrationKind, ...] = (CalibrationKind.ISOTONIC, CalibrationKind.NONE)
    balance_tasks: bool = False  # train on rows resampled so every task counts the same (`protocol.balanced_rows`)
    caution_margins: tuple[float, ...] = (0.0,)  # the conservative rule's margin, chosen on LOTO inner folds; 0: off
    caution_by_confidence: bool = False
    """The margin per row is κ · (1 − c), c the model's confidence that the row is of a task it was trained on
    (`selection.gated_margin`; a model without one gets no margin); False: κ on every row."""
    group_by_task: bool = False  # the strategy's fit takes the training rows' task ids (`groups`): task-robust training
    tasks_optional: bool = False  # with `group_by_task`: rows without task labels train without `groups` (no raise)

    def fit(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, tasks: Sequence[str] | None = None) -> QualityModel:
        """Fits on (x, y); with `balance_tasks` and task labels, on rows resampled to equal counts per task; with
        `group_by_task`, passing each row's task id (raises ValueError without task labels, unless `tasks_optional`:
        then the fit gets no `groups`)."""
        params = dict(self.params)
        if self.balance_tasks and tasks is not None:
            rows = balanced_rows(tasks, rng)
            x, y, tasks = x[rows], y[rows], [tasks[i] for i in rows]
        if self.group_by_task:
            if tasks is None or any(t is None for t in tasks):
                if not self.tasks_optional:
                    raise ValueError(f"candidate {self.label!r} trains across tasks and needs a task label on every row")
            else:
                params["groups"] = task_ids(tasks)
        return STRATEGIES[self.strategy].fit(x, y, rng, **params)


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    calibration_kind: CalibrationKind
    inner_auc: float
    caution_margin: float = 0.0

    @property
    def label(self) -> str:
        return _label(self.candidate, self.calibration_kind, self.caution_margin)


def _label(candidate: Candidate, calibration: CalibrationKind, margin: float) -> str:
    return f"{candidate.label}+{calibration.value}" + (f"+margin{margin:g}" if len(candidate.caution_margins) > 1 else "")


@dataclass(frozen=True)
class NestedResult:
    kind: SplitKind
    folds: tuple[Fold, ...]
    predictions: dict[str, np.ndarray]  # candidate label (or NESTED) → (n, m) calibrated out-of-fold estimates
    weights: np.ndarray  # (n,) the split's row weights, summing to 1
    chosen: dict[str, str]  # outer fold name → chosen candidate label
    cautions: dict[str, Caution] = field(default_factory=dict)
    """Candidate label (or NESTED) → its conservative rule per row: the prior (each row's outer training part's
    mean scores) and the margin chosen for that fold (0: the plain rule), per row when gated by confidence."""
    margins: dict[str, dict[str, float]] = field(default_factory=dict)
    """Candidate label (or NESTED) → outer fold name → the margin κ chosen there (before any gating)."""


def _calibrate(kind: CalibrationKind, raw: np.ndarray, y: np.ndarray) -> Calibration:
    return fit_calibration(raw, y) if kind is CalibrationKind.ISOTONIC else Calibration.identity(raw.shape[1])


def _cross_fitted(kind: CalibrationKind, raw: np.ndarray, y: np.ndarray, folds: Sequence[Fold]) -> np.ndarray:
    """Calibrated inner estimates where each inner fold's rows are calibrated on the other folds' rows, so
    isotonic calibration is not scored on the rows it was fitted on (that would always favour it)."""
    if kind is CalibrationKind.NONE:
        return raw
    out = np.empty_like(raw)
    for f in folds:
        others = np.setdiff1d(np.concatenate([g.test for g in folds]), f.test)
        out[f.test] = _calibrate(kind, raw[others], y[others]).apply(raw[f.test])
    return out


def _inner_raw(candidate: Candidate, x, y, tasks, folds: Sequence[Fold], rng, progress: Progress
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Out-of-fold raw estimates on `folds`, and each row's confidence (`QualityModel.predict_with_confidence`;
    None unless every fold's model has one)."""
    raw = np.zeros_like(y, dtype=np.float32)
    confidence: np.ndarray | None = np.zeros(len(y))
    for f in folds:
        model = candidate.fit(x[f.train], y[f.train], rng, _take(tasks, f.train))
        raw[f.test], conf = model.predict_with_confidence(x[f.test])
        if conf is None:
            confidence = None
        elif confidence is not None:
            confidence[f.test] = conf
        progress(1)
    return raw, confidence


def _row_margins(candidate: Candidate, margin: float, confidence: np.ndarray | None, num_rows: int) -> np.ndarray:
    """(n, 1) the candidate's conservative-rule margin per row: `margin`, gated by confidence if it says so."""
    return rule_margins(margin, candidate.caution_by_confidence, confidence, num_rows)


def _take(tasks: Sequence[str] | None, rows: np.ndarray) -> list[str] | None:
    return None if tasks is None else [tasks[i] for i in rows]


@dataclass(frozen=True)
class _Scored:
    candidate: Candidate
    calibration_kind: CalibrationKind
    inner_auc: float
    calibration: Calibration  # fitted on every inner out-of-fold estimate
    caution_margin: float = 0.0


def _fold_priors(y: np.ndarray, folds: Sequence[Fold]) -> np.ndarray:
    """(n, m): on each fold's test rows, the mean scores of its training rows (what a router trained there
    knows as each expert's prior)."""
    prior = np.zeros(y.shape, np.float64)
    for f in folds:
        prior[f.test] = y[f.train].mean(axis=0)
    return prior


def _choose_margin(candidate, calibration_kind, raw, confidence, folds, x, y, prompts, tasks, price, kind, rng,
                   cost_weights, progress) -> float:
    """The margin of `candidate.caution_margins` with the best inner best quality over the λ grid on
    leave-one-task-out inner folds, one per task (on `folds` when rows carry fewer than two tasks); ties keep
    the smaller margin. Best quality, not AUC: the margin trades a little of the cheap end of the curve for the
    top (measured, docs/router.md), and the top under shift is what it is for."""
    if len(candidate.caution_margins) == 1:
        return float(candidate.caution_margins[0])
    if tasks is not None and len(set(tasks)) > 1:
        folds = leave_one_task_out_folds(prompts, tasks)
        raw, confidence = _inner_raw(candidate, x, y, tasks, folds, rng, progress)
        kind = SplitKind.LEAVE_ONE_TASK_OUT
    covered = np.concatenate([f.test for f in folds])
    weights = row_weights(kind, None if tasks is None else [tasks[i] for i in covered], len(covered))
    est = _cross_fitted(calibration_kind, raw, y, folds)[covered]
    prior = _fold_priors(y, folds)[covered]
    covered_confidence = None if confidence is None else confidence[covered]
    names = [str(j) for j in range(y.shape[1])]
    rule = STRATEGIES[candidate.strategy].selection_rule
    best = None
    for margin in sorted(candidate.caution_margins):
        caution = Caution(prior, _row_margins(candidate, margin, covered_confidence, len(covered)))
        score = max(p.quality for p in sweep(est, y[covered], price, names, rule, cost_weights, weights, caution))
        if best is None or score > best[0] + 1e-9:
            best = (score, float(margin))
    return best[1]


def _is_fixed(candidates: Sequence[Candidate]) -> bool:
    """One candidate with nothing to choose: no calibration to fit, one margin."""
    return (len(candidates) == 1 and candidates[0].calibrations == (CalibrationKind.NONE,)
            and len(candidates[0].caution_margins) == 1)


def _score_on_inner_folds(candidates, x, y, prompts, tasks, price, kind, rng, num_inner_folds, cost_weights, progress):
    """Per candidate: the best calibration kind by cross-fitted inner AUC, and that calibration. A fixed router
    (`_is_fixed`) is not scored (inner AUC NaN): its inner fits would choose and calibrate nothing."""
    if _is_fixed(candidates):
        only = candidates[0]
        return [_Scored(only, CalibrationKind.NONE, float("nan"), Calibration.identity(y.shape[1]),
                        float(only.caution_margins[0]))]
    folds = inner_folds(kind, prompts, tasks, num_inner_folds, rng)
    covered = np.concatenate([f.test for f in folds])
    weights = row_weights(kind, None if tasks is None else [tasks[i] for i in covered], len(covered))
    names = [str(j) for j in range(y.shape[1])]
    low, high = float(price.min()), float(price.max())
    scored = []
    for candidate in candidates:
        raw, confidence = _inner_raw(candidate, x, y, tasks, folds, rng, progress)
        rule = STRATEGIES[candidate.strategy].selection_rule
        best = None
        for cal in candidate.calibrations:
            est = _cross_fitted(cal, raw, y, folds)[covered]
            score = auc(sweep(est, y[covered], price, names, rule, cost_weights, weights), low, high)
            if best is None or score > best[0] + 1e-9:  # ties keep the earlier (simpler) calibration
                best = (score, cal)
        margin = _choose_margin(candidate, best[1], raw, confidence, folds, x, y, prompts, tasks, price, kind, rng,
                                cost_weights, progress)
        scored.append(_Scored(candidate, best[1], best[0], _calibrate(best[1], raw[covered], y[covered]), margin))
    return scored


def _best(scored: Sequence[_Scored]) -> _Scored:
    return max(scored, key=lambda s: s.inner_auc)  # max keeps the first on ties: candidates are listed simplest first


def select_and_fit(
    candidates: Sequence[Candidate],
    x: np.ndarray,
    y: np.ndarray,
    prompts: Sequence[str],
    tasks: Sequence[str] | None,
    price: np.ndarray,
    kind: SplitKind,
    rng: np.random.Generator,
    num_inner_folds: int = 3,
    cost_weights: Sequence[float] = DEFAULT_COST_WEIGHTS,
    progress: Progress = lambda _: None,
) -> tuple[Choice, QualityModel, Calibration]:
    """Chooses among `candidates` on inner folds of (x, y) alone, then fits the choice on all of it and
    calibrates it on its inner out-of-fold estimates. This is also how a deployed router is trained."""
    best = _best(_score_on_inner_folds(candidates, x, y, prompts, tasks, price, kind, rng, num_inner_folds, cost_weights, progress))
    model = best.candidate.fit(x, y, rng, tasks)
    progress(1)
    return Choice(best.candidate, best.calibration_kind, best.inner_auc, best.caution_margin), model, best.calibration


NESTED = "nested selection"
"""The key of the nested-selection predictions in `NestedResult.predictions`."""


def nested_cross_validate(
    candidates: Sequence[Candidate],
    x: np.ndarray,
    y: np.ndarray,
    prompts: Sequence[str],
    tasks: Sequence[str] | None,
    price: np.ndarray,
    kind: SplitKind,
    seed: int,
    num_folds: int = 5,
    num_inner_folds: int = 3,
    cost_weights: Sequence[float] = DEFAULT_COST_WEIGHTS,
    progress: Progress = lambda _: None,
) -> NestedResult:
    """Out-of-fold estimates for every row under `kind`: one set per candidate (its calibration and caution
    margin chosen on inner folds) and one for the nested selection among them (`NESTED`: per outer fold, the
    candidate with the best inner AUC). Each candidate is fitted once per outer fold, so the selection costs no
    extra fits (choosing a margin costs one inner fit per task).

    Raises LeakError if a fold would test on a prompt it trained on (checked, not assumed).
    """
    outer = make_folds(kind, prompts, tasks, num_folds, np.random.default_rng([seed, 0]))
    check_no_leak(outer, prompts)
    check_covers(outer, len(prompts))
    rng = np.random.default_rng([seed, 1])
    out = {c.label: np.zeros_like(y, dtype=np.float32) for c in candidates}
    out[NESTED] = np.zeros_like(y, dtype=np.float32)
    labels = [c.label for c in candidates] + [NESTED]
    prior = _fold_priors(y, outer)
    margins = {label: np.zeros((len(y), 1)) for label in labels}
    kappas: dict[str, dict[str, float]] = {label: {} for label in labels}
    chosen: dict[str, str] = {}
    for fold in outer:
        sub_prompts = [prompts[i] for i in fold.train]
        sub_tasks = None if tasks is None else [tasks[i] for i in fold.train]
        scored = _score_on_inner_folds(candidates, x[fold.train], y[fold.train], sub_prompts, sub_tasks, price, kind,
                                       rng, num_inner_folds, cost_weights, progress)
        for s in scored:
            model = s.candidate.fit(x[fold.train], y[fold.train], rng, sub_tasks)
            progress(1)
            raw, confidence = model.predict_with_confidence(x[fold.test])
            out[s.candidate.label][fold.test] = s.calibration.apply(raw)
            margins[s.candidate.label][fold.test] = _row_margins(s.candidate, s.caution_margin, confidence,
                                                                 len(fold.test))
            kappas[s.candidate.label][fold.name] = s.caution_margin
        best = _best(scored)
        out[NESTED][fold.test] = out[best.candidate.label][fold.test]
        margins[NESTED][fold.test] = margins[best.candidate.label][fold.test]
        kappas[NESTED][fold.name] = best.caution_margin
        chosen[fold.name] = _label(best.candidate, best.calibration_kind, best.caution_margin)
    cautions = {label: Caution(prior, margins[label]) for label in labels}
    return NestedResult(kind, tuple(outer), out, row_weights(kind, tasks, len(prompts)), chosen, cautions, kappas)


def num_fits(num_candidates: int, num_outer_folds: int, num_inner_folds: int) -> int:
    return num_outer_folds * num_candidates * (num_inner_folds + 1)
