"""The math of learning from feedback: a local Bayesian recalibration of the router's predicted quality.

The router predicts p_j(x), expert j's expected score on prompt x. A tenant's feedback events (x_i, j_i, s_i)
say how good that prediction was where the tenant's traffic is. Near a new prompt x, expert j's score is
modelled as linear in the router's prediction,

    s ≈ a + b · (p_j(x_i) − p_j(x)),      so that the corrected quality at x itself is a,

fitted by Bayesian weighted least squares on the `num_neighbors` events of j most similar to x (cosine
similarity ≥ `min_similarity`; an event's weight grows linearly from 0 there to 1 at an identical prompt, or is
1 for each of them with `neighbor_weight: uniform` — a kNN mean blended with the router by count),
with the prior "the router is right at x": a ~ N(p_j(x), noise_var / prior_events), and b ~ N(b₀,
slope_prior_var) with b₀ = `slope_prior_mean`. With b held at 1 (b₀ = 1, slope_prior_var 0) this is an offset:
the kernel-weighted mean residual s − p, shrunk toward 0; it keeps the router's *per-prompt* differences. With
b held at 0 it is the kernel-weighted mean score of j near x, shrunk toward the router's prediction at x: the
per-prompt differences are dropped once evidence outweighs the prior. On a task the router never saw they are
mostly noise, and picking the best of nine noisy per-prompt estimates loses to the best expert: even with every
expert's score on 300 of a held-out task's prompts (full information), b₀ = 1 falls 0.019 short of the task's
best single expert on the tuning tasks where b held at 0 falls 0.008 short (docs/online-learning.md). A slope
prior around b₀ lets feedback bring the differences back where they do hold (b → 1 on familiar traffic).
The posterior's uncertainty in a falls as evidence accumulates; an expert never
tried near x keeps the router's prediction and the prior's uncertainty, and its evidence (the summed weights
of its events there) says how under-tried it is, which is what `exploration` aims at (the bandit view of
routing is RouterBench's, and RouteLLM learns routers from the same kind of preference feedback).

Everything here is a pure function of arrays; `switchboard.online.learner` owns the state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from switchboard.config.schema import OnlineLearningConfig


@dataclass(frozen=True)
class Events:
    """A snapshot of a tenant's feedback events: unit-norm contexts (n, d), expert index (n,), the router's
    predicted quality of that expert at that prompt (n,), and the feedback score (n,)."""

    contexts: np.ndarray
    experts: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray
    predictions: np.ndarray | None = None
    """(n, m) the router's predicted quality of every expert at each event's prompt (for `anchor`); None: not kept."""
    gains: np.ndarray | None = None
    """(n,) each event's `event_gain` (for `self_check`); None: not kept."""

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Correction:
    """Posterior of the corrected quality minus the router's, per expert asked for: mean, standard deviation,
    and evidence (the sum of the weights of the events used)."""

    mean: np.ndarray
    std: np.ndarray
    evidence: np.ndarray


def unit(context: np.ndarray) -> np.ndarray:
    """The context scaled to unit L2 norm (an all-zero vector stays zero), as float32."""
    c = np.asarray(context, np.float32).reshape(-1)
    norm = float(np.linalg.norm(c))
    return c / norm if norm > 0 else c


