"""Keep-alive / scale-to-zero: when an idle expert keeps a warm replica, is unloaded, or is pre-warmed.

Variants (`KeepAliveSettings.kind`):

- `fixed`: keep warm for `idle_timeout_s` after the expert's last request ends (the AWS/Knative rule).
- `hybrid-histogram`: Shahrad et al., "Serverless in the Wild" (ATC'20). Each expert's idle times (end of
  its last request → next arrival) fill a histogram of `num_bins` × `bin_width_s`. The *pre-warm* time is a
  low percentile (5th) of idle times, the *keep-alive* window runs from there to a high percentile (99th),
  each widened by `margin`. With too few samples, too many idle times beyond the histogram's range, or a
  flat histogram (low coefficient of variation: not predictive), it falls back to `fallback_keepalive_s`.
  Our extension for bursty experts: idle times shorter than one bin are a burst's own gaps (a job's requests
  seconds apart), and unloading for them is pointless; so the replica *lingers* warm for one bin after each
  request, and the pre-warm percentile is taken over the longer idle times only — the gaps between bursts.
  Without this, a scheduled job's burst gaps put the 5th percentile at zero and the window never opens a
  pre-warm gap: the expert stays warm all the time.

**The sleep tier** (`sleep_after_s`, issue 15; vLLM's sleep mode): warm → asleep → cold. A replica idle for
`sleep_after_s` inside its keep-alive window is put to sleep (`SCALE_TO_ZERO` with code `sleep`): its engine
process stays, its weights leave the accelerator, and the accelerator is released — a cost of host RAM only
— until `asleep_keepalive_s` later, when it is stopped; a request in between wakes it in a fraction of a cold
start (the executor's `fleet.sleep.AsleepReplicas`). The explicit costs: warm holds the devices (their USD/hour),
asleep holds host RAM (no devices) and costs a wake (`perf.sleep.wake_time_s`) on the next request, cold holds
nothing and costs a cold start.

Both return one `KeepAliveDecision` per expert. A shared rule turns a window into a decision, and accounts for
the cold start: pre-warming starts `cold_start_s` ahead, and unloading for a pre-warm gap shorter than the
cold start is not worth it, so the replica is kept instead.
"""

from __future__ import annotations

import abc
import bisect
import dataclasses
import enum
import math
from collections.abc import Mapping

from pydantic import Field

from switchboard.fleet.state import ExpertActivity, FleetSnapshot
from switchboard.frozen import fast_init
from switchboard.policies import predict
from switchboard.policies.base import PolicySettings, Reason, Registry
from switchboard.policies.placement import sleep_frees_accelerator
from switchboard.types import ExpertId, Seconds


class KeepAliveKind(str, enum.Enum):
    FIXED = "fixed"
    HYBRID_HISTOGRAM = "hybrid-histogram"


class KeepAliveSettings(PolicySettings):
    kind: KeepAliveKind = KeepAliveKind.HYBRID_HISTOGRAM
    idle_timeout_s: float = Field(600.0, ge=0, description="fixed: keep warm this long after the last request.")
    bin_width_s: float = Field(60.0, gt=0, description="hybrid: width of one idle-time histogram bin.")
    num_bins: int = Field(240, ge=2, description="hybrid: bins; the histogram covers num_bins × bin_width_s.")
    prewarm_percentile: float = Field(5.0, ge=0, le=100)
    keepalive_percentile: float = Field(99.0, ge=0, le=100)
    margin: float = Field(0.1, ge=0, lt=1, description="Pre-warm shrinks and keep-alive grows by this fraction.")
    min_samples: int = Field(10, ge=1, description="Fewer idle times than this → fallback window.")
    max_out_of_bounds_fraction: float = Field(0.5, ge=0, le=1)
    min_histogram_cv: float = Field(
        2.0, ge=0, description="Coefficient of variation of bin counts below which the histogram is not trusted."
    )
    fallback_keepalive_s: float = Field(600.0, ge=0, description="Window for experts with too little history.")
    sleep_after_s: float | None = Field(
        None, ge=0, description="Sleep tier: a replica idle this long (and past a burst's linger) inside its window "
        "is put to sleep instead of kept warm; None: no sleep tier (warm → cold only).",
    )
    asleep_keepalive_s: float = Field(
        1800.0, ge=0, description="Sleep tier: an asleep replica is stopped this long after it went to sleep.",
    )


