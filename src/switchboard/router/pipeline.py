"""End-to-end training: data → features (cached) → candidate chosen on inner folds → router directory.

Without a fixed `--strategy`, training is the nested protocol of `router.nested`: the candidates (strategy,
hyper-parameters, calibration; by default only `ensemble-format3-task` and its calibration, `PACKAGED_CANDIDATES`) are
scored on inner folds that hold whole tasks out when every row carries a task (`training_split`: task-balanced
folds with too few tasks for that, random folds without tasks), the best by AUC of its task-weighted quality/cost
curve is fitted on all rows and calibrated on its inner out-of-fold estimates. The CV report written into the
router (and printed by the CLI) is an outer nested CV of that same procedure — leave-one-task-out when rows carry
enough tasks, the column that reproduces the owners' held-out set (docs/router.md) — so it is out of sample for
the choice as well as for the fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from switchboard.router.cache import DEFAULT_CACHE_DIR, EmbeddingCache
from switchboard.router.cost import OutputLengthModel
from switchboard.router.data import ExpertPrice, RoutingExample, common_experts, output_token_matrix, score_matrix
from switchboard.router.embed import Embedder, StaticEmbedder
from switchboard.router.evaluate import Evaluation, evaluate
from switchboard.router.persist import BUILTIN_STATIC, builtin_static_dir, copy_static_embedder, save_router
from switchboard.router.features import FEATURE_NAMES, cheap_feature_matrix
from switchboard.router.nested import NESTED, Candidate, nested_cross_validate, num_fits, select_and_fit
from switchboard.router.protocol import SplitKind
from switchboard.router.router import Router, build_features
from switchboard.router.strategies import STRATEGIES, StrategyName
from switchboard.router.training import fit_calibrated, fits_per_calibrated_model, residual_correlation

DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("knn", StrategyName.KNN, {"num_neighbours": 40}),
    Candidate("knn-100-soft", StrategyName.KNN, {"num_neighbours": 100, "temperature": 0.05}),
    Candidate("linear", StrategyName.LINEAR),
    Candidate("mlp", StrategyName.MLP),
    Candidate("ensemble", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05}),
)
"""The base pool of nested selection (`router train --candidates default`, `router eval --compare`, the benchmarks'
reference table). Simplest first: on an exact tie of inner AUC the earlier one wins. Not what `router train` trains
without `--candidates`: that is `PACKAGED_CANDIDATES`."""

SHRINK_CANDIDATES: tuple[Candidate, ...] = tuple(
    Candidate(f"shrunk-q{q:g}", StrategyName.SHRUNK,
              {"num_neighbours": 100, "temperature": 0.05, "familiarity_quantile": q, "familiarity_scale": 0.03})
    for q in (0.05, 0.25, 0.5)
)
"""The ensemble shrunk toward the prior below the q-quantile of the training prompts' own familiarity
(`strategies.shrunk`): a fixed grid, declared before any run, that nested selection chooses from."""

BALANCED_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("ensemble-balanced", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05},
              balance_tasks=True),
)
"""The default ensemble trained on rows resampled so every task counts the same, as in the held-out mix."""

RELATIVE_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("ensemble-relative", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05, "relative": True}),
)
"""The default ensemble whose MLP learns each expert's score relative to the prompt's mean over experts
(`strategies.base.relative_targets`), so its capacity goes on which expert wins rather than on how hard the
prompt is (issue 13)."""

TASK_ROBUST_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("ensemble-dro", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05,
                                                      "task_objective": "dro", "task_strength": 0.01},
              group_by_task=True),
    Candidate("ensemble-vrex", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05,
                                                       "task_objective": "vrex", "task_strength": 10.0},
              group_by_task=True),
    Candidate("ensemble-format", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05,
                                                         "mlp_columns": len(FEATURE_NAMES)}),
    Candidate("ensemble-format3", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05,
                                                          "format_columns": len(FEATURE_NAMES)}),
)
"""Issue 13's ideas for an unseen task: the previous default ensemble with its MLP trained across tasks — Group DRO (τ =
0.01) or V-REx (β = 10), `strategies.robust`, each the better of its two settings in the exploration
(`benchmarks/router_dro_explore.py`) — and with its MLP reading only the cheap format features (length, code,
maths, multiple choice…), which transfer across tasks where the embedding's content does not — instead of the
full MLP (`ensemble-format`) or as a third member beside it (`ensemble-format3`, the mean of three). Measured
(docs/router.md): only `ensemble-format3` gains under LOTO at every seed, for a little task-balanced and random
quality; with a task stage added it is what `router train` trains by default (`PACKAGED_CANDIDATES`)."""

TASK_STAGE_POWER = 4.0
"""The task stage's weight is its confidence to this power (`EnsembleModel.task_gate_power`): chosen from {2, 4, 8}
(and a ramp) in the exploration `benchmarks/router_task_explore.py`, seeds 0–2, as the one that kept
leave-one-task-out quality and most of the task-balanced gain; checked with the nested protocol on seeds 3–5 (new
task-balanced and random partitions; the LOTO folds are the same at every seed, so that column is in-sample for it)."""

TASK_STAGE_CANDIDATES: tuple[Candidate, ...] = (
    replace(next(c for c in TASK_ROBUST_CANDIDATES if c.label == "ensemble-format3"), label="ensemble-format3-task",
            params={"num_neighbours": 100, "temperature": 0.05, "format_columns": len(FEATURE_NAMES),
                    "task_gate_power": TASK_STAGE_POWER},
            group_by_task=True, tasks_optional=True),
)
"""Category first, then expert (Composition of Experts): `ensemble-format3` with a task stage, P(task | prompt) @
each task's mean scores, blended in by the task classifier's confidence (`strategies.task_stage`). Trains the
stage from the rows' task labels; rows without them train `ensemble-format3` alone."""

