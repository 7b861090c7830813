"""Named policy sets and the one-call way to run them on a workload and a cluster.

Policy sets (`POLICY_SETS`), every serverless one the live default `ControlSettings()` — what
`switchboard serve` runs when the config says nothing under `control_plane.policies` — with the explicit
changes of `POLICY_SET_DELTAS`:

- `static`: peak-provisioned, always on, one GPU kind (`static_hardware`, H100 by default), round-robin,
  quality-only routing. It runs on its own fleet of that kind, sized for the workload's busiest minute.
- `fixed-keepalive`: the obvious serverless fleet on the given cluster — scale-to-zero with a fixed 10-minute
  idle timeout, autoscaling, first-fit placement, least-outstanding-tokens balancing, admit-always, no
  migration or pre-warming, quality-only routing.
- `quality-only-routing`: the full serverless fleet (hybrid-histogram keep-alive, route-aware pre-warming,
  autoscaling, cost-aware placement, prefix-affinity balancing, SLO admission, migration) with a router blind
  to fleet state.
- `switchboard`: the live default itself — all of it, with fleet-aware routing and cold-start hiding — on the
  live default step interval (`ControlPlaneConfig.step_interval_s`).

Every serverless set runs the live fleet's own decision path (`switchboard.policies.loop.ControlLoop`); only
the settings differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from switchboard.config.schema import ControlPlaneConfig
from switchboard.policies.control import ControlSettings
from switchboard.perf.roofline import EngineProfile
from switchboard.sim.cluster import BuiltCluster, ClusterSpec, PoolSpec, resolve_cluster
from switchboard.sim.planes import ServerlessPlane, StaticPlane, peak_replicas, quality_only_choices
from switchboard.sim.report import Summary, summarize
from switchboard.sim.runner import RoutingInputs, RunResult, Simulation
from switchboard.sim.workload import NO_EXPERT, Workload

POLICY_SETS = ("static", "fixed-keepalive", "quality-only-routing", "switchboard")
EXTRA_POLICY_SETS = ("hybrid-keepalive", "switchboard-sleep")
"""Not in the default comparison: `hybrid-keepalive` is `fixed-keepalive` with only the keep-alive policy swapped
for the hybrid histogram (the keep-alive experiment's treatment); `switchboard-sleep` is `switchboard` with the
sleep tier (warm → asleep → cold, `Knobs.sleep_after_s`; wake times from `perf.sleep`)."""

_BASIC_FLEET: dict[str, Any] = {
    "placement": {"kind": "first-fit"}, "balance": {"kind": "least-outstanding-tokens"},
    "admission": {"kind": "always"}, "migration": {"kind": "none"}, "routing": {"kind": "quality-only"},
    "prewarm": {"kind": "none"},
}
POLICY_SET_DELTAS: dict[str, dict[str, Any]] = {
    "switchboard": {},
    # 0: an idle replica sleeps at the first control step at which keep-alive's costs allow it (the wake keeps the
    # SLO and the rest of the idle gap is worth the wake, policies/keepalive.py); a fixed delay only adds warm time.
    "switchboard-sleep": {"keepalive": {"sleep_after_s": 0.0, "asleep_keepalive_s": 1800.0}},
    "quality-only-routing": {"routing": {"kind": "quality-only"}},
    "fixed-keepalive": {**_BASIC_FLEET, "keepalive": {"kind": "fixed"}},
    "hybrid-keepalive": _BASIC_FLEET,
}
"""Each serverless policy set as its changes to the live default `ControlSettings()` (section → fields)."""

DEFAULT_STEP_INTERVAL_S: float = ControlPlaneConfig.model_fields["step_interval_s"].default
"""The live control loop's default period, which the simulator steps on too."""


@dataclasses.dataclass(frozen=True)
class Knobs:
    """What `sim plan` searches over and the CLI sets, on top of a policy set's settings. None: the live
    default."""

    cost_weight: float = 0.0
    """λ of the router, per USD/Mtok."""
    demand_headroom: float | None = None
    """Autoscale with `demand-at-slo` for this multiple of the recent arrival rate (`AutoscaleSettings`)."""
    fixed_idle_timeout_s: float | None = None
    """`fixed-keepalive`'s idle timeout."""
    fallback_keepalive_s: float | None = None
    """The hybrid keep-alive's window for experts with too little history."""
    static_hardware: str = "h100"
    sleep_after_s: float | None = None
    """`switchboard-sleep`: idle time after which a replica may sleep (host RAM, no devices) instead of staying
    warm (the set's 0 s when None: as soon as keep-alive's costs allow)."""
    asleep_keepalive_s: float | None = None
    control_interval_s: float = DEFAULT_STEP_INTERVAL_S
    """Period of the control step (it also runs at once when a request waits for a replica)."""
    seed: int = 0


def with_delta(settings: ControlSettings, delta: dict[str, Any]) -> ControlSettings:
    """`settings` with `delta`'s fields replaced (section → {field: value}, or a top-level field → value),
    validated as a whole."""
    merged = settings.model_dump()
    for key, value in delta.items():
        merged[key] = {**merged[key], **value} if isinstance(value, dict) else value
    return ControlSettings.model_validate(merged)


def replica_tokens_per_s(profile: EngineProfile, mean_prompt: float, mean_output: float, tpot_slo_s: float) -> float:
    """Sustainable prompt+output tokens/s of one replica at the largest batch whose decode step meets the TPOT
    SLO: one request costs its prefill plus its share of the batch's decode time."""
    ctx = mean_prompt + mean_output / 2
    batch = 1
    while batch < profile.max_batch_size:
        nxt = min(profile.max_batch_size, batch * 2)
        if profile.decode_step_time_s(nxt, int(nxt * ctx)) > tpot_slo_s or nxt * (mean_prompt + mean_output) > profile.kv_capacity_tokens:
            break
        batch = nxt
    step_s = profile.decode_step_time_s(batch, int(batch * ctx))
    per_request_s = profile.prefill_time_s(int(mean_prompt)) + mean_output * step_s / batch
    return (mean_prompt + mean_output) / per_request_s


def static_cluster(base: ClusterSpec, workload: Workload, routing: RoutingInputs, knobs: Knobs,
                   experts: tuple[str, ...]) -> tuple[BuiltCluster, dict[str, int]]:
    """A one-kind fleet sized for the workload's busiest minute under quality-only routing."""
    kind = knobs.static_hardware
    probe = resolve_cluster(base.with_pools([PoolSpec(hardware=kind, workers=1, devices_per_worker=8)]))
    price = np.array([e.usd_per_mtok for e in probe.experts])
    chosen = quality_only_choices(experts, routing.predicted, price, knobs.cost_weight)
    chosen = _with_pinned(chosen, workload, experts)
    mean_p, mean_o = float(workload.num_prompt_tokens.mean()), float(workload.num_output_tokens.mean())
    capacity = {e: replica_tokens_per_s(probe.profiles[(e, kind)], mean_p, mean_o, base.slo.tpot_s)
                for e in experts if (e, kind) in probe.profiles}
    counts = peak_replicas(workload.arrival_s, (workload.num_prompt_tokens + workload.num_output_tokens).astype(float),
                           chosen, experts, capacity)
    devices = sum(n * probe.profiles[(e, kind)].num_devices for e, n in counts.items())
    pools = [PoolSpec(hardware=kind, workers=max(1, math.ceil(devices / 8)) + 1, devices_per_worker=8)]
    return resolve_cluster(base.with_pools(pools)), counts


def _with_pinned(chosen: np.ndarray, workload: Workload, experts: tuple[str, ...]) -> np.ndarray:
    if not workload.expert_names:
        return chosen
    table = np.array([experts.index(n) for n in workload.expert_names] + [NO_EXPERT], dtype=np.int32)
    pinned = table[workload.pinned_expert]
    return np.where(pinned != NO_EXPERT, pinned, chosen)


def control_settings(name: str, knobs: Knobs = Knobs()) -> ControlSettings:
    """The control plane's settings for a serverless policy set: the live default, the set's delta, the knobs."""
    if name not in POLICY_SET_DELTAS:
        raise KeyError(f"unknown policy set {name!r}; known: {', '.join(POLICY_SETS + EXTRA_POLICY_SETS)}")
    knob_delta: dict[str, Any] = {"routing": {"usd_weight": knobs.cost_weight}}
    if knobs.demand_headroom is not None:
        knob_delta["autoscale"] = {"kind": "demand-at-slo", "demand_headroom": knobs.demand_headroom}
    keepalive = {"idle_timeout_s": knobs.fixed_idle_timeout_s, "fallback_keepalive_s": knobs.fallback_keepalive_s}
    knob_delta["keepalive"] = {k: v for k, v in keepalive.items() if v is not None}
    if name == "switchboard-sleep":
        tier = {"sleep_after_s": knobs.sleep_after_s, "asleep_keepalive_s": knobs.asleep_keepalive_s}
        knob_delta["keepalive"].update({k: v for k, v in tier.items() if v is not None})
    return with_delta(with_delta(ControlSettings(), POLICY_SET_DELTAS[name]), knob_delta)


def make_plane(name: str, cluster: BuiltCluster, routing: RoutingInputs, knobs: Knobs) -> ServerlessPlane:
    """The serverless control plane of a policy set on `cluster`."""
    price = np.array([e.usd_per_mtok for e in cluster.experts])
    choices = quality_only_choices(cluster.expert_ids, routing.predicted, price, knobs.cost_weight)
    return ServerlessPlane(name, control_settings(name, knobs), cluster.expert_ids, price, choices,
                           control_interval_s=knobs.control_interval_s, seed=knobs.seed,
                           predicted_quality=routing.predicted)


def run_policy(
    name: str,
    spec: ClusterSpec,
    workload: Workload,
    routing_for: Callable[[tuple[str, ...]], RoutingInputs],
    knobs: Knobs = Knobs(),
    *,
    on_progress: Callable[[int], None] | None = None,
    hardware_overrides=None,
    warmup_s: float = 0.0,
) -> tuple[Summary, RunResult]:
    """Run one policy set; `routing_for(expert_ids)` gives the per-request quality in that expert order."""
    cluster = resolve_cluster(spec, hardware_overrides)
    # The router's conservative rule, if it has one, is applied once here, at this run's λ, for every plane.
    routing = routing_for(cluster.expert_ids).judged(np.array([e.usd_per_mtok for e in cluster.experts]),
                                                     knobs.cost_weight)
    if name == "static":
        cluster, counts = static_cluster(spec, workload, routing, knobs, cluster.expert_ids)
        price = np.array([e.usd_per_mtok for e in cluster.experts])
        choices = quality_only_choices(cluster.expert_ids, routing.predicted, price, knobs.cost_weight)
        plane = StaticPlane(name, _with_pinned(choices, workload, cluster.expert_ids), counts, knobs.static_hardware)
    else:
        plane = make_plane(name, cluster, routing, knobs)
    result = Simulation(cluster, workload, plane, routing, on_progress=on_progress, warmup_s=warmup_s).run()
    return summarize(result, name, warmup_s), result
