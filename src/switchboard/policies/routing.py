"""Fleet-aware routing: the router's predicted quality and price, combined with live fleet state.

The router (a separate component) predicts, per candidate expert, a quality in [0, 1] and knows its price;
this module takes those as plain inputs and adds what only the fleet knows:

    score = predicted quality − λ · USD/Mtok − μ · expected extra latency (s)

where the expected extra latency is the predicted queueing on the best accepting replica, the rest of its
start-up if it is still starting, or a full cold start if the expert has no replica.

Variants (`RoutingSettings.kind`):

- `quality-only`: blind to the fleet: the best quality − λ·price, warm or not, no wakes. The baseline.
- `fleet-aware`: the full score, plus **cold-start hiding**: if the *preferred* expert (best quality − λ·price,
  what the router would pick were the fleet all warm) is cold (not merely asleep in the sleep tier with a wake
  that meets its SLO, which its request simply wakes) and a warm expert is within
  `cold_start_quality_margin` of its predicted quality, the warm one answers and the preferred one is woken in
  the background (`RouteDecision.wake_expert_ids`). If no warm expert is close enough, the full score decides,
  and a cold preferred expert that loses on latency is still woken for the traffic to come.
  With `stand_in_after_s` set, a preferred expert further than that from serving (cold, or still starting, as
  every expert is in the first minute after a server starts) is replaced by the best-scoring warm expert
  *whatever its quality* while it starts: the answer's `x-switchboard-route` says `stand-in` and names both.

**Route-aware pre-warming** (`PrewarmSettings`), after MoE-Infinity / ExpertFlow's expert prefetching: the
router's recent predictions feed an exponentially decayed demand per expert; an expert whose expected
requests over the next `horizon_s` reach `min_expected_requests` and that is cold gets pre-warmed.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import math
from collections.abc import Iterable, Mapping, Sequence

from pydantic import Field

from switchboard.fleet.state import FleetSnapshot, Replica
from switchboard.policies import predict
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.types import ExpertId, ReplicaState, Seconds
from switchboard.frozen import fast_init


class RoutingKind(str, enum.Enum):
    QUALITY_ONLY = "quality-only"
    FLEET_AWARE = "fleet-aware"


class RoutingSettings(PolicySettings):
    kind: RoutingKind = RoutingKind.FLEET_AWARE
    usd_weight: float = Field(0.0, ge=0, description="λ: score lost per USD per million tokens.")
    latency_weight_per_s: float = Field(0.01, ge=0, description="μ: score lost per second of expected extra latency.")
    cold_start_quality_margin: float = Field(
        0.05, ge=0, description="A warm expert this close in predicted quality answers instead of a cold one."
    )
    unplaceable_penalty_s: float = Field(
        300.0, ge=0, description="Extra latency charged to a cold expert that no worker can host right now."
    )
    stand_in_after_s: float | None = Field(
        None, ge=0, description="When the preferred expert is more than this many seconds from serving (cold or "
        "still starting), the best-scoring warm expert answers whatever its quality, and the preferred one is "
        "woken. None: only warm experts within cold_start_quality_margin stand in. The embedded default sets 1.0.",
    )


class RouteReasonCode(str, enum.Enum):
    BEST_SCORE = "best-score"
    COLD_START_HIDDEN = "cold-start-hidden"
    STAND_IN = "stand-in"
    COLD_START = "cold-start"
    SLOW_WAKE_HIDDEN = "slow-wake-hidden"
    NO_CANDIDATES = "no-candidates"


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class ExpertCandidate:
    """The router's view of one expert for one request."""

    expert_id: ExpertId
    predicted_quality: float
    usd_per_mtok: float


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class ScoredExpert:
    candidate: ExpertCandidate
    is_warm: bool
    expected_extra_latency_s: Seconds
    score: float
    wakes_within_slo: bool = False
    """Not warm, but asleep (the sleep tier) and woken by a request within its TTFT SLO: no need to hide."""


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class RouteDecision:
    expert_id: ExpertId
    """'' only with `RouteReasonCode.NO_CANDIDATES`."""
    is_cold_start: bool
    """The chosen expert has no warm replica: this request waits for (or triggers) a start."""
    wake_expert_ids: tuple[ExpertId, ...]
    """Cold experts to start in the background (cold-start hiding)."""
    scored: tuple[ScoredExpert, ...]
    """Every candidate, best first (for logs and the `/admin/fleet` page)."""
    reason: Reason


def expected_extra_latency_s(snapshot: FleetSnapshot, expert_id: ExpertId, settings: RoutingSettings) -> Seconds:
    return _latency_and_warmth(snapshot, expert_id, settings)[0]


