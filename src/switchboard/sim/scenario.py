"""Named policy sets and the one-call way to run them on a workload and a cluster.

Policy sets (`POLICY_SETS`):

- `static`: peak-provisioned, always on, one GPU kind (`static_hardware`, H100 by default), round-robin,
  quality-only routing. It runs on its own fleet of that kind, sized for the workload's busiest minute.
- `fixed-keepalive`: the obvious serverless fleet on the given cluster — scale-to-zero with a fixed 10-minute
  idle timeout, autoscaling, first-fit placement, least-outstanding-tokens balancing, admit-always, no
  migration or pre-warming, quality-only routing.
- `quality-only-routing`: the full serverless fleet (the control plane's defaults: hybrid-histogram keep-alive,
  route-aware pre-warming, autoscaling, cost-aware placement, prefix-affinity balancing, SLO admission,
  migration) with a router blind to fleet state.
- `switchboard`: all of it, with fleet-aware routing and cold-start hiding.

Every serverless set runs the control plane's own code (`switchboard.policies.control.ControlPlane`) with the
settings of `control_settings`; only the settings differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from switchboard.policies.admission import AdmissionSettings
from switchboard.policies.autoscale import AutoscaleSettings
from switchboard.policies.balance import BalanceSettings
from switchboard.policies.control import ControlSettings
from switchboard.policies.keepalive import KeepAliveSettings
from switchboard.policies.migration import MigrationSettings
from switchboard.policies.placement import PlacementSettings
from switchboard.policies.routing import PrewarmSettings, RoutingKind, RoutingSettings
from switchboard.perf.roofline import EngineProfile
from switchboard.sim.cluster import BuiltCluster, ClusterSpec, PoolSpec, build_cluster
from switchboard.sim.planes import ServerlessPlane, StaticPlane, peak_replicas, quality_only_choices
from switchboard.sim.report import Summary, summarize
from switchboard.sim.runner import RoutingInputs, RunResult, Simulation
from switchboard.sim.workload import NO_EXPERT, Workload

POLICY_SETS = ("static", "fixed-keepalive", "quality-only-routing", "switchboard")
EXTRA_POLICY_SETS = ("hybrid-keepalive", "switchboard-sleep")
"""Not in the default comparison: `hybrid-keepalive` is `fixed-keepalive` with only the keep-alive policy swapped
for the hybrid histogram (the keep-alive experiment's treatment); `switchboard-sleep` is `switchboard` with the
sleep tier (warm → asleep → cold, `Knobs.sleep_after_s`; wake times from `perf.sleep`)."""


@dataclasses.dataclass(frozen=True)
class Knobs:
    """What `sim plan` searches over, and what every policy set shares."""

    cost_weight: float = 0.0
    """λ of the router, per USD/Mtok."""
    latency_weight_per_s: float = 0.05
    """μ of fleet-aware routing: predicted quality points given up per second of expected extra latency."""
    hide_margin: float = 0.05
    placement_prompt_tokens: int = 512
    """Prompt length cost-aware placement assumes when predicting a new replica's TTFT with nothing queued."""
    autoscale_kind: str = "demand-at-slo"
    """Every serverless set's autoscaler: replicas for the recent arrival rate at the SLO (docs/control-plane.md)."""
    target_utilization: float = 0.3
    """`in-flight-tokens` / `queue-depth` autoscalers only: fraction of a replica's KV capacity (or batch) to fill
    before adding one."""
    demand_headroom: float = 1.0
    """`demand-at-slo`: the multiple of the recent arrival rate provisioned for (`AutoscaleSettings`)."""
    fixed_idle_timeout_s: float = 600.0
    fallback_keepalive_s: float = 600.0
    static_hardware: str = "h100"
    sleep_after_s: float = 30.0
    """`switchboard-sleep`: idle time after which a replica sleeps (host RAM, no devices) instead of staying warm."""
    asleep_keepalive_s: float = 1800.0
    control_interval_s: float = 5.0
    """Period of the control step (it also runs at once when a request waits for a replica)."""
    seed: int = 0


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
    probe = build_cluster(base.with_pools([PoolSpec(hardware=kind, workers=1, devices_per_worker=8)]))
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
    return build_cluster(base.with_pools(pools)), counts


def _with_pinned(chosen: np.ndarray, workload: Workload, experts: tuple[str, ...]) -> np.ndarray:
    if not workload.expert_names:
        return chosen
    table = np.array([experts.index(n) for n in workload.expert_names] + [NO_EXPERT], dtype=np.int32)
    pinned = table[workload.pinned_expert]
    return np.where(pinned != NO_EXPERT, pinned, chosen)


def control_settings(name: str, knobs: Knobs) -> ControlSettings:
    """The control plane's settings for a serverless policy set."""
    routing = RoutingSettings(kind="fleet-aware", usd_weight=knobs.cost_weight,
                              latency_weight_per_s=knobs.latency_weight_per_s,
                              cold_start_quality_margin=knobs.hide_margin)
    hybrid = KeepAliveSettings(kind="hybrid-histogram", fallback_keepalive_s=knobs.fallback_keepalive_s)
    autoscale = AutoscaleSettings(kind=knobs.autoscale_kind, target_utilization=knobs.target_utilization,
                                  demand_headroom=knobs.demand_headroom, max_replicas=32)
    if name in ("fixed-keepalive", "hybrid-keepalive"):
        fixed = KeepAliveSettings(kind="fixed", idle_timeout_s=knobs.fixed_idle_timeout_s)
        return ControlSettings(
            keepalive=fixed if name == "fixed-keepalive" else hybrid,
            autoscale=autoscale,
            placement=PlacementSettings(kind="first-fit"),
            balance=BalanceSettings(kind="least-outstanding-tokens"),
            admission=AdmissionSettings(kind="always"),
            migration=MigrationSettings(kind="none"),
            routing=routing.model_copy(update={"kind": RoutingKind.QUALITY_ONLY}),
            prewarm=PrewarmSettings(kind="none"),
        )
    placement = PlacementSettings(kind="cost-aware", default_prompt_tokens=knobs.placement_prompt_tokens)
    if name == "quality-only-routing":
        return ControlSettings(keepalive=hybrid, autoscale=autoscale, placement=placement,
                               routing=routing.model_copy(update={"kind": RoutingKind.QUALITY_ONLY}))
    if name == "switchboard":
        return ControlSettings(keepalive=hybrid, autoscale=autoscale, placement=placement, routing=routing)
    if name == "switchboard-sleep":
        tiered = hybrid.model_copy(update={"sleep_after_s": knobs.sleep_after_s,
                                           "asleep_keepalive_s": knobs.asleep_keepalive_s})
        return ControlSettings(keepalive=tiered, autoscale=autoscale, placement=placement, routing=routing)
    raise KeyError(f"unknown policy set {name!r}; known: {', '.join(POLICY_SETS + EXTRA_POLICY_SETS)}")


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
    cluster = build_cluster(spec, hardware_overrides)
    routing = routing_for(cluster.expert_ids)
    if name == "static":
        cluster, counts = static_cluster(spec, workload, routing, knobs, cluster.expert_ids)
        price = np.array([e.usd_per_mtok for e in cluster.experts])
        choices = quality_only_choices(cluster.expert_ids, routing.predicted, price, knobs.cost_weight)
        plane = StaticPlane(name, _with_pinned(choices, workload, cluster.expert_ids), counts, knobs.static_hardware)
    else:
        plane = make_plane(name, cluster, routing, knobs)
    result = Simulation(cluster, workload, plane, routing, on_progress=on_progress, warmup_s=warmup_s).run()
    return summarize(result, name, warmup_s), result