def correction(events: Events, context: np.ndarray, experts: np.ndarray, predicted: np.ndarray,
               settings: OnlineLearningConfig, prior_correlation: np.ndarray | None = None,
               slope_prior_mean: float | None = None) -> Correction:
    """The posterior correction near `context` (unit norm, as `unit` gives) of each expert index in `experts`,
    whose router predictions there are `predicted`. With no events near it, an expert's correction is the
    prior's: mean 0, std sqrt(noise_var / prior_events). `slope_prior_mean`, when given, is this prompt's b₀
    (`OnlineLearner` sets it from the router's confidence with `slope_prior_by_confidence`); else the settings'.

    `prior_correlation` (all the router's experts × all, as `router.training.residual_correlation` gives) links the experts'
    intercepts when `settings.expert_correlation` > 0: their prior is jointly Gaussian with correlation
    (1 − ρ)·I + ρ·R (ρ = `expert_correlation`), so feedback on one expert moves its correlated peers too. The
    posterior is then solved jointly (an m × m system, the slopes eliminated per expert); without it, per expert."""
    experts = np.asarray(experts, np.int64)
    num = len(experts)
    prior_std = np.sqrt(settings.noise_var / settings.prior_events)
    none = Correction(np.zeros(num), np.full(num, prior_std), np.zeros(num))
    if not len(events) or not num:
        return none
    # einsum, not `@`: a BLAS matrix-vector product spreads over threads that, on cores shared with the
    # gateway and other jobs, wait on each other — 6–30 ms for 4096 events against einsum's steady ~0.8 ms.
    similarity = np.einsum("ij,j->i", events.contexts, context)
    column = np.full(max(int(events.experts.max()), int(experts.max())) + 1, -1)  # expert index → its column
    column[experts] = np.arange(num)
    near = np.nonzero((similarity >= settings.min_similarity) & (column[events.experts] >= 0))[0]
    if not len(near):
        return none
    # The `num_neighbors` most similar events of each expert: sort by (column, similarity descending) and
    # keep each column's first k. Vectorised: a per-expert loop cost milliseconds per decision.
    sims, cols = similarity[near], column[events.experts[near]]
    order = np.lexsort((-sims, cols))
    ranks = np.arange(len(order)) - np.searchsorted(cols[order], cols[order], side="left")
    kept = order[ranks < settings.num_neighbors]
    rows, cols = near[kept], cols[kept]
    if settings.neighbor_weight == "uniform":
        w = np.ones(len(rows))
    else:
        w = (similarity[rows] - settings.min_similarity) / (1.0 - settings.min_similarity)
    here = np.asarray(predicted, np.float64)[cols]
    dx = events.predicted[rows] - here  # the prediction's difference from here
    b0 = settings.slope_prior_mean if slope_prior_mean is None else float(slope_prior_mean)
    target = events.scores[rows] - here - b0 * dx  # what is left for (a − p) + (b − b₀)·dx
    sums = [np.bincount(cols, v, minlength=num) for v in (w, w * dx, w * dx * dx, w * target, w * target * dx)]
    sum_w, sum_wx, sum_wxx, sum_wt, sum_wtx = sums
    # Normal equations of θ = (a − p, b − b₀), prior N(0, noise_var · diag(1/prior_events, slope_prior_var/noise_var)),
    # in units of one full-weight event: A θ = r, posterior covariance noise_var · A⁻¹ (2×2, solved in closed form).
    a11 = settings.prior_events + sum_w
    if prior_correlation is not None and settings.expert_correlation > 0:
        return _linked(sum_w, sum_wx, sum_wxx, sum_wt, sum_wtx, experts, prior_correlation, settings)
    if settings.slope_prior_var == 0:  # b fixed at b₀
        return Correction(sum_wt / a11, np.sqrt(settings.noise_var / a11), sum_w)
    a12, a22 = sum_wx, settings.noise_var / settings.slope_prior_var + sum_wxx
    det = a11 * a22 - a12 * a12
    return Correction((a22 * sum_wt - a12 * sum_wtx) / det, np.sqrt(settings.noise_var * a22 / det), sum_w)


def anchor(events: Events, context: np.ndarray, experts: np.ndarray, settings: OnlineLearningConfig) -> np.ndarray | None:
    """(len(experts),) each expert's *context-free* posterior mean over the tenant's events near `context` (cosine
    similarity ≥ `min_similarity`, each weighing 1): its mean feedback score there, shrunk toward the router's mean
    prediction of it over those same prompts by `prior_events` — or None without such events (or without
    `events.predictions`).

    Why: near a prompt of a task the router never saw, each expert's corrected quality still carries the
    router's per-prompt estimate wherever that expert has little evidence, and per-prompt noise then spreads the
    traffic over experts a few hundredths apart — each pick a little worse on average than staying with the best
    one (docs/online-learning.md, "The anchor"). Averaged over the tenant's traffic there, that noise cancels: the
    anchor is the expert this traffic's feedback says is best, and a challenger must beat it at the prompt by a
    margin of its own posterior SDs (`selection.Challengers.EVERY`)."""
    experts = np.asarray(experts, np.int64)
    if not len(events) or events.predictions is None or not len(experts):
        return None
    near = np.einsum("ij,j->i", events.contexts, context) >= settings.min_similarity
    if not near.any():
        return None
    num_all = events.predictions.shape[1]
    counts = np.bincount(events.experts[near], minlength=num_all)[experts]
    sums = np.bincount(events.experts[near], events.scores[near].astype(np.float64), minlength=num_all)[experts]
    prior = events.predictions[near][:, experts].astype(np.float64).mean(axis=0)
    return (settings.prior_events * prior + sums) / (settings.prior_events + counts)