def _latency_and_warmth(snapshot: FleetSnapshot, expert_id: ExpertId, settings: RoutingSettings) -> tuple[Seconds, bool]:
    """(`expected_extra_latency_s`, `snapshot.is_warm`) of an expert, from one look at the fleet."""
    spec = snapshot.experts.get(expert_id)
    if spec is None:
        return settings.unplaceable_penalty_s, snapshot.is_warm(expert_id)
    if spec.is_external:
        return 0.0, True
    replicas = snapshot.accepting_replicas_of(expert_id)
    if replicas:
        return _least_queueing_s(snapshot, expert_id, replicas), bool(snapshot.warm_replicas_of(expert_id))
    wake = predict.wake_option(snapshot, expert_id)
    return wake.cold_start_s + (0.0 if wake.is_placeable else settings.unplaceable_penalty_s), False


def _least_queueing_s(snapshot: FleetSnapshot, expert_id: ExpertId, replicas: tuple[Replica, ...]) -> Seconds:
    """min of `predict.queueing_s` over the expert's accepting replicas. When none is starting it does not depend
    on the time, so it is memoized per placement for exactly these replica values (the index hands out the same
    tuple until one of them changes) and these estimates."""
    memo = snapshot.layout_memo()
    key = (_LEAST_QUEUEING_KEY, expert_id)
    entry = memo.get(key)
    if entry is not None and entry[0] is replicas and entry[1] is snapshot.estimates:
        return entry[2]
    queueing_s = predict.queueing_s
    least_s = min([queueing_s(snapshot, r) for r in replicas]) if len(replicas) > 1 else queueing_s(snapshot, replicas[0])
    if not any(r.state is ReplicaState.STARTING for r in replicas):
        memo[key] = (replicas, snapshot.estimates, least_s)
    return least_s


_LEAST_QUEUEING_KEY = "routing.least_queueing_s"


def _by_score(scored: ScoredExpert) -> float:
    return -scored.score