class KeepAliveAction(str, enum.Enum):
    KEEP_WARM = "keep-warm"
    SCALE_TO_ZERO = "scale-to-zero"
    PREWARM = "prewarm"
    """Start a replica at `at_s` (now or later) ahead of the predicted next arrival."""
    STAY_COLD = "stay-cold"


class KeepAliveReasonCode(str, enum.Enum):
    BUSY = "busy"
    EXTERNAL = "external"
    IN_WINDOW = "in-keepalive-window"
    WINDOW_EXPIRED = "keepalive-window-expired"
    PREWARM_GAP = "unloaded-until-prewarm"
    PREWARM_SCHEDULED = "prewarm-scheduled"
    PREWARM_DUE = "prewarm-due"
    NEVER_USED = "never-used"
    SLEEP = "sleep"


SLEEP_CODES = frozenset({KeepAliveReasonCode.SLEEP, KeepAliveReasonCode.PREWARM_GAP})
"""Keep-alive reasons whose drained replicas sleep instead of stopping (when the tier is on; the executors'
`fleet.sleep.AsleepReplicas`)."""


# --------------------------------------------------------------------------------------------- histogram


@dataclasses.dataclass(frozen=True, slots=True)
class IdleHistogram:
    """Per-expert idle-time histogram, the hybrid policy's learned state.

    `num_consumed` is the expert's `ExpertActivity.num_idle_gaps` already added, so ingesting is idempotent.
    """

    bin_width_s: float
    counts: tuple[int, ...]
    num_out_of_bounds: int = 0
    num_consumed: int = 0
    _memo: dict | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def memo(self) -> dict:
        """A dict for memoizing what policies derive from this histogram (it is immutable; `ingest` gives the
        changed copy a fresh memo). A value that also depends on something else must be stored with that
        something, to be checked on use (e.g. the policy's settings, by identity)."""
        memo = self._memo
        if memo is None:
            memo = {}
            object.__setattr__(self, "_memo", memo)
        return memo

    @classmethod
    def empty(cls, bin_width_s: float, num_bins: int) -> "IdleHistogram":
        return cls(bin_width_s, (0,) * num_bins)

    @property
    def num_samples(self) -> int:
        return sum(self.counts) + self.num_out_of_bounds

    @property
    def range_s(self) -> Seconds:
        return self.bin_width_s * len(self.counts)

    def ingest(self, activity: ExpertActivity) -> "IdleHistogram":
        gaps = activity.gaps_after(self.num_consumed)
        if not gaps and self.num_consumed == activity.num_idle_gaps:
            return self
        counts = list(self.counts)
        num_oob = self.num_out_of_bounds
        for gap_s in gaps:
            index = int(gap_s // self.bin_width_s)
            if index < len(counts):
                counts[index] += 1
            else:
                num_oob += 1
        return dataclasses.replace(
            self, counts=tuple(counts), num_out_of_bounds=num_oob, num_consumed=activity.num_idle_gaps
        )

    def coefficient_of_variation(self) -> float:
        n = len(self.counts)
        mean = sum(self.counts) / n
        if mean == 0:
            return 0.0
        var = sum((c - mean) ** 2 for c in self.counts) / n
        return math.sqrt(var) / mean

    def percentile_bin(self, percentile: float, first_bin: int = 0) -> int:
        """Index of the bin holding the `percentile`-th in-range idle time among bins `first_bin` and up (needs
        samples there)."""
        total = sum(self.counts[first_bin:])
        rank = max(1, math.ceil(total * percentile / 100))
        running = 0
        for index in range(first_bin, len(self.counts)):
            running += self.counts[index]
            if running >= rank:
                return index
        return len(self.counts) - 1


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAliveState:
    histograms: Mapping[ExpertId, IdleHistogram] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------------------------- decisions


@dataclasses.dataclass(frozen=True, slots=True)
class KeepAliveWindow:
    """After an expert goes idle: cold for `prewarm_s`, then warm for `keepalive_s` — except that a replica still
    up lingers warm for the first `linger_s` (short gaps inside a burst) before it is unloaded for the gap."""

    prewarm_s: Seconds
    keepalive_s: Seconds
    reason: str
    linger_s: Seconds = 0.0


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class KeepAliveDecision:
    expert_id: ExpertId
    action: KeepAliveAction
    at_s: Seconds
    """When the action takes effect: `decided_at_s`, or the future pre-warm time for `PREWARM`."""
    decided_at_s: Seconds
    reason: Reason

    @property
    def wants_replica(self) -> bool:
        """Whether the expert should have at least one replica now."""
        return self.action is KeepAliveAction.KEEP_WARM or (
            self.action is KeepAliveAction.PREWARM and self.at_s <= self.decided_at_s
        )


class KeepAlivePolicy(abc.ABC):
    def __init__(self, settings: KeepAliveSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def window(self, histogram: IdleHistogram) -> KeepAliveWindow:
        """The pre-warm and keep-alive window for an expert with this idle history."""

    def observe(self, snapshot: FleetSnapshot, state: KeepAliveState) -> KeepAliveState:
        """The state with every expert's newly completed idle gaps added to its histogram."""
        histograms = dict(state.histograms)
        for expert_id in snapshot.experts:
            current = histograms.get(expert_id) or IdleHistogram.empty(self.settings.bin_width_s, self.settings.num_bins)
            histograms[expert_id] = current.ingest(snapshot.activity_of(expert_id))
        return KeepAliveState(histograms)

    def decide(
        self, snapshot: FleetSnapshot, state: KeepAliveState, cold_start_s: Mapping[ExpertId, Seconds]
    ) -> tuple[dict[ExpertId, KeepAliveDecision], KeepAliveState]:
        """One decision per expert and the updated state. `cold_start_s` is each expert's expected wake time."""
        state = self.observe(snapshot, state)
        now_s = snapshot.now_s
        decisions = {}
        for expert_id, spec in snapshot.experts.items():
            if spec.is_external:
                decisions[expert_id] = KeepAliveDecision(
                    expert_id, KeepAliveAction.KEEP_WARM, now_s, now_s,
                    Reason(KeepAliveReasonCode.EXTERNAL, "external upstream: always warm"))
                continue
            decisions[expert_id] = decide_from_window(
                expert_id,
                snapshot.activity_of(expert_id),
                self.window(state.histograms[expert_id]),
                has_replica=bool(snapshot.accepting_replicas_of(expert_id)),
                cold_start_s=cold_start_s.get(expert_id, 0.0),
                now_s=now_s,
                sleep_after_s=self._sleep_after_s(snapshot, expert_id, state.histograms[expert_id]),
                wakes_on_demand=(self.settings.sleep_after_s is not None
                                 and predict.wakes_within_slo(snapshot, expert_id)),
            )
        return decisions, state

    def _sleep_after_s(self, snapshot: FleetSnapshot, expert_id: ExpertId,
                       histogram: IdleHistogram) -> Seconds | None:
        """The tier's `sleep_after_s` if the expert's idle warm replicas should sleep now; else None (stay warm).

        Only where sleeping frees something priced (`placement.sleep_frees_accelerator`: the worker declares
        accelerators); on a worker without, asleep costs what warm does, so a replica there never sleeps — not
        after every request, as `sleep_after_s: 0` would otherwise put the embedded CPU worker to sleep.
        Then two explicit costs decide. Latency: each replica, put to sleep, must wake for the next request within
        its TTFT SLO (`predict.start_fits_slo`; an unknown wake time passes) — else sleeping inside the window trades
        the keep-alive's warm hit for a late first token. Money: the idle time still to come must be worth the
        wake, which bills the devices for `wake_s` again — ski rental (Karlin et al., 1988) with the idle-time
        distribution known: sleep once the expected rest of the idle gap, given that it has lasted this long
        (from the expert's recent exact idle gaps), exceeds the wake time. A busy expert's short lulls never
        pay, nor a bet on too little history; a gap longer than any seen does."""
        after_s = self.settings.sleep_after_s
        if after_s is None:
            return None
        activity = snapshot.activity_of(expert_id)
        idle_s = activity.idle_for_s(snapshot.now_s)
        if idle_s < after_s or not activity.is_idle:
            return after_s  # not asleep yet either way: decide_from_window keeps it warm
        replicas = snapshot.warm_replicas_of(expert_id)
        if not all(sleep_frees_accelerator(snapshot.workers[r.worker_id]) for r in replicas):
            return None  # asleep would cost what warm does there: a wake to pay for, nothing saved
        wake_s = None
        for replica in replicas:
            estimate = snapshot.estimate(expert_id, replica.hardware)
            if estimate is None or estimate.wake_s is None:
                continue
            if not predict.start_keeps_tail(snapshot, expert_id, estimate.wake_s, estimate):
                return None
            wake_s = max(wake_s or 0.0, estimate.wake_s)
        if wake_s is None:
            return after_s  # no wake time to weigh (e.g. the CPU worker's, measured live): the setting decides
        residual_s = _expected_residual_idle_s(histogram, activity, snapshot.now_s, self.settings.min_samples)
        return after_s if residual_s > wake_s else None


def _expected_residual_idle_s(histogram: IdleHistogram, activity: ExpertActivity, now_s: Seconds,
                              min_samples: int) -> Seconds:
    """E[gap − idle_s | gap > idle_s] over the expert's recent exact idle gaps; infinite when none was longer than
    `idle_s` (nothing says this one ends soon); 0 with fewer than `min_samples` gaps: too little history to bet a
    wake on. (Betting without it cost p99 TTFT: sleeping in a rare lull, the busy 49B expert lost its devices to
    another expert and cold-started, 1.609 s against 1.584 s on the conversation trace; letting experts with few
    arrivals sleep, or guessing a lull from the arrival rate, cost 0.6–0.7 points of TTFT attainment at seed 2.)
    The sorted gaps and their suffix sums are memoized on the histogram, which changes exactly when a gap
    completes."""
    memo = histogram.memo()
    held = memo.get(_RESIDUAL_KEY)
    if held is None or held[0] is not activity.recent_idle_gaps_s:
        gaps = sorted(activity.recent_idle_gaps_s)
        suffix = [0.0] * (len(gaps) + 1)
        for i in range(len(gaps) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + gaps[i]
        held = memo[_RESIDUAL_KEY] = (activity.recent_idle_gaps_s, gaps, suffix)
    _, gaps, suffix = held
    if len(gaps) < min_samples:
        return 0.0
    idle_s = activity.idle_for_s(now_s)
    first = bisect.bisect_right(gaps, idle_s)
    longer = len(gaps) - first
    if longer == 0:
        return math.inf
    return suffix[first] / longer - idle_s


_RESIDUAL_KEY = "keepalive.residual_idle"


def decide_from_window(
    expert_id: ExpertId,
    activity: ExpertActivity,
    window: KeepAliveWindow,
    *,
    has_replica: bool,
    cold_start_s: Seconds,
    now_s: Seconds,
    sleep_after_s: Seconds | None = None,
    wakes_on_demand: bool = False,
) -> KeepAliveDecision:
    """The shared rule. Guarantees: never `SCALE_TO_ZERO` while busy, nor inside the keep-alive window except
    to put the replica to sleep (code `sleep`, only with `sleep_after_s`; the caller passes it only where a wake
    meets the SLO, so a burst's linger may be spent asleep); never
    `PREWARM` an expert that `wakes_on_demand` (asleep, and woken within its SLO by the request itself)."""

    def decision(action: KeepAliveAction, code: KeepAliveReasonCode, detail: str, at_s: Seconds = now_s):
        return KeepAliveDecision(expert_id, action, at_s, now_s, Reason(code, f"{detail} ({window.reason})"))

    if not activity.is_idle:
        return decision(KeepAliveAction.KEEP_WARM, KeepAliveReasonCode.BUSY, f"{activity.num_in_flight} in flight")
    is_new = activity.num_arrivals == 0
    prewarm_s, keepalive_s = window.prewarm_s, window.keepalive_s
    if is_new or prewarm_s <= cold_start_s:
        # Unloading for a gap no longer than a cold start saves nothing and risks a late first token.
        prewarm_s, keepalive_s = 0.0, prewarm_s + keepalive_s
    else:
        # Wake early enough to be warm when the window opens.
        prewarm_s, keepalive_s = prewarm_s - cold_start_s, keepalive_s + cold_start_s
    warm_from = activity.idle_since_at + prewarm_s
    warm_until = warm_from + keepalive_s
    idle_s = now_s - activity.idle_since_at
    may_sleep = has_replica and sleep_after_s is not None and not is_new and idle_s >= sleep_after_s
    if now_s < warm_from:
        if may_sleep and idle_s < window.linger_s:
            # The burst's next request wakes it within its SLO: lingering asleep costs no cold start.
            return decision(KeepAliveAction.SCALE_TO_ZERO, KeepAliveReasonCode.SLEEP,
                            f"idle {idle_s:.0f}s: asleep (host RAM, no devices) rather than lingering "
                            f"{window.linger_s:.0f}s warm for the burst's next request")
        if has_replica and idle_s < window.linger_s:
            return decision(KeepAliveAction.KEEP_WARM, KeepAliveReasonCode.IN_WINDOW,
                            f"idle {idle_s:.0f}s: lingering {window.linger_s:.0f}s for the burst's next request")
        if has_replica:
            return decision(KeepAliveAction.SCALE_TO_ZERO, KeepAliveReasonCode.PREWARM_GAP,
                            f"next request unlikely before {warm_from:.0f}s: unload, pre-warm then")
        if wakes_on_demand:
            return decision(KeepAliveAction.STAY_COLD, KeepAliveReasonCode.SLEEP,
                            f"asleep: its next request wakes it in {cold_start_s:.1f}s, within its SLO")
        return decision(KeepAliveAction.PREWARM, KeepAliveReasonCode.PREWARM_SCHEDULED,
                        f"pre-warm at {warm_from:.0f}s", at_s=warm_from)
    if now_s < warm_until:
        if may_sleep:
            return decision(KeepAliveAction.SCALE_TO_ZERO, KeepAliveReasonCode.SLEEP,
                            f"idle {idle_s:.0f}s: asleep (host RAM, no devices) rather than warm until {warm_until:.0f}s")
        if has_replica:
            code = KeepAliveReasonCode.NEVER_USED if is_new else KeepAliveReasonCode.IN_WINDOW
            return decision(KeepAliveAction.KEEP_WARM, code, f"idle {idle_s:.0f}s, keep until {warm_until:.0f}s")
        if wakes_on_demand:
            return decision(KeepAliveAction.STAY_COLD, KeepAliveReasonCode.SLEEP,
                            f"asleep: its next request wakes it in {cold_start_s:.1f}s, within its SLO")
        if prewarm_s > 0:
            return decision(KeepAliveAction.PREWARM, KeepAliveReasonCode.PREWARM_DUE,
                            f"pre-warm window opened at {warm_from:.0f}s")
        code = KeepAliveReasonCode.NEVER_USED if is_new else KeepAliveReasonCode.IN_WINDOW
        return decision(KeepAliveAction.STAY_COLD, code, "cold and nothing predicted to arrive")
    code = KeepAliveReasonCode.NEVER_USED if is_new else KeepAliveReasonCode.WINDOW_EXPIRED
    if has_replica:
        return decision(KeepAliveAction.SCALE_TO_ZERO, code, f"idle {idle_s:.0f}s, window ended {warm_until:.0f}s")
    return decision(KeepAliveAction.STAY_COLD, code, f"idle {idle_s:.0f}s, window ended {warm_until:.0f}s")


# --------------------------------------------------------------------------------------------- variants

KEEPALIVE_POLICIES: Registry[KeepAliveKind, KeepAlivePolicy] = Registry("keepalive")


@KEEPALIVE_POLICIES.register(KeepAliveKind.FIXED)
class FixedKeepAlive(KeepAlivePolicy):
    def window(self, histogram: IdleHistogram) -> KeepAliveWindow:
        return KeepAliveWindow(0.0, self.settings.idle_timeout_s, f"fixed {self.settings.idle_timeout_s:.0f}s")


@KEEPALIVE_POLICIES.register(KeepAliveKind.HYBRID_HISTOGRAM)
class HybridHistogramKeepAlive(KeepAlivePolicy):
    def window(self, histogram: IdleHistogram) -> KeepAliveWindow:
        # A function of the histogram and the settings alone, asked for every expert at every control step while
        # a histogram changes only when its expert completes an idle gap: memoized on the histogram.
        memo = histogram.memo()
        held = memo.get(_HYBRID_WINDOW_KEY)
        if held is None or held[0] is not self.settings:
            held = memo[_HYBRID_WINDOW_KEY] = (self.settings, self._window(histogram))
        return held[1]

    def _window(self, histogram: IdleHistogram) -> KeepAliveWindow:
        s = self.settings
        fallback = KeepAliveWindow(0.0, s.fallback_keepalive_s, "")
        if histogram.num_samples < s.min_samples:
            return dataclasses.replace(fallback, reason=f"fallback: {histogram.num_samples} idle times < {s.min_samples}")
        if histogram.num_out_of_bounds > s.max_out_of_bounds_fraction * histogram.num_samples:
            return dataclasses.replace(fallback, reason="fallback: idle times mostly beyond the histogram")
        cv = histogram.coefficient_of_variation()
        if cv < s.min_histogram_cv:
            return dataclasses.replace(fallback, reason=f"fallback: histogram not predictive (cv {cv:.1f})")
        # A burst's own gaps (the first bin) say "stay for a moment", not when the next burst comes: linger for
        # them, and place the pre-warm by the gaps between bursts.
        has_bursts = histogram.counts[0] > 0 and sum(histogram.counts[1:]) > 0
        first_bin = 1 if has_bursts else 0
        head_s = histogram.percentile_bin(s.prewarm_percentile, first_bin) * histogram.bin_width_s
        tail_s = (histogram.percentile_bin(s.keepalive_percentile) + 1) * histogram.bin_width_s
        prewarm_s = head_s * (1 - s.margin)
        keepalive_s = tail_s * (1 + s.margin) - prewarm_s
        return KeepAliveWindow(prewarm_s, keepalive_s,
                               f"histogram p{s.prewarm_percentile:g}={head_s:.0f}s p{s.keepalive_percentile:g}={tail_s:.0f}s"
                               + (f", lingering {histogram.bin_width_s:.0f}s for bursts" if has_bursts else ""),
                               linger_s=histogram.bin_width_s if has_bursts else 0.0)


_HYBRID_WINDOW_KEY = "keepalive.hybrid_window"


def make_keepalive(settings: KeepAliveSettings) -> KeepAlivePolicy:
    return KEEPALIVE_POLICIES.create(settings)
