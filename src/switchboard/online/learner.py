"""`OnlineLearner`: each tenant's feedback events, and the per-request quality correction built from them.

The learner is the stateful side of `switchboard.online.correction`: it keeps a bounded memory of feedback
events per tenant (never shared between tenants: one tenant's scores cannot move another's routing), turns a
feedback into an event with the router's own features and prediction, and hands `Router.route` an `adjust`
callable for one decision. It is thread-safe: the gateway routes in worker threads while feedback arrives on
the event loop.

Nothing is persisted here: the request log already holds every scored request (prompt, expert, key) and its
score, so `restore` rebuilds the memories from it at start — against the router being served, which keeps the
corrections right even when the router directory was retrained in between.
"""

from __future__ import annotations

import enum
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online.correction import Correction, Events, anchor, correction, event_gain, self_check, unit
from switchboard.online.exploration import ExplorationBudget, explore
from switchboard.router.selection import Caution, Challengers

ANONYMOUS = ""
"""The tenant of every request when auth is off."""


class LearnOutcome(str, enum.Enum):
    LEARNED = "learned"
    UNKNOWN_EXPERT = "unknown_expert"  # the request's expert is not one the router predicts
    NO_PROMPT = "no_prompt"  # the log kept no prompt for it (storage.store_prompts: false)
    DISABLED = "disabled"  # router.online.enabled is false


@dataclass(frozen=True)
class FeedbackEvent:
    """A logged, scored request, as `restore` reads it from the request log."""

    tenant: str
    prompt: str | None
    expert: str
    score: float


class TenantMemory:
    """One tenant's last `max_events` events (a ring buffer grown on demand) and its exploration budget."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.contexts = np.zeros((0, 0), np.float32)
        self.experts = np.zeros(0, np.int16)
        self.predictions = np.zeros((0, 0), np.float32)  # the router's prediction of every expert at the prompt
        self.scores = np.zeros(0, np.float32)
        self.gains = np.zeros(0, np.float32)  # each event's `correction.event_gain` (0 with `self_check_neighbors` off)
        self.num_events = 0  # ever added; the buffer holds the last min(num_events, max_events)
        self.budget = ExplorationBudget()

    def add(self, context: np.ndarray, expert: int, predictions: np.ndarray, score: float, gain: float = 0.0) -> None:
        size = min(self.num_events, self.max_events)
        if size == len(self.scores) and size < self.max_events:
            self._grow(len(context), len(predictions), min(self.max_events, max(16, 2 * size)))
        slot = self.num_events % self.max_events
        self.contexts[slot], self.experts[slot] = context, expert
        self.predictions[slot], self.scores[slot], self.gains[slot] = predictions, score, gain
        self.num_events += 1

    def _grow(self, dims: int, num_experts: int, capacity: int) -> None:
        self.contexts = _grown(self.contexts, (capacity, dims))
        self.predictions = _grown(self.predictions, (capacity, num_experts))
        grow = capacity - len(self.scores)
        self.experts = np.concatenate([self.experts, np.zeros(grow, np.int16)])
        self.scores = np.concatenate([self.scores, np.zeros(grow, np.float32)])
        self.gains = np.concatenate([self.gains, np.zeros(grow, np.float32)])

    def events(self) -> Events:
        """A view of the events held (valid until the next `add`)."""
        size = min(self.num_events, self.max_events)
        experts, predictions = self.experts[:size], self.predictions[:size]
        predicted = predictions[np.arange(size), experts]  # the router's prediction of the expert that answered
        return Events(self.contexts[:size], experts, predicted, self.scores[:size], predictions, self.gains[:size])


def _grown(rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    if len(rows):
        out[: len(rows)] = rows
    return out


class Posterior(NamedTuple):
    """What a decision without exploration sees at one prompt (`OnlineLearner.posterior`)."""

    mean: np.ndarray  # the corrected quality of every expert
    router_share: np.ndarray  # per expert, the share of it that is still the router's estimate
    anchor: Caution | None  # the anchored rule (`anchor_sd` > 0 and feedback near the prompt), else None


class Adjustment:
    """One routing decision's correction (`Router.route(adjust=...)`). After the router has chosen, `settle`
    tells it the chosen expert; `info` then says what the decision did."""

    def __init__(self, learner: "OnlineLearner", tenant: str) -> None:
        self.learner = learner
        self.tenant = tenant
        self.is_sampled = False  # this decision was charged to the exploration budget
        self.offered: tuple[str, ...] = ()  # the experts it offered to explore (empty for Thompson sampling)
        self.explored: str | None = None  # the expert it explored, once settled (None: the offer was declined)
        self.num_events = 0
        self.budget = ExplorationBudget()  # the tenant's, after this decision
        self.router_share: np.ndarray | None = None
        """Per expert of the last call, the share of its corrected quality that is still the router's estimate,
        prior_events / (prior_events + evidence): the router scales its conservative rule's margin by it, so the
        tenant's own feedback, as it accumulates, overrides a caution that is about the router's estimate."""
        self.anchor: Caution | None = None
        """The last call's anchored rule (`anchor_sd`; None when off, exploring, or without feedback near the
        prompt): it replaces the router's conservative rule for this decision (`router.after_feedback`)."""

    def __call__(self, features: np.ndarray, names: Sequence[str], quality: np.ndarray,
                 confidence: float | None = None) -> np.ndarray:
        return self.learner.adjust(self, features, names, quality, confidence)

    def settle(self, chosen: str | None) -> None:
        """The router chose `chosen` (None: nothing): when this decision explored and `chosen` is one of the
        experts it offered, `info` names it. Call once, after routing."""
        if self.is_sampled and (chosen in self.offered or not self.offered):
            self.explored = chosen

    def info(self) -> dict[str, object]:
        """For the `x-switchboard-route` header: the tenant's event count, whether this decision explored (and
        which expert), whether it was anchored (with `anchor_sd` on), and the bound with how much of it the tenant
        has used."""
        return {
            "feedback_events": self.num_events,
            "explored": self.is_sampled,
            **({"explored_expert": self.explored} if self.explored is not None else {}),
            **({"anchored": self.anchor is not None} if self.learner.settings.anchor_sd > 0 else {}),
            "explore_fraction": self.learner.settings.explore_fraction,
            "explored_decisions": f"{self.budget.num_sampled}/{self.budget.num_decisions}",
        }