class RoutingPolicy(abc.ABC):
    def __init__(self, settings: RoutingSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def select(self, ranked: list[ScoredExpert], preferred: ScoredExpert) -> tuple[ScoredExpert, tuple[ExpertId, ...], Reason]:
        """(chosen, experts to wake in the background, reason).

        `ranked` is every candidate by full score, best first; `preferred` is the best by quality − λ·price
        alone, the expert the router would pick if the whole fleet were warm.
        """

    def hide_slow_wake(self, snapshot: FleetSnapshot, ranked: list[ScoredExpert], preferred: ScoredExpert,
                       num_prompt_tokens: int) -> RouteDecision | None:
        """A decision that spares this request the wake of `preferred` (asleep, `wakes_within_slo`), or None:
        the request wakes it. None here; fleet-aware routing overrides."""
        return None

    def route(
        self, snapshot: FleetSnapshot, candidates: Sequence[ExpertCandidate], usd_weight: float | None = None,
        stand_in_ids: Sequence[ExpertId] = (), num_prompt_tokens: int | None = None,
    ) -> RouteDecision:
        """Choose among `candidates`; ties keep the router's order. Unknown experts are charged as unplaceable.
        `usd_weight` is the request's own λ when it sets one (else the configured `usd_weight`).

        `stand_in_ids` are experts the router has no prediction for (the embedded default's real model): ranked
        after every candidate at quality 0, so they are chosen only by the `stand_in_after_s` rule.

        `num_prompt_tokens` (the request's prompt, when known) lets a policy judge a wake for this request itself
        (`hide_slow_wake`)."""
        if not candidates:
            return RouteDecision(ExpertId(""), False, (), (), Reason(RouteReasonCode.NO_CANDIDATES, "router gave none"))
        mu = self.settings.latency_weight_per_s
        lam = self.settings.usd_weight if usd_weight is None else usd_weight
        scored = []
        preferred, preferred_base = None, 0.0
        for c in candidates:
            latency_s, is_warm = _latency_and_warmth(snapshot, c.expert_id, self.settings)
            base = c.predicted_quality - lam * c.usd_per_mtok
            entry = ScoredExpert(c, is_warm, latency_s, base - mu * latency_s,
                                 not is_warm and predict.wakes_within_slo(snapshot, c.expert_id))
            scored.append(entry)
            if preferred is None or base > preferred_base:  # the first best: ties keep the router's order
                preferred, preferred_base = entry, base
        ranked = sorted(scored, key=_by_score)  # stable: ties keep the router's order
        named = {c.expert_id for c in candidates}
        for expert_id in stand_in_ids:
            if expert_id not in named:
                latency_s, is_warm = _latency_and_warmth(snapshot, expert_id, self.settings)
                ranked.append(ScoredExpert(ExpertCandidate(expert_id, 0.0, 0.0), is_warm, latency_s, -math.inf))
        if num_prompt_tokens is not None and preferred.wakes_within_slo:
            hidden = self.hide_slow_wake(snapshot, ranked, preferred, num_prompt_tokens)
            if hidden is not None:
                return hidden
        chosen, wake, reason = self.select(ranked, preferred)
        return RouteDecision(chosen.candidate.expert_id, not chosen.is_warm, wake, tuple(ranked), reason)


ROUTING_POLICIES: Registry[RoutingKind, RoutingPolicy] = Registry("routing")


def _describe(s: ScoredExpert) -> str:
    return (f"{s.candidate.expert_id}: quality {s.candidate.predicted_quality:.3f}, "
            f"${s.candidate.usd_per_mtok:.2f}/Mtok, +{s.expected_extra_latency_s:.2f}s → {s.score:.3f}")


@ROUTING_POLICIES.register(RoutingKind.QUALITY_ONLY)
class QualityOnlyRouting(RoutingPolicy):
    def select(self, ranked, preferred):
        code = RouteReasonCode.BEST_SCORE if preferred.is_warm else RouteReasonCode.COLD_START
        return preferred, (), Reason(code, _describe(preferred) + " (fleet ignored)")


@ROUTING_POLICIES.register(RoutingKind.FLEET_AWARE)
class FleetAwareRouting(RoutingPolicy):
    def select(self, ranked, preferred):
        best = ranked[0]
        if preferred.is_warm or preferred.wakes_within_slo:
            # An expert whose request wakes it from the sleep tier within its SLO needs no stand-in: hiding that
            # wake would only move its load onto other experts while it wakes anyway.
            return best, (), Reason(RouteReasonCode.BEST_SCORE, _describe(best))
        floor = preferred.candidate.predicted_quality - self.settings.cold_start_quality_margin
        stand_in = next((s for s in ranked if s.is_warm and s.candidate.predicted_quality >= floor), None)
        wake = (preferred.candidate.expert_id,)
        if stand_in is not None:
            return stand_in, wake, Reason(
                RouteReasonCode.COLD_START_HIDDEN,
                f"{preferred.candidate.expert_id} is cold; {_describe(stand_in)} answers while it wakes")
        wait_s = self.settings.stand_in_after_s
        if wait_s is not None and preferred.expected_extra_latency_s > wait_s:
            # The first minute of a server (every expert still starting) or a cold expert that takes long to
            # wake: an answer now from a weaker warm expert beats one many seconds later.
            stand_in = next((s for s in ranked if s.is_warm), None)
            if stand_in is not None:
                return stand_in, wake, Reason(
                    RouteReasonCode.STAND_IN,
                    f"{preferred.candidate.expert_id} is {preferred.expected_extra_latency_s:.1f}s from serving "
                    f"(over {wait_s:g}s); {_describe(stand_in)} stands in while it starts")
        if best is preferred:
            return best, (), Reason(RouteReasonCode.COLD_START, _describe(best) + "; no warm expert close enough")
        # The fleet made another expert win on latency: still wake the one quality wants, for the traffic to come.
        return best, wake, Reason(RouteReasonCode.BEST_SCORE,
                                  f"{_describe(best)}; waking {preferred.candidate.expert_id}")

    def hide_slow_wake(self, snapshot: FleetSnapshot, ranked: list[ScoredExpert], preferred: ScoredExpert,
                       num_prompt_tokens: int) -> RouteDecision | None:
        """*Slow-wake hiding*: a request whose wake would put it in the fleet's TTFT tail — woken, its first
        token (`predict.woken_ttft_s`) later than the 99th-percentile request served warm
        (`predict.warm_ttft_percentile_s`) — goes to the warm expert within `cold_start_quality_margin` of the
        sleeper's quality that answers it soonest, if one answers it sooner than the wake would; the sleeper
        stays asleep. (An external expert, whose latency the fleet does not model, has no warm replica here, so
        it is not one of them.) Keep-alive lets an expert sleep where its recent mean prompt keeps the tail
        (`predict.start_keeps_tail`); this is the same bound for the one long prompt that does not — on the
        conversation trace such wakes (0.6 s before a ~4,000-token prefill on an L4) were the tier's own
        entries in the p99 (docs/simulator.md, "The sleep tier")."""
        expert_id = preferred.candidate.expert_id
        woken_s = predict.woken_ttft_s(snapshot, expert_id, num_prompt_tokens)
        bound_s = predict.warm_ttft_percentile_s(snapshot, expert_id, predict.START_SLO_PERCENTILE)
        if woken_s is None or bound_s is None or woken_s <= bound_s:
            return None
        floor = preferred.candidate.predicted_quality - self.settings.cold_start_quality_margin
        best, best_s = None, woken_s
        for s in ranked:
            replicas = snapshot.warm_replicas_of(s.candidate.expert_id)
            if replicas and s.candidate.predicted_quality >= floor:
                ttft_s = min(predict.ttft_s(snapshot, r, num_prompt_tokens) for r in replicas)
                if ttft_s < best_s:
                    best, best_s = s, ttft_s
        if best is None:
            return None
        return RouteDecision(best.candidate.expert_id, False, (), tuple(ranked), Reason(
            RouteReasonCode.SLOW_WAKE_HIDDEN,
            f"{expert_id} is asleep and would first answer in {woken_s:.2f}s, past the fleet's warm "
            f"p{predict.START_SLO_PERCENTILE:g} {bound_s:.2f}s; {_describe(best)} answers in {best_s:.2f}s"))


def make_routing(settings: RoutingSettings) -> RoutingPolicy:
    return ROUTING_POLICIES.create(settings)


# --------------------------------------------------------------------------------------------- pre-warming


class PrewarmKind(str, enum.Enum):
    NONE = "none"
    ROUTE_AWARE = "route-aware"


class PrewarmSettings(PolicySettings):
    kind: PrewarmKind = PrewarmKind.ROUTE_AWARE
    half_life_s: float = Field(60.0, gt=0, description="Half-life of the decayed routing demand.")
    horizon_s: float = Field(60.0, gt=0, description="Look-ahead over which expected requests are counted.")
    min_expected_requests: float = Field(1.0, gt=0, description="Pre-warm when this many requests are expected.")


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class RoutePrediction:
    """The router's belief about one request: probability per expert of being the right one (sums to ≤ 1)."""

    at_s: Seconds
    probabilities: Mapping[ExpertId, float]


@dataclasses.dataclass(frozen=True, slots=True)
class PrewarmState:
    demand: Mapping[ExpertId, float] = dataclasses.field(default_factory=dict)
    """Decayed sum of routing probability, as of `updated_at`."""
    updated_at: Seconds = 0.0


class PrewarmReasonCode(str, enum.Enum):
    PREDICTED_DEMAND = "predicted-demand"


@dataclasses.dataclass(frozen=True, slots=True)
class PrewarmDecision:
    expert_id: ExpertId
    expected_requests: float
    reason: Reason


class PrewarmPolicy(abc.ABC):
    def __init__(self, settings: PrewarmSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def wanted(self, snapshot: FleetSnapshot, state: PrewarmState) -> list[PrewarmDecision]:
        """Cold experts to start now."""

    def observe(self, state: PrewarmState, predictions: Iterable[RoutePrediction], now_s: Seconds) -> PrewarmState:
        """The demand decayed to `now_s` with `predictions` added (each decayed from its own `at_s`)."""
        rate = math.log(2) / self.settings.half_life_s
        decay = math.exp(-rate * max(0.0, now_s - state.updated_at))
        demand = {e: d * decay for e, d in state.demand.items() if d * decay > 1e-6}
        for p in predictions:
            weight = math.exp(-rate * max(0.0, now_s - p.at_s))
            for expert_id, probability in p.probabilities.items():
                demand[expert_id] = demand.get(expert_id, 0.0) + probability * weight
        return PrewarmState(demand, max(now_s, state.updated_at))

    def routed_requests_per_s(self, state: PrewarmState, expert_id: ExpertId) -> float:
        """How often the router has recently preferred `expert_id` (decayed sum × decay rate; it understates a
        rate for the first half-lives after the router starts, never overstates a steady one)."""
        return state.demand.get(expert_id, 0.0) * math.log(2) / self.settings.half_life_s

    def expected_requests(self, state: PrewarmState, expert_id: ExpertId) -> float:
        """Requests expected over the horizon if the recent rate continues (decayed sum ≈ rate / decay rate)."""
        return self.routed_requests_per_s(state, expert_id) * self.settings.horizon_s


PREWARM_POLICIES: Registry[PrewarmKind, PrewarmPolicy] = Registry("prewarm")


@PREWARM_POLICIES.register(PrewarmKind.NONE)
class NoPrewarm(PrewarmPolicy):
    def wanted(self, snapshot, state):
        return []


@PREWARM_POLICIES.register(PrewarmKind.ROUTE_AWARE)
class RouteAwarePrewarm(PrewarmPolicy):
    def wanted(self, snapshot: FleetSnapshot, state: PrewarmState) -> list[PrewarmDecision]:
        decisions = []
        for expert_id in sorted(state.demand):
            spec = snapshot.experts.get(expert_id)
            if spec is None or spec.is_external or snapshot.accepting_replicas_of(expert_id):
                continue
            expected = self.expected_requests(state, expert_id)
            if expected >= self.settings.min_expected_requests:
                decisions.append(PrewarmDecision(expert_id, expected, Reason(
                    PrewarmReasonCode.PREDICTED_DEMAND,
                    f"~{expected:.1f} requests expected in the next {self.settings.horizon_s:.0f}s")))
        return decisions


def make_prewarm(settings: PrewarmSettings) -> PrewarmPolicy:
    return PREWARM_POLICIES.create(settings)
