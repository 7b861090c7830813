"""The router: features → calibrated expected score per expert → the shared selection rule.

`Router.predict_quality` is the numpy-friendly part (fleet-aware routing builds its own score on top of it);
`Router.route` serves one request: it restricts to the candidates the caller actually serves (unknown ones are
skipped), applies the request's constraints, and returns the full ranking with a reason.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from switchboard.router.embed import Embedder
from switchboard.router.features import cheap_feature_matrix
from switchboard.router.calibration import Calibration
from switchboard.router.selection import RankedCandidate, RoutingConstraints, choose, rank_candidates
from switchboard.router.strategies import QualityModel


QualityAdjust = Callable[[np.ndarray, Sequence[str], np.ndarray], np.ndarray]
"""`adjust(features, experts, quality) -> quality`: a correction of one prompt's predicted quality (for `experts`)
given the router's feature row for it — the hook of online learning (switchboard.online)."""


class RouteOutcome(str, enum.Enum):
    ROUTED = "routed"
    NO_FEASIBLE_EXPERT = "no_feasible_expert"  # every known candidate broke a hard constraint
    NO_KNOWN_CANDIDATE = "no_known_candidate"  # none of the offered candidates is an expert the router knows


@dataclass(frozen=True)
class RouteDecision:
    outcome: RouteOutcome
    expert: str | None
    ranking: tuple[RankedCandidate, ...]
    reason: str
    skipped: tuple[str, ...] = field(default=())

    def chosen(self) -> RankedCandidate | None:
        return next((c for c in self.ranking if c.expert == self.expert), None)

    def header_value(self) -> str:
        """Compact JSON for the `x-switchboard-route` response header."""
        chosen = self.chosen()
        body = {"outcome": self.outcome.value, "expert": self.expert, "reason": self.reason}
        if chosen is not None:
            body["predicted_quality"] = round(chosen.predicted_quality, 4)
            body["usd_per_mtok"] = round(chosen.usd_per_mtok, 6)
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True)


def build_features(embedder: Embedder, texts: Sequence[str], use_cheap_features: bool, embeddings=None) -> np.ndarray:
    """Embedding (unit norm) followed, optionally, by the cheap features."""
    emb = embedder.embed(texts) if embeddings is None else np.asarray(embeddings, np.float32)
    if not use_cheap_features:
        return emb
    return np.concatenate([emb, cheap_feature_matrix(texts)], axis=1)


@dataclass(frozen=True)
class Router:
    experts: tuple[str, ...]
    usd_per_mtok: np.ndarray  # (m,) blended price per expert
    model: QualityModel
    calibration: Calibration
    embedder: Embedder
    use_cheap_features: bool = True

    @property
    def strategy(self) -> str:
        return self.model.name.value

    def predict_quality_from_features(self, x: np.ndarray) -> np.ndarray:
        return self.calibration.apply(self.model.predict(x))

    def features(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), dims) the rows the quality model reads."""
        return build_features(self.embedder, prompts, self.use_cheap_features)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), len(self.experts)) calibrated expected score of each expert on each prompt."""
        return self.predict_quality_from_features(self.features(prompts))

    def route(
        self,
        prompt: str,
        constraints: RoutingConstraints = RoutingConstraints(),
        candidates: Iterable[str] | None = None,
        usd_per_mtok: Mapping[str, float] | None = None,
        adjust: QualityAdjust | None = None,
    ) -> RouteDecision:
        """Picks among `candidates` (default: every known expert); never raises for infeasible requests.

        `usd_per_mtok` overrides the trained prices per expert (the gateway passes the prices it is configured
        with, so constraints and the cost trade-off use what the operator actually pays). `adjust`, when given,
        corrects the predicted quality before constraints and selection see it (online learning).
        """
        wanted = list(self.experts) if candidates is None else list(dict.fromkeys(candidates))
        known = [self.experts.index(c) for c in wanted if c in self.experts]
        skipped = tuple(c for c in wanted if c not in self.experts)
        if not known:
            return RouteDecision(RouteOutcome.NO_KNOWN_CANDIDATE, None, (), "no candidate is known to the router", skipped)
        x = self.features([prompt])
        quality = self.predict_quality_from_features(x)[0, known]
        names = [self.experts[j] for j in known]
        if adjust is not None:
            quality = adjust(x[0], names, quality)
        price = self.usd_per_mtok[known].copy()
        if usd_per_mtok:
            price = np.asarray([usd_per_mtok.get(n, p) for n, p in zip(names, price)], np.float64)
        ranking = tuple(rank_candidates(quality, price, names, constraints))
        index, is_feasible = choose(quality[None, :], price, names, constraints, self.model.selection_rule)
        if not is_feasible[0]:
            reason = "no candidate satisfies the constraints (experts / max_usd_per_mtok / min_quality)"
            return RouteDecision(RouteOutcome.NO_FEASIBLE_EXPERT, None, ranking, reason, skipped)
        expert = names[int(index[0])]
        reason = (
            f"{self.strategy}: max of predicted quality - {constraints.cost_weight:g} * usd_per_mtok"
            f" ({self.model.selection_rule.value}) over {len(names)} candidate(s)"
        )
        return RouteDecision(RouteOutcome.ROUTED, expert, ranking, reason, skipped)

    def route_batch(self, prompts: Sequence[str], constraints: RoutingConstraints = RoutingConstraints()) -> list[str | None]:
        quality = self.predict_quality(prompts)
        index, is_feasible = choose(quality, self.usd_per_mtok, self.experts, constraints, self.model.selection_rule)
        return [self.experts[int(i)] if ok else None for i, ok in zip(index, is_feasible)]
