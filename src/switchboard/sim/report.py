"""The metrics of a run: SLO attainment, latency percentiles, delivered quality, cost, replica time.

Definitions (every request counts; a rejected request misses every SLO and has no latency). With `warmup_s`,
requests arriving before it are left out of the request metrics (SLOs, latency, quality) — a fleet that starts
empty needs a few cold starts to reach its steady state — but cost and replica time always cover the whole run.

- `slo_attainment`: fraction of requests with TTFT <= ttft_slo_s and TPOT <= tpot_slo_s;
  `ttft_slo_attainment`: the TTFT condition alone.
- TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1) for outputs > 1 token;
  e2e = finish - arrival. Percentiles are over finished requests.
- `quality`: mean true score of the chosen expert's answer over finished requests (routing data).
- `usd_cost`: sum over replicas of live time (start decision to stop, or to the end of the run) x USD/hour of
  all its devices. `replica_hours_by_hardware` is live replica-hours per hardware kind.
- `cold_starts`: replica starts (not pre-provisioned) decided in the measurement window; `cold_starts_from_zero`
  those whose expert had no accepting replica (wake-ups, as opposed to scale-ups); `prewarm_starts` those a
  pre-warm decided ahead of demand (keep-alive's histogram, route-aware pre-warming) rather than for requests;
  `requests_behind_cold_start`: requests that arrived while their expert had no warm replica (Serverless in the
  Wild's cold starts: invocations that find their application unloaded).
- `idle_replica_s`: warm time in the measurement window in which the replica's engine had no work, summed.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from switchboard.sim.runner import RunResult


@dataclasses.dataclass(frozen=True)
class Summary:
    policy: str
    warmup_s: float
    num_requests: int
    num_finished: int
    num_rejected: int
    slo_attainment: float
    ttft_slo_attainment: float
    p50_ttft_s: float
    p99_ttft_s: float
    p50_tpot_s: float
    p99_tpot_s: float
    p50_e2e_s: float
    p99_e2e_s: float
    quality: float
    usd_cost: float
    replica_hours_by_hardware: dict[str, float]
    cold_starts: int
    cold_starts_from_zero: int
    prewarm_starts: int
    requests_behind_cold_start: int
    idle_replica_s: float
    max_live_replicas: int
    simulated_s: float
    num_events: int
    requests_by_expert: dict[str, int]

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(self).items()}


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else math.nan


def summarize(result: RunResult, policy: str, warmup_s: float = 0.0) -> Summary:
    w = result.workload
    counted = w.arrival_s >= warmup_s
    done = ~np.isnan(result.finished_at) & counted
    arrival = w.arrival_s
    ttft = result.first_token_at - arrival
    multi = done & (w.num_output_tokens > 1)
    tpot = np.zeros(len(w))
    tpot[multi] = (result.finished_at[multi] - result.first_token_at[multi]) / (w.num_output_tokens[multi] - 1)
    e2e = result.finished_at - arrival
    n = max(1, int(counted.sum()))
    ttft_ok = done & (ttft <= result.ttft_slo_s + 1e-12)
    both_ok = ttft_ok & (tpot <= result.tpot_slo_s + 1e-12)

    hours: dict[str, float] = {}
    usd = 0.0
    idle_s = 0.0
    window_start = result.warmup_s
    for r in result.replicas:
        live_s = max(0.0, r.stopped_at - r.created_at)
        hours[r.hardware] = hours.get(r.hardware, 0.0) + live_s / 3600.0
        usd += live_s / 3600.0 * r.usd_per_hour
        if not math.isnan(r.warm_at) and r.stopped_at > window_start:
            warm_in_window = r.stopped_at - max(r.warm_at, window_start)
            busy_in_window = r.busy_s - (r.busy_before_warmup_s if r.warm_at < window_start else 0.0)
            idle_s += max(0.0, warm_in_window - busy_in_window)
    started = [r for r in result.replicas if not r.is_preprovisioned and r.created_at >= window_start]
    counts = np.bincount(result.expert_index[result.expert_index >= 0], minlength=len(result.expert_ids))
    return Summary(
        policy=policy,
        warmup_s=warmup_s,
        num_requests=int(counted.sum()),
        num_finished=int(done.sum()),
        num_rejected=int((result.rejected & counted).sum()),
        slo_attainment=float(both_ok.sum() / n),
        ttft_slo_attainment=float(ttft_ok.sum() / n),
        p50_ttft_s=_pct(ttft[done], 50), p99_ttft_s=_pct(ttft[done], 99),
        p50_tpot_s=_pct(tpot[multi], 50), p99_tpot_s=_pct(tpot[multi], 99),
        p50_e2e_s=_pct(e2e[done], 50), p99_e2e_s=_pct(e2e[done], 99),
        quality=_mean_known(result.true_quality[done]),
        usd_cost=usd,
        replica_hours_by_hardware={k: round(v, 4) for k, v in sorted(hours.items())},
        cold_starts=len(started),
        cold_starts_from_zero=sum(1 for r in started if r.is_from_zero),
        prewarm_starts=sum(1 for r in started if r.is_prewarm),
        requests_behind_cold_start=int((result.waited_for_cold_start & counted).sum()),
        idle_replica_s=idle_s,
        max_live_replicas=_max_live(result),
        simulated_s=result.end_s,
        num_events=result.num_events,
        requests_by_expert={e: int(c) for e, c in zip(result.expert_ids, counts) if c},
    )


def _mean_known(values: np.ndarray) -> float:
    known = values[~np.isnan(values)]
    return float(known.mean()) if len(known) else math.nan


def _max_live(result: RunResult) -> int:
    edges = sorted([(r.created_at, 1) for r in result.replicas] + [(r.stopped_at, -1) for r in result.replicas],
                   key=lambda e: (e[0], e[1]))
    live = peak = 0
    for _, d in edges:
        live += d
        peak = max(peak, live)
    return peak