GATED_CAUTION_MARGIN = 0.32
"""κ of the conservative rule gated by the task stage's confidence (margin κ · (1 − c) per prompt): chosen with the
form from {0.04, 0.08, 0.16, 0.32} × {1 − c, 1 − c⁴} (and the ungated rule, for reference) in the exploration
`benchmarks/router_gate_caution_explore.py`, seeds 0–2, by a rule written before seed 2 was read: the best
leave-one-task-out quality among variants within 0.001 of the task-balanced quality and 0.002 of its AUC."""

GATED_CAUTION_CANDIDATES: tuple[Candidate, ...] = (
    replace(TASK_STAGE_CANDIDATES[0], label="ensemble-format3-task-gated", caution_margins=(GATED_CAUTION_MARGIN,),
            caution_by_confidence=True),
)
"""`ensemble-format3-task` under the conservative rule gated by its task stage's confidence: a cheaper expert than
the prior choice must gain κ · (1 − c), so the rule bites only where the stage does not know the prompt's task."""

PACKAGED_CANDIDATES: tuple[Candidate, ...] = GATED_CAUTION_CANDIDATES
"""What `router train` (no `--strategy`, no `--candidates`) and the packaged default router train:
`ensemble-format3-task-gated` (`ensemble-format3-task` under the conservative rule gated by its stage's
confidence; since 2026-12-07, after `ensemble-format3-task` earlier that day), its calibration chosen on inner
folds; on rows without task labels, `ensemble-format3` alone under the plain rule. The gated rule was adopted by a
rule declared before its check (seeds 6–8, nested protocol): task-balanced and random best quality no lower than
−0.001 on average, LOTO higher — LOTO +0.0051, task-balanced −0.0005, random +0.0008 (docs/router.md; LOTO's
folds are those the exploration chose κ on, so that column is in-sample for it); seeds 6–11 together (9–11 a
report-only confirmation): LOTO +0.0062, task-balanced −0.0008, random +0.0005. It makes the `balanced` preset
about 10% dearer on the training tasks' mix. The candidate was chosen offline, not by a data-driven selection:
`ensemble-format3` by leave-one-task-out nested CV (best quality 0.6111 against the previous default `ensemble`'s
0.6008, 3 seeds), because LOTO is the column that reproduces the owners' held-out set; its task stage by a rule
declared before the check (seeds 3–5: new task-balanced and random partitions; LOTO's folds are the same at every seed, so that
column is in-sample for the power): LOTO no worse than −0.003 on average and
task-balanced better at every seed — LOTO +0.0016, task-balanced +0.0092, random +0.0106 (docs/router.md).
Nested selection among `DEFAULT_CANDIDATES` by inner AUC is not used for it: on whole-task inner folds it was
noisy, and on task-balanced ones it reads a column that predicts the held-out set less well."""

CAUTION_MARGINS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.04, 0.08)
"""The conservative rule's margins (quality a cheaper expert must gain over the prior choice), from which the
margin is chosen on leave-one-task-out inner folds (`nested._choose_margin`)."""

CAUTIOUS_CANDIDATES: tuple[Candidate, ...] = (
    Candidate("ensemble-cautious", StrategyName.ENSEMBLE, {"num_neighbours": 100, "temperature": 0.05},
              caution_margins=CAUTION_MARGINS),
    replace(next(c for c in TASK_ROBUST_CANDIDATES if c.label == "ensemble-format3"), label="ensemble-format3-cautious",
            caution_margins=CAUTION_MARGINS),
)
"""Candidates under the conservative selection rule (`selection.Caution`), κ chosen from `CAUTION_MARGINS` on
leave-one-task-out inner folds: the previous default ensemble (`ensemble-cautious`), and `ensemble-format3` (the
packaged router before its task stage) — its strategy, params and calibrations copied, not restated, so the two cannot drift apart
(`ensemble-format3-cautious`)."""


