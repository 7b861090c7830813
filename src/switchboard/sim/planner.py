"""`sim plan`: search router cost weight × hardware mix × keep-alive for the cheapest feasible fleet.

A configuration is the `switchboard` policy set with one router cost weight λ, one keep-alive fallback window,
on one hardware mix (a subset of the cluster's pools that can host every expert). Each is simulated on the same
workload; a configuration is *feasible* when its delivered quality is at least the floor and its TTFT-SLO
attainment at least the target. Exhaustive over a small grid: every run is cheap, and exhaustive results are
what the frontier plot needs.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

from switchboard.perf.hardware import get_hardware
from switchboard.sim.cluster import ClusterSpec, resolve_cluster
from switchboard.sim.scenario import Knobs, run_policy


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    label: str
    spec: ClusterSpec
    knobs: Knobs


@dataclasses.dataclass(frozen=True)
class PlanSpace:
    cost_weights: tuple[float, ...] = (0.0, 0.1, 0.3)
    keepalive_s: tuple[float, ...] = (120.0, 600.0)
    max_mixes: int = 8

    def mixes(self, spec: ClusterSpec) -> list[ClusterSpec]:
        """The full cluster, then single pools, then pairs, ... — each able to host every expert."""
        pools = list(spec.pools)
        experts = set(resolve_cluster(spec).expert_ids)
        found: list[ClusterSpec] = [spec]
        for size in range(1, len(pools)):
            for subset in itertools.combinations(pools, size):
                candidate = spec.with_pools(list(subset))
                hosted = {e for (e, _) in resolve_cluster(candidate).profiles}
                if hosted >= experts:
                    found.append(candidate)
        return found[: self.max_mixes]

    def configurations(self, spec: ClusterSpec) -> list[PlanConfig]:
        out = []
        for mix in self.mixes(spec):
            kinds = "+".join(f"{p.workers * p.size(get_hardware(p.hardware))}x{p.hardware}" for p in mix.pools)
            for lam, keep in itertools.product(self.cost_weights, self.keepalive_s):
                out.append(PlanConfig(f"{kinds} λ={lam:g} keep={keep:g}s", mix,
                                      Knobs(cost_weight=lam, fallback_keepalive_s=keep)))
        return out


def search(
    spec: ClusterSpec,
    workload,
    routing_for,
    configs: list[PlanConfig],
    *,
    quality_floor: float,
    ttft_attainment: float,
    seed: int = 0,
    on_config: Callable[[int], None] | None = None,
    warmup_s: float = 0.0,
) -> tuple[list[dict], dict | None]:
    """(every configuration's summary row, the cheapest feasible row or None). Rows carry `policy` = the
    configuration label and `feasible`."""
    rows = []
    for k, config in enumerate(configs):
        knobs = dataclasses.replace(config.knobs, seed=seed)
        summary, _ = run_policy("switchboard", config.spec, workload, routing_for, knobs, warmup_s=warmup_s)
        row = summary.as_dict()
        row["policy"] = config.label
        row["cost_weight"] = knobs.cost_weight
        row["keepalive_s"] = knobs.fallback_keepalive_s
        row["pools"] = [p.model_dump() for p in config.spec.pools]
        row["feasible"] = bool((row["quality"] or 0.0) >= quality_floor
                               and row["ttft_slo_attainment"] >= ttft_attainment)
        rows.append(row)
        if on_config is not None:
            on_config(k + 1)
    feasible = [r for r in rows if r["feasible"]]
    return rows, (min(feasible, key=lambda r: r["usd_cost"]) if feasible else None)