def event_gain(score: float, predicted: float, corrected: float) -> float:
    """How much better the correction predicted one event's score than its alternative did: (s − p)² − (s − q)²,
    q the correction from the events before this one, p the alternative's prediction of the answering expert (the
    router's own, or a more local correction's: `self_check_alternative_similarity`). Its expectation is
    (μ − p)² − (μ − q)², μ the expert's true mean there: positive where the correction moves toward the truth,
    negative where it pulls a better prediction away."""
    return (score - predicted) ** 2 - (score - corrected) ** 2


def self_check(events: Events, context: np.ndarray, settings: OnlineLearningConfig) -> float:
    """The share γ ∈ [0, 1] of the correction to apply at `context`, from the tenant's own record (`events.gains`,
    one `event_gain` per event): the `self_check_neighbors` events most similar to it (cosine ≥ `min_similarity`,
    of any expert, weighted as `correction` weighs them) give a weighted t-statistic of the gain,
    z = Σ w·g / √(Σ w²·g²), and γ = min(1, 2·Φ(z + z₀)), z₀ = `self_check_tolerance_sd`. So the correction is kept
    whole unless the record near the prompt says it predicted worse than its alternative (the router, or a more
    local correction) by more than z₀ SDs (with z₀ = 0: z = −1 gives γ ≈ 0.32, z = −2 γ ≈ 0.05); 1 with the check
    off or no record near the prompt. The learner blends the correction with the alternative by γ.

    Why: a tenant's feedback from a task the router never saw pulls the estimates of familiar prompts nearby toward
    that task's scores (with `min_similarity` 0.3, 86% of cross-task prompt pairs are "near"), which costs a tenant
    with mixed traffic quality (docs/online-learning.md, "Mixed traffic"). Whether the correction helps is itself
    measurable, prequentially, on the feedback that keeps arriving: each event is predicted before it is learned."""
    k = int(settings.self_check_neighbors)
    if k <= 0 or not len(events) or events.gains is None:
        return 1.0
    similarity = np.einsum("ij,j->i", events.contexts, context)
    near = np.nonzero(similarity >= settings.min_similarity)[0]
    if not len(near):
        return 1.0
    if len(near) > k:
        near = near[np.argpartition(-similarity[near], k - 1)[:k]]
    if settings.neighbor_weight == "uniform":
        w = np.ones(len(near))
    else:
        w = (similarity[near] - settings.min_similarity) / (1.0 - settings.min_similarity)
    g = np.asarray(events.gains, np.float64)[near]
    spread = float(np.sqrt(np.sum(w * w * g * g)))
    if spread == 0.0:
        return 1.0
    z = float(np.sum(w * g)) / spread + float(settings.self_check_tolerance_sd)
    return min(1.0, 1.0 + math.erf(z / math.sqrt(2.0)))


def _linked(sum_w, sum_wx, sum_wxx, sum_wt, sum_wtx, experts, prior_correlation, settings) -> Correction:
    """The joint posterior of the intercepts under the correlated prior, each expert's slope eliminated (its
    Schur complement): with ρ = 0 it is the per-expert closed form exactly."""
    rho = settings.expert_correlation
    linked = np.asarray(prior_correlation, np.float64)[np.ix_(experts, experts)]
    shape = (1.0 - rho) * np.eye(len(experts)) + rho * linked
    precision = settings.prior_events * np.linalg.inv(shape)
    rhs = np.asarray(sum_wt, np.float64).copy()
    diag = np.asarray(sum_w, np.float64).copy()
    if settings.slope_prior_var > 0:
        a22 = settings.noise_var / settings.slope_prior_var + sum_wxx
        diag -= sum_wx * sum_wx / a22
        rhs -= sum_wx * sum_wtx / a22
    covariance = np.linalg.inv(precision + np.diag(diag))
    return Correction(covariance @ rhs, np.sqrt(settings.noise_var * np.diag(covariance)), sum_w)