def candidate_pool(spec: str) -> tuple[Candidate, ...]:
    """The candidates named by `spec`: "packaged" (`PACKAGED_CANDIDATES`), "default" (`DEFAULT_CANDIDATES`),
    "shrink" (those and `SHRINK_CANDIDATES`), or comma-separated labels, "default" and "packaged" among them
    standing for their pools (e.g. "default,ensemble-format3"). Raises ValueError naming unknown labels."""
    every = {c.label: c for c in (DEFAULT_CANDIDATES + SHRINK_CANDIDATES + BALANCED_CANDIDATES + CAUTIOUS_CANDIDATES
                                   + RELATIVE_CANDIDATES + TASK_ROBUST_CANDIDATES + TASK_STAGE_CANDIDATES
                                   + GATED_CAUTION_CANDIDATES)}
    pools = {"default": DEFAULT_CANDIDATES, "packaged": PACKAGED_CANDIDATES}
    if spec == "shrink":
        return DEFAULT_CANDIDATES + SHRINK_CANDIDATES
    pool: list[Candidate] = []
    for label in spec.split(","):
        if label not in pools and label not in every:
            raise ValueError(f"unknown candidate {label!r}; known: default, packaged, shrink, {', '.join(sorted(every))}")
        for c in pools.get(label, (every.get(label),)):
            if c not in pool:
                pool.append(c)
    return tuple(pool)


@dataclass(frozen=True)
class TrainSettings:
    strategy: StrategyName | None = None  # None: pick by nested selection among `candidates`
    candidates: tuple[Candidate, ...] = PACKAGED_CANDIDATES
    folds: int = 5  # outer folds of the reported CV, unless it is leave-one-task-out (one per task)
    calibration_folds: int = 3  # inner folds: selection and calibration
    seed: int = 0
    use_cheap_features: bool = True
    cache_dir: Path = field(default=DEFAULT_CACHE_DIR)


@dataclass(frozen=True)
class TrainResult:
    router: Router
    evaluation: Evaluation | None  # None when a strategy was given and CV was skipped
    chosen: StrategyName
    chosen_label: str = ""  # the candidate and calibration chosen, e.g. "ensemble+none"
    split: SplitKind | None = None  # the split selection and the CV report used
    chosen_per_fold: dict[str, str] = field(default_factory=dict)
    num_folds: int = 0  # outer folds of the reported CV (one per task under LOTO); 0 when CV was skipped


def training_split(tasks: Sequence[str | None], num_inner_folds: int) -> SplitKind:
    """The split `train_router` chooses on and reports under. Leave-one-task-out when every row carries a task and
    there are more tasks than inner folds — task shift is what deployment meets, and LOTO is the column that
    reproduces the owners' held-out set (docs/router.md); with fewer tasks an outer training part could not hold
    whole tasks out on its inner folds, so task-balanced; random when rows carry no task (or one)."""
    if not tasks or any(t is None for t in tasks) or len(set(tasks)) < 2:
        return SplitKind.RANDOM
    return SplitKind.LEAVE_ONE_TASK_OUT if len(set(tasks)) > num_inner_folds else SplitKind.TASK_BALANCED


def num_outer_folds(settings: TrainSettings, tasks: Sequence[str | None]) -> int:
    """The reported CV's outer folds: one per task under leave-one-task-out, else `settings.folds`."""
    split = training_split(tasks, settings.calibration_folds)
    return len(set(tasks)) if split is SplitKind.LEAVE_ONE_TASK_OUT else settings.folds


def total_fits(settings: TrainSettings, tasks: Sequence[str | None] = ()) -> int:
    if settings.strategy is not None:
        return fits_per_calibrated_model(settings.calibration_folds)
    cv = num_fits(len(settings.candidates), num_outer_folds(settings, tasks), settings.calibration_folds)
    return cv + len(settings.candidates) * settings.calibration_folds + 1


def embed_cached(embedder: Embedder, texts: Sequence[str], cache_dir: Path) -> np.ndarray:
    return EmbeddingCache(cache_dir, embedder.name).get_or_compute(texts, embedder.embed)


