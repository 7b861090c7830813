"""Routing strategies, keyed by `StrategyName` in `STRATEGIES`."""

from __future__ import annotations

from switchboard.router.strategies.base import QualityModel, StrategyName
from switchboard.router.strategies.ensemble import EnsembleModel
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.mf import MfModel
from switchboard.router.strategies.neural import CascadeModel, LinearModel, MlpModel
from switchboard.router.strategies.shrunk import ShrunkEnsembleModel

STRATEGIES: dict[StrategyName, type[QualityModel]] = {
    StrategyName.KNN: KnnModel,
    StrategyName.LINEAR: LinearModel,
    StrategyName.MLP: MlpModel,
    StrategyName.MF: MfModel,
    StrategyName.CASCADE: CascadeModel,
    StrategyName.ENSEMBLE: EnsembleModel,
    StrategyName.SHRUNK: ShrunkEnsembleModel,
}

__all__ = ["STRATEGIES", "QualityModel", "StrategyName"]