class OnlineLearner:
    """Per-tenant corrections of `router`'s predicted quality. `rng` drives Thompson sampling when configured
    (seed it)."""

    def __init__(self, router, settings: OnlineLearningConfig, rng: np.random.Generator) -> None:
        self.router = router  # switchboard.router.Router: features(), predict_quality_from_features(), experts
        self.settings = settings
        self.rng = rng
        self.expert_index = {e: j for j, e in enumerate(router.experts)}
        # The correlated prior's shape (`expert_correlation`), shipped with the router; absent: independent experts.
        self.prior_correlation = getattr(router, "residual_correlation", None)
        # The self-check's alternative when it is a more local correction: the same settings, a stricter similarity.
        alternative = float(settings.self_check_alternative_similarity)
        self._alternative_settings = (settings.model_copy(update={"min_similarity": alternative})
                                      if alternative > 0 else None)
        self._tenants: OrderedDict[str, TenantMemory] = OrderedDict()
        self._lock = threading.Lock()

    # ---- routing

    def adjuster(self, tenant: str) -> Adjustment | None:
        """The `adjust` for one decision of `tenant`, or None when there is nothing to apply (learning off,
        or the tenant never gave feedback: no feedback, no exploration either)."""
        if not self.settings.enabled:
            return None
        with self._lock:
            memory = self._tenants.get(tenant)
            if memory is None or memory.num_events == 0:
                return None
        return Adjustment(self, tenant)

    def adjust(self, adjustment: Adjustment, features: np.ndarray, names: Sequence[str], quality: np.ndarray,
               confidence: float | None = None) -> np.ndarray:
        """`quality` (for experts `names`) corrected by the tenant's posterior: its mean, or, when the tenant's
        exploration budget allows and there is something to explore, the exploring quality
        (`switchboard.online.exploration.explore`), charged to the budget. `confidence`: the router's confidence
        in the prompt's task (`Router.predict_with_confidence`), which `slope_prior_by_confidence` reads."""
        context = self.context(features)
        columns = np.asarray([self.expert_index[n] for n in names])
        quality = np.asarray(quality, np.float64)
        with self._lock:
            memory = self._tenants.get(adjustment.tenant)
            if memory is None:
                return quality
            self._tenants.move_to_end(adjustment.tenant)
            events = memory.events()
            corr = self._checked(events, context, columns, quality, confidence)
            mean = np.clip(quality + corr.mean, 0.0, 1.0)
            step = explore(mean, corr.std, corr.evidence, memory.budget, self.settings, self.rng)
            memory.budget = memory.budget.after(step.is_exploring)
            adjustment.num_events, adjustment.budget = memory.num_events, memory.budget
            if not step.is_exploring:
                adjustment.anchor = self._anchored(events, context, columns, corr)
        adjustment.router_share = self._router_share(corr.evidence)
        adjustment.is_sampled = step.is_exploring
        adjustment.offered = tuple(names[j] for j in step.offered)
        return step.quality

    # ---- learning

    def learn(self, tenant: str, prompt: str | None, expert: str, score: float) -> LearnOutcome:
        """Adds one scored answer to `tenant`'s events. Blocks for one embedding (run it off the event loop)."""
        outcome = self._check(prompt, expert)
        if outcome is not LearnOutcome.LEARNED:
            return outcome
        features = self.router.features([prompt])
        predictions = self.router.predict_quality_from_features(features)[0]
        self.add_event(tenant, features[0], self.expert_index[expert], predictions, float(score))
        return outcome

    def restore(self, events: Iterable[FeedbackEvent], batch_size: int = 256) -> int:
        """Replays logged feedback, oldest first (as `learn` would have); returns the number learned. Run at
        start: a feedback learned live while it runs, and already in the log, is counted twice (harmless: one
        event among thousands, and only in the first seconds)."""
        usable = [e for e in events if self._check(e.prompt, e.expert) is LearnOutcome.LEARNED]
        for start in range(0, len(usable), batch_size):
            batch = usable[start : start + batch_size]
            features = self.router.features([e.prompt for e in batch])
            predicted = self.router.predict_quality_from_features(features)
            for i, e in enumerate(batch):
                self.add_event(e.tenant, features[i], self.expert_index[e.expert], predicted[i], e.score)
        return len(usable)

    def add_event(self, tenant: str, features: np.ndarray, expert: int, predictions: np.ndarray, score: float) -> None:
        """One scored answer: the router's feature row of the prompt, the expert's index among the router's
        experts, the router's predicted quality of every expert there (m,), and the score. Raises ValueError when
        `predictions` is not one value per expert of the router."""
        predictions = np.asarray(predictions, np.float32).reshape(-1)
        if len(predictions) != len(self.expert_index):
            raise ValueError(f"predictions must hold one value per expert ({len(self.expert_index)}), got {len(predictions)}")
        with self._lock:
            memory = self._tenants.get(tenant)
            if memory is None:
                memory = self._tenants[tenant] = TenantMemory(self.settings.max_events_per_tenant)
                while len(self._tenants) > self.settings.max_tenants:
                    self._tenants.popitem(last=False)
            self._tenants.move_to_end(tenant)
            context = self.context(features)
            memory.add(context, expert, predictions, score, self._gain(memory, context, expert, predictions, score))

    def _gain(self, memory: TenantMemory, context: np.ndarray, expert: int, predictions: np.ndarray, score: float) -> float:
        """With `self_check_neighbors` on, the new event's `event_gain`: the correction from the events before it,
        at its prompt, for the expert that answered (with the settings' slope prior: the router's confidence is not
        at hand here), against its alternative — the router's prediction, or the more local correction with
        `self_check_alternative_similarity`; 0 otherwise."""
        if self.settings.self_check_neighbors <= 0 or memory.num_events == 0:
            return 0.0
        predicted = float(predictions[expert])
        events, column, here = memory.events(), np.asarray([expert]), np.asarray([predicted])
        corr = correction(events, context, column, here, self.settings, self.prior_correlation)
        alternative = 0.0  # the router's estimate
        if self._alternative_settings is not None:
            alternative = correction(events, context, column, here, self._alternative_settings, self.prior_correlation).mean[0]
        return event_gain(score, float(np.clip(predicted + alternative, 0.0, 1.0)),
                          float(np.clip(predicted + corr.mean[0], 0.0, 1.0)))

    def _checked(self, events: Events, context: np.ndarray, columns: np.ndarray, quality: np.ndarray,
                 confidence: float | None) -> Correction:
        """The correction at the prompt (slope prior from the router's `confidence`), blended with its alternative by
        `correction.self_check`'s share γ there (unchanged with the check off, or where γ = 1). Against the router (the default alternative): its mean and evidence scaled by
        γ — where the tenant's record says the correction predicts worse than the router, the router's estimate, and
        the router's caution, which scales with its share, come back. Against a more local correction
        (`self_check_alternative_similarity`): mean, SD and evidence γ·corr + (1 − γ)·local."""
        slope_prior_mean = self._slope_prior_mean(confidence)
        corr = correction(events, context, columns, quality, self.settings, self.prior_correlation, slope_prior_mean)
        share = self_check(events, context, self.settings)
        if share >= 1.0:
            return corr
        if self._alternative_settings is None:
            return Correction(share * corr.mean, corr.std, share * corr.evidence)
        local = correction(events, context, columns, quality, self._alternative_settings, self.prior_correlation,
                           slope_prior_mean)
        return Correction(*(share * a + (1.0 - share) * b for a, b in
                            ((corr.mean, local.mean), (corr.std, local.std), (corr.evidence, local.evidence))))

    def _check(self, prompt: str | None, expert: str) -> LearnOutcome:
        if not self.settings.enabled:
            return LearnOutcome.DISABLED
        if expert not in self.expert_index:
            return LearnOutcome.UNKNOWN_EXPERT
        if prompt is None:
            return LearnOutcome.NO_PROMPT
        return LearnOutcome.LEARNED

    # ---- inspection

    def posterior_mean(self, tenant: str, features: np.ndarray, quality: np.ndarray) -> np.ndarray:
        """The tenant's corrected quality at one prompt (`quality`: the router's, for all its experts), from
        the posterior mean, spending no exploration budget (for evaluation and inspection)."""
        return self.posterior(tenant, features, quality)[0]

    def posterior(self, tenant: str, features: np.ndarray, quality: np.ndarray,
                  confidence: float | None = None) -> Posterior:
        """What a decision without exploration would see at one prompt (`quality`: the router's, for all its
        experts; `confidence` as for `adjust`): the posterior mean, each expert's `Adjustment.router_share`, and the
        anchored rule."""
        quality = np.asarray(quality, np.float64)
        with self._lock:
            memory = self._tenants.get(tenant)
            if memory is None:
                return Posterior(quality.copy(), np.ones(len(quality)), None)
            columns = np.arange(len(self.expert_index))
            events, context = memory.events(), self.context(features)
            corr = self._checked(events, context, columns, quality, confidence)
            anchored = self._anchored(events, context, columns, corr)
        return Posterior(np.clip(quality + corr.mean, 0.0, 1.0), self._router_share(corr.evidence), anchored)

    def context(self, features: np.ndarray) -> np.ndarray:
        """The unit-norm vector similarity is measured on (`correction`): the router's feature row, with the task
        stage's posterior P(task | prompt) appended at `task_context_weight` when the router has a stage."""
        weight = float(self.settings.task_context_weight)
        stage = getattr(getattr(self.router, "model", None), "task_stage", None) if weight > 0 else None
        if stage is None:
            return unit(features)
        posterior = stage.posterior(np.asarray(features, np.float32).reshape(1, -1))[0]
        return unit(np.concatenate([unit(features), weight * posterior.astype(np.float32)]))

    def _slope_prior_mean(self, confidence: float | None) -> float | None:
        """This prompt's b₀ with `slope_prior_by_confidence`: the router's weight on its task stage, c ** the
        model's `task_gate_power` (c itself for a model that gates by none); None (the settings') otherwise."""
        if not self.settings.slope_prior_by_confidence or confidence is None:
            return None
        power = float(getattr(self.router.model, "task_gate_power", 0.0)) or 1.0
        return float(np.clip(confidence, 0.0, 1.0)) ** power

    def _anchored(self, events: Events, context: np.ndarray, columns: np.ndarray, corr: Correction) -> Caution | None:
        """The anchored rule at one prompt (`anchor_sd` > 0): the prior is each expert's context-free posterior
        near it (`correction.anchor`), the margin `anchor_sd` of each expert's posterior SDs at the prompt, on
        every expert but the anchor; None when off or without events near the prompt."""
        if self.settings.anchor_sd <= 0:
            return None
        means = anchor(events, context, columns, self.settings)
        if means is None:
            return None
        return Caution(means, (self.settings.anchor_sd * np.asarray(corr.std, np.float64))[None, :], challengers=Challengers.EVERY)

    def _router_share(self, evidence: np.ndarray) -> np.ndarray:
        prior = float(self.settings.prior_events)
        return prior / (prior + np.maximum(np.asarray(evidence, np.float64), 0.0))

    def num_events(self, tenant: str) -> int:
        with self._lock:
            memory = self._tenants.get(tenant)
            return 0 if memory is None else memory.num_events

    def budget(self, tenant: str) -> ExplorationBudget:
        with self._lock:
            memory = self._tenants.get(tenant)
            return ExplorationBudget() if memory is None else memory.budget