def train_router(
    examples: Sequence[RoutingExample],
    prices: dict[str, ExpertPrice],
    settings: TrainSettings = TrainSettings(),
    embedder: Embedder | None = None,
    progress: Callable[[int], None] = lambda _: None,
) -> TrainResult:
    embedder = embedder or StaticEmbedder(builtin_static_dir())
    experts = common_experts(examples, prices)
    y = score_matrix(examples, experts)
    price = np.asarray([prices[e].blended_usd_per_mtok for e in experts])
    texts = [ex.prompt for ex in examples]
    x = build_features(embedder, texts, settings.use_cheap_features, embed_cached(embedder, texts, settings.cache_dir))
    tasks = [ex.task for ex in examples]
    split = training_split(tasks, settings.calibration_folds)
    rng = np.random.default_rng([settings.seed, 3])
    evaluation, label, per_fold, margin, by_confidence, num_folds = None, "", {}, 0.0, False, 0
    if settings.strategy is not None:
        chosen = settings.strategy
        model, calibration = fit_calibrated(chosen, x, y, rng, settings.calibration_folds, progress)
        label = chosen.value
    else:
        task_arg = None if split is SplitKind.RANDOM else tasks
        cv = nested_cross_validate(settings.candidates, x, y, texts, task_arg, price, split, settings.seed,
                                   settings.folds, settings.calibration_folds, progress=progress)
        predictions = {name: (pred, STRATEGIES[_strategy_of(settings.candidates, name)].selection_rule,
                              cv.cautions.get(name))
                       for name, pred in cv.predictions.items()}
        evaluation = evaluate(predictions, y, price, experts, np.random.default_rng([settings.seed, 2]), weights=cv.weights)
        choice, model, calibration = select_and_fit(settings.candidates, x, y, texts, task_arg, price, split, rng,
                                                    settings.calibration_folds, progress=progress)
        chosen, label, per_fold, margin = choice.candidate.strategy, choice.label, cv.chosen, choice.caution_margin
        by_confidence = choice.candidate.caution_by_confidence
        if choice.candidate.tasks_optional and not model.uses_tasks:
            label += " (without its task stage: the rows carry too few task labels"
            label += "; so without the rule it gates)" if by_confidence and margin > 0 else ")"
        num_folds = len(cv.folds)
    cheap = cheap_feature_matrix(texts)
    lengths = output_token_matrix(examples, experts)
    output_length = OutputLengthModel.fit(cheap, lengths) if np.isfinite(lengths).any() else None
    router = Router(
        tuple(experts), price, model, calibration, embedder, settings.use_cheap_features,
        input_usd_per_mtok=np.asarray([prices[e].input_usd_per_mtok for e in experts]),
        output_usd_per_mtok=np.asarray([prices[e].output_usd_per_mtok for e in experts]),
        output_length=output_length,
        prior_quality=y.mean(axis=0), caution_margin=margin, caution_by_confidence=by_confidence,
        # The correlated prior's shape for online learning (`router.online.expert_correlation`): residuals on the
        # training rows themselves (in-sample; the out-of-fold ones of the nested search are not kept).
        residual_correlation=residual_correlation(calibration.apply(model.predict(x)), y),
    )
    return TrainResult(router, evaluation, chosen, label, split, per_fold, num_folds)


def _strategy_of(candidates: tuple[Candidate, ...], name: str) -> StrategyName:
    if name == NESTED:
        return StrategyName.MLP  # every default candidate uses the argmax rule; cascade is never nested
    return next(c.strategy for c in candidates if c.label == name)


def evaluation_report(evaluation: Evaluation | None, settings: TrainSettings, num_examples: int,
                      num_folds: int = 0) -> dict:
    report: dict = {"num_examples": num_examples, "folds": num_folds or settings.folds, "seed": settings.seed}
    if evaluation is None:
        return report
    report["cv_note"] = "nested CV: every candidate and the nested selection scored on the same outer folds"
    report["best_single"] = evaluation.best_single
    report["cv"] = {
        r.name: {
            "best_quality": round(r.best_quality, 4),
            "usd_per_mtok_at_best_single_quality": r.usd_at_best_single,
            "usd_per_mtok_at_target_quality": r.usd_at_target,
            "auc": round(r.auc, 4),
            "apgr": round(r.apgr, 4),
        }
        for r in evaluation.rows
        if not r.name.startswith("single:")
    }
    return report


def write_router(result: TrainResult, out_dir: Path, settings: TrainSettings, num_examples: int, embedder_dir: Path | None) -> Path:
    """Saves the router; the static table is copied in (self-contained) unless `embedder_dir` is None,
    in which case the router refers to the built-in table (only the packaged default router does that)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if embedder_dir is None:
        spec = {"kind": "static", "path": BUILTIN_STATIC}
    else:
        spec = copy_static_embedder(embedder_dir, out_dir)
    report = evaluation_report(result.evaluation, settings, num_examples, result.num_folds)
    report["strategy_choice"] = ("given" if settings.strategy is not None else
                                 f"nested selection (max inner AUC) among {', '.join(c.label for c in settings.candidates)}")
    report["chosen"] = result.chosen_label
    if result.split is not None:
        report["split"] = result.split.value
    if result.chosen_per_fold:
        report["chosen_per_outer_fold"] = result.chosen_per_fold
    return save_router(result.router, out_dir, spec, report)
