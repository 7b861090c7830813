"""Per-expert request history: what keep-alive learns idle times from, and the recent demand that placement and
autoscaling size replicas for."""

from __future__ import annotations

import dataclasses
import math

from switchboard.frozen import evolver_of, fast_init
from switchboard.types import ExpertId, Seconds

DEMAND_HALF_LIFE_S = 60.0
"""Half-life of the decayed request and token counts behind `ExpertActivity.demand` (about a cold start of a
large model: demand older than that says little about what the next replica will serve)."""
_DEMAND_TAU_S = DEMAND_HALF_LIFE_S / math.log(2)


@fast_init
@dataclasses.dataclass(frozen=True, slots=True)
class Demand:
    """An expert's recent arrival rate and mean request size (exponentially decayed, `DEMAND_HALF_LIFE_S`)."""

    requests_per_s: float = 0.0
    mean_prompt_tokens: float = 0.0
    """0 when the recorder gave no token counts."""
    mean_output_tokens: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class ExpertActivity:
    """Per-expert request history that keep-alive needs, maintained with `on_arrival` / `on_finish`.

    An *idle gap* runs from the moment the expert's last in-flight request finished to the next arrival
    (Shahrad et al.'s "idle time"). Completed gaps are appended to `recent_idle_gaps_s` (the last
    `MAX_RECENT_GAPS`) and counted in `num_idle_gaps`, a monotone cursor: a policy that has consumed
    `k` gaps ingests `recent_idle_gaps_s[-(num_idle_gaps - k):]` next time, so it may run at any frequency.
    """

    MAX_RECENT_GAPS = 256

    expert_id: ExpertId
    num_in_flight: int = 0
    num_arrivals: int = 0
    last_arrival_at: Seconds = 0.0
    """Meaningful only when `num_arrivals > 0`."""
    idle_since_at: Seconds = 0.0
    """When the expert last became idle (or was created); meaningful only while `num_in_flight == 0`."""
    num_idle_gaps: int = 0
    recent_idle_gaps_s: tuple[Seconds, ...] = ()
    first_arrival_at: Seconds = 0.0
    """Meaningful only when `num_arrivals > 0`."""
    decayed_arrivals: float = 0.0
    """Σ exp(−(last_arrival_at − t_i)/τ) over arrivals i, τ = DEMAND_HALF_LIFE_S / ln 2; likewise the token sums."""
    decayed_prompt_tokens: float = 0.0
    decayed_output_tokens: float = 0.0

    @property
    def is_idle(self) -> bool:
        return self.num_in_flight == 0

    def idle_for_s(self, now_s: Seconds) -> Seconds:
        """How long the expert has been idle at `now_s` (0 while busy)."""
        return max(0.0, now_s - self.idle_since_at) if self.is_idle else 0.0

    def gaps_after(self, num_consumed: int) -> tuple[Seconds, ...]:
        """The idle gaps completed after the first `num_consumed` (those still in the recent window)."""
        num_new = min(self.num_idle_gaps - num_consumed, len(self.recent_idle_gaps_s))
        return self.recent_idle_gaps_s[len(self.recent_idle_gaps_s) - num_new:] if num_new > 0 else ()

    def demand(self, now_s: Seconds) -> Demand:
        """Recent arrival rate (requests/s) and mean request size at `now_s`.

        The decayed count of arrivals divided by τ estimates a steady rate; before τ has passed since the first
        arrival the count is divided by the part of τ observed so far, so a new expert's rate is not understated.
        The rate is 0 until a second arrival: one request says nothing about how often the next come (divided by
        the 1 s floor it would read as one per second, and a long first prompt would then size the expert for a
        big card or many replicas). The mean request size is known from the first.
        """
        if self.num_arrivals == 0:
            return Demand()
        decay = math.exp(-max(0.0, now_s - self.last_arrival_at) / _DEMAND_TAU_S)
        observed_s = _DEMAND_TAU_S * -math.expm1(-max(0.0, now_s - self.first_arrival_at) / _DEMAND_TAU_S)
        count = self.decayed_arrivals
        return Demand(
            requests_per_s=count * decay / max(observed_s, 1.0) if self.num_arrivals > 1 else 0.0,
            mean_prompt_tokens=self.decayed_prompt_tokens / count,
            mean_output_tokens=self.decayed_output_tokens / count,
        )

    def on_arrival(self, at_s: Seconds, num_prompt_tokens: int = 0, num_output_tokens: int = 0) -> "ExpertActivity":
        """A request arrived; its token counts (if known) feed the mean request size of `demand`."""
        # (Once per request: written out rather than through `is_idle` and `max`.)
        gaps, num_gaps = self.recent_idle_gaps_s, self.num_idle_gaps
        if self.num_arrivals:
            if self.num_in_flight == 0:
                # The first arrival has no gap before it: "since creation" is not an idle time of the workload.
                gap_s = at_s - self.idle_since_at
                gaps = (gaps + (gap_s if gap_s > 0.0 else 0.0,))[-self.MAX_RECENT_GAPS:]
                num_gaps += 1
            since_last_s = at_s - self.last_arrival_at
            decay = math.exp(-(since_last_s if since_last_s > 0.0 else 0.0) / _DEMAND_TAU_S)
            first_at = self.first_arrival_at
        else:
            decay, first_at = 0.0, at_s
        return _evolve_activity(
            self, num_in_flight=self.num_in_flight + 1, num_arrivals=self.num_arrivals + 1, last_arrival_at=at_s,
            num_idle_gaps=num_gaps, recent_idle_gaps_s=gaps, first_arrival_at=first_at,
            decayed_arrivals=self.decayed_arrivals * decay + 1.0,
            decayed_prompt_tokens=self.decayed_prompt_tokens * decay + num_prompt_tokens,
            decayed_output_tokens=self.decayed_output_tokens * decay + num_output_tokens,
        )

    def on_finish(self, at_s: Seconds) -> "ExpertActivity":
        """A request of this expert finished or was rejected/cancelled after `on_arrival`."""
        if self.num_in_flight <= 0:
            raise ValueError(f"expert {self.expert_id}: finish without a matching arrival")
        num_in_flight = self.num_in_flight - 1
        return _evolve_activity(
            self, num_in_flight=num_in_flight, idle_since_at=at_s if num_in_flight == 0 else self.idle_since_at
        )


_evolve_activity = evolver_of(ExpertActivity)  # compiled once, like the dataclass machinery
