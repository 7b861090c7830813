"""Per-expert request history: what keep-alive learns idle times from."""

from __future__ import annotations

import dataclasses

from switchboard.frozen import evolver_of
from switchboard.types import ExpertId, Seconds


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

    def on_arrival(self, at_s: Seconds) -> "ExpertActivity":
        gaps, num_gaps = self.recent_idle_gaps_s, self.num_idle_gaps
        if self.is_idle and self.num_arrivals > 0:
            # The first arrival has no gap before it: "since creation" is not an idle time of the workload.
            gaps = (gaps + (max(0.0, at_s - self.idle_since_at),))[-self.MAX_RECENT_GAPS:]
            num_gaps += 1
        return _evolve_activity(
            self, num_in_flight=self.num_in_flight + 1, num_arrivals=self.num_arrivals + 1, last_arrival_at=at_s,
            num_idle_gaps=num_gaps, recent_idle_gaps_s=gaps,
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
