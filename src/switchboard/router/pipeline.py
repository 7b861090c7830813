"""End-to-end training: data → features (cached) → strategy chosen by cross-validation → router directory.

The CV report written into the router (and printed by the CLI) scores every candidate strategy on the same
seeded outer folds. The strategy picked is the one with the largest area under its quality/cost curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from switchboard.router.cache import DEFAULT_CACHE_DIR, EmbeddingCache
from switchboard.router.data import ExpertPrice, RoutingExample, common_experts, score_matrix
from switchboard.router.embed import Embedder, StaticEmbedder
from switchboard.router.evaluate import Evaluation, evaluate
from switchboard.router.persist import BUILTIN_STATIC, builtin_static_dir, copy_static_embedder, save_router
from switchboard.router.router import Router, build_features
from switchboard.router.strategies import STRATEGIES, StrategyName
from switchboard.router.training import cross_validated_quality, fit_calibrated, fits_per_calibrated_model

DEFAULT_CANDIDATES = (StrategyName.KNN, StrategyName.LINEAR, StrategyName.MLP, StrategyName.MF, StrategyName.CASCADE)


@dataclass(frozen=True)
class TrainSettings:
    strategy: StrategyName | None = None  # None: pick by cross-validation among `candidates`
    candidates: tuple[StrategyName, ...] = DEFAULT_CANDIDATES
    folds: int = 5
    calibration_folds: int = 3
    seed: int = 0
    use_cheap_features: bool = True
    cache_dir: Path = field(default=DEFAULT_CACHE_DIR)


@dataclass(frozen=True)
class TrainResult:
    router: Router
    evaluation: Evaluation | None  # None when a strategy was given and CV was skipped
    chosen: StrategyName


def total_fits(settings: TrainSettings) -> int:
    per_model = fits_per_calibrated_model(settings.calibration_folds)
    cv = 0 if settings.strategy is not None else len(settings.candidates) * settings.folds * per_model
    return cv + per_model


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
    evaluation = None
    chosen = settings.strategy
    if chosen is None:
        predictions = {
            s.value: (
                cross_validated_quality(s, x, y, settings.seed, settings.folds, settings.calibration_folds, progress),
                STRATEGIES[s].selection_rule,
            )
            for s in settings.candidates
        }
        evaluation = evaluate(predictions, y, price, experts, np.random.default_rng([settings.seed, 2]))
        by_name = {r.name: r for r in evaluation.rows}
        chosen = max(settings.candidates, key=lambda s: by_name[s.value].auc)
    model, calibration = fit_calibrated(
        chosen, x, y, np.random.default_rng([settings.seed, 3]), settings.calibration_folds, progress
    )
    router = Router(tuple(experts), price, model, calibration, embedder, settings.use_cheap_features)
    return TrainResult(router, evaluation, chosen)


def evaluation_report(evaluation: Evaluation | None, settings: TrainSettings, num_examples: int) -> dict:
    report: dict = {"num_examples": num_examples, "folds": settings.folds, "seed": settings.seed}
    if evaluation is None:
        return report
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
    report = evaluation_report(result.evaluation, settings, num_examples)
    report["strategy_choice"] = "given" if settings.strategy is not None else "cross-validation (max AUC)"
    return save_router(result.router, out_dir, spec, report)
