"""The router: features → calibrated expected score per expert → the shared selection rule.

`Router.predict_quality` is the numpy-friendly part (fleet-aware routing builds its own score on top of it);
`Router.route` serves one request: it restricts to the candidates the caller actually serves (unknown ones are
skipped), applies the request's constraints, and returns the full ranking with a reason.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from switchboard.router.calibration import Calibration
from switchboard.router.cost import OutputLengthModel, estimate_prompt_tokens, request_usd, request_usd_per_mtok
from switchboard.router.embed import Embedder
from switchboard.router.features import FEATURE_NAMES, cheap_feature_matrix
from switchboard.router.selection import (Caution, Challengers, RankedCandidate, RoutingConstraints, SelectionRule,
                                          choose, rank_candidates, rule_margins)
from switchboard.router.strategies import QualityModel


QualityAdjust = Callable[[np.ndarray, Sequence[str], np.ndarray, "float | None"], np.ndarray]
"""`adjust(features, experts, quality, confidence) -> quality`: a correction of one prompt's predicted quality (for
`experts`) given the router's feature row for it and its confidence in the prompt's task (None without a task
stage) — the hook of online learning (switchboard.online)."""


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
    request_usd: Mapping[str, float] = field(default_factory=dict)
    """Predicted USD of this request on each ranked expert (input × prompt tokens + output × output tokens)."""

    def chosen(self) -> RankedCandidate | None:
        return next((c for c in self.ranking if c.expert == self.expert), None)

    def header_value(self) -> str:
        """Compact JSON for the `x-switchboard-route` response header."""
        chosen = self.chosen()
        body = {"outcome": self.outcome.value, "expert": self.expert, "reason": self.reason}
        if chosen is not None:
            body["predicted_quality"] = round(chosen.predicted_quality, 4)
            body["usd_per_mtok"] = round(chosen.usd_per_mtok, 6)
        if self.expert is not None and self.expert in self.request_usd:
            body["predicted_usd"] = float(f"{self.request_usd[self.expert]:.3g}")
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
    input_usd_per_mtok: np.ndarray | None = None  # (m,); None: `usd_per_mtok` (routers saved before prices split)
    output_usd_per_mtok: np.ndarray | None = None
    output_length: OutputLengthModel | None = None  # None: the constant default (router.cost)
    prior_quality: np.ndarray | None = None  # (m,) mean training score per expert; None: routers saved before it
    caution_margin: float = 0.0  # the conservative rule's margin (`selection.Caution`); 0 or no prior: plain argmax
    caution_by_confidence: bool = False
    """The margin per prompt is `caution_margin` · (1 − c), c the model's confidence that the prompt is of a task it
    was trained on (`selection.gated_margin`): the rule bites on unfamiliar tasks only; a model without a
    confidence then routes by the plain rule."""
    residual_correlation: np.ndarray | None = None  # (m, m) between experts' residuals on the training data; None: not shipped

    @property
    def strategy(self) -> str:
        return self.model.name.value

    def margins(self, confidence: np.ndarray | None = None, num_rows: int = 1) -> np.ndarray | None:
        """(n, 1) the conservative rule's margin per row, or None when the rule is off: gated by `confidence` (n,)
        (`predict_with_confidence`) when the router says so (off without one); `num_rows` rows of the full
        margin otherwise. Needs no prior: the simulator's cross-fitted routers bring their own."""
        if self.caution_margin <= 0 or (self.caution_by_confidence and confidence is None):
            return None
        return rule_margins(self.caution_margin, self.caution_by_confidence, confidence, num_rows)

    def caution(self, known: Sequence[int] | None = None, confidence: np.ndarray | None = None,
                num_rows: int = 1) -> Caution | None:
        """The conservative rule over the experts at indices `known` (all by default), or None when off; its
        margin per row is `margins(confidence, num_rows)`."""
        margin = self.margins(confidence, num_rows)
        if self.prior_quality is None or margin is None:
            return None
        prior = np.asarray(self.prior_quality, np.float64)
        prior = prior if known is None else prior[list(known)]
        return Caution(prior, margin)

    def predict_quality_from_features(self, x: np.ndarray) -> np.ndarray:
        return self.calibration.apply(self.model.predict(x))

    def predict_with_confidence(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(calibrated quality (n, m), the model's confidence (n,) that each row is of a task it was trained on,
        or None: `QualityModel.predict_with_confidence`)."""
        raw, confidence = self.model.predict_with_confidence(x)
        return self.calibration.apply(raw), confidence

    def as_served(self, x: np.ndarray) -> tuple[np.ndarray, SelectionRule, Caution | None]:
        """(calibrated quality (n, m), the selection rule, the conservative rule per row or None) for feature rows
        `x`: what `route_batch` chooses with, and what an evaluation of this router as served scores
        (`curves.sweep`, `evaluate.evaluate`)."""
        quality, confidence = self.predict_with_confidence(x)
        return quality, self.model.selection_rule, self.caution(None, confidence, len(x))

    def features(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), dims) the rows the quality model reads."""
        return build_features(self.embedder, prompts, self.use_cheap_features)

    def predict_quality(self, prompts: Sequence[str]) -> np.ndarray:
        """(len(prompts), len(self.experts)) calibrated expected score of each expert on each prompt."""
        return self.predict_quality_from_features(self.features(prompts))

    def io_prices(self) -> tuple[np.ndarray, np.ndarray]:
        """(input, output) USD per Mtok per expert, as trained."""
        if self.input_usd_per_mtok is None or self.output_usd_per_mtok is None:
            return self.usd_per_mtok, self.usd_per_mtok
        return self.input_usd_per_mtok, self.output_usd_per_mtok

    def request_prices(self, prompts: Sequence[str], cheap: np.ndarray, input_usd: np.ndarray, output_usd: np.ndarray,
                       max_output_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """((n, m) each request's USD per Mtok, (n, m) its USD) for experts priced `input_usd`/`output_usd` (m,),
        which must be in the router's expert order; `cheap` are the prompts' cheap features."""
        lengths = self.output_length or OutputLengthModel.constant(len(FEATURE_NAMES), len(self.experts))
        out_tokens = lengths.predict(cheap, max_output_tokens)
        prompt_tokens = np.asarray([estimate_prompt_tokens(p) for p in prompts], np.float64)
        return (request_usd_per_mtok(input_usd, output_usd, prompt_tokens, out_tokens),
                request_usd(input_usd, output_usd, prompt_tokens, out_tokens))

    def route(
        self,
        prompt: str,
        constraints: RoutingConstraints = RoutingConstraints(),
        candidates: Iterable[str] | None = None,
        usd_per_mtok: Mapping[str, float | tuple[float, float]] | None = None,
        max_output_tokens: int | None = None,
        adjust: QualityAdjust | None = None,
    ) -> RouteDecision:
        """Picks among `candidates` (default: every known expert); never raises for infeasible requests.

        `usd_per_mtok` overrides the trained prices per expert, as one blended price or an (input, output)
        pair (the gateway passes the prices it is configured with, so constraints and the cost trade-off use
        what the operator actually pays). λ multiplies this request's own USD/Mtok (`router.cost`); the
        `max_usd_per_mtok` cap applies to the blended list price. `adjust`, when given, corrects the predicted
        quality before constraints and selection see it (online learning).
        """
        wanted = list(self.experts) if candidates is None else list(dict.fromkeys(candidates))
        known = [self.experts.index(c) for c in wanted if c in self.experts]
        skipped = tuple(c for c in wanted if c not in self.experts)
        if not known:
            return RouteDecision(RouteOutcome.NO_KNOWN_CANDIDATE, None, (), "no candidate is known to the router", skipped)
        x = self.features([prompt])
        predicted, confidence = self.predict_with_confidence(x)
        quality = predicted[0, known]
        names = [self.experts[j] for j in known]
        if adjust is not None:
            quality = adjust(x[0], names, quality, None if confidence is None else float(confidence[0]))
        trained_in, trained_out = self.io_prices()
        io = [_as_pair((usd_per_mtok or {}).get(n), trained_in[j], trained_out[j]) for n, j in zip(names, known)]
        input_usd, output_usd = np.asarray([p[0] for p in io]), np.asarray([p[1] for p in io])
        price = (input_usd + output_usd) / 2.0
        cheap = x[:, -len(FEATURE_NAMES):] if self.use_cheap_features else cheap_feature_matrix([prompt])
        full_in, full_out = trained_in.copy(), trained_out.copy()
        full_in[known], full_out[known] = input_usd, output_usd
        per_mtok, usd = self.request_prices([prompt], cheap, full_in, full_out, max_output_tokens)
        traded, usd = per_mtok[0, known], usd[0, known]
        caution = after_feedback(self.caution(known, confidence), getattr(adjust, "router_share", None),
                                 bool(getattr(adjust, "is_sampled", False)), getattr(adjust, "anchor", None))
        ranking = tuple(rank_candidates(quality, price, names, constraints, traded, caution))
        index, is_feasible = choose(quality[None, :], price, names, constraints, self.model.selection_rule, traded[None, :],
                                    caution)
        request_costs = {n: float(u) for n, u in zip(names, usd)}
        if not is_feasible[0]:
            reason = "no candidate satisfies the constraints (experts / max_usd_per_mtok / min_quality)"
            return RouteDecision(RouteOutcome.NO_FEASIBLE_EXPERT, None, ranking, reason, skipped, request_costs)
        expert = names[int(index[0])]
        margin = 0.0 if caution is None else float(np.max(caution.margin))
        reason = (
            f"{self.strategy}: max of predicted quality - {constraints.cost_weight:g} * request usd_per_mtok"
            f" ({self.model.selection_rule.value}) over {len(names)} candidate(s)"
            + ("" if margin <= 0 else f"; an expert other than the tenant's anchor must gain up to {margin:.3g}"
               if caution.challengers is Challengers.EVERY else f"; a cheaper expert than the prior choice must gain {margin:.3g}")
        )
        return RouteDecision(RouteOutcome.ROUTED, expert, ranking, reason, skipped, request_costs)

    def route_batch(self, prompts: Sequence[str], constraints: RoutingConstraints = RoutingConstraints()) -> list[str | None]:
        x = build_features(self.embedder, prompts, self.use_cheap_features)
        quality, rule, caution = self.as_served(x)
        cheap = x[:, -len(FEATURE_NAMES):] if self.use_cheap_features else cheap_feature_matrix(prompts)
        traded, _ = self.request_prices(prompts, cheap, *self.io_prices())
        index, is_feasible = choose(quality, self.usd_per_mtok, self.experts, constraints, rule, traded, caution)
        return [self.experts[int(i)] if ok else None for i, ok in zip(index, is_feasible)]


def after_feedback(caution: Caution | None, router_share: np.ndarray | None, is_exploring: bool,
                   anchor: Caution | None = None) -> Caution | None:
    """The conservative rule of one decision after online learning corrected its estimates (`Router.route(adjust=)`,
    whose online `Adjustment` carries `router_share`, `is_sampled` and `anchor`): none on an exploring decision
    (within the tenant's bound, it is there to try what the estimate doubts); the tenant's `anchor` when there is
    one (its feedback near the prompt says which expert is the safe choice: that replaces the training prior's);
    otherwise each expert's margin scaled by `router_share` (n, m) or (m,), the router's remaining share of its
    corrected estimate, so feedback outweighs the caution about the router's estimate as much as it outweighs the
    estimate itself. Unchanged without feedback."""
    if is_exploring:
        return None
    if anchor is not None:
        return anchor
    if caution is None or router_share is None:
        return caution
    share = np.asarray(router_share, np.float64)
    return replace(caution, margin=np.asarray(caution.margin, np.float64) * share.reshape(-1, share.shape[-1]))


def _as_pair(override: float | tuple[float, float] | None, input_usd: float, output_usd: float) -> tuple[float, float]:
    if override is None:
        return float(input_usd), float(output_usd)
    if isinstance(override, tuple):
        return float(override[0]), float(override[1])
    return float(override), float(override)
