"""Simulator speed: replay the full one-hour Azure conversation trace on the 32-GPU heterogeneous cluster.

Target (issue 5): <= 5 s on this machine. Reports, per policy set, wall-clock and CPU seconds (CPU time is what
to compare on a shared, loaded machine; with `--repeat N` the median of N runs), events/s, and the ratio to a
baseline measured side by side in the same process: a bare replay of the same number of events through the same
event queue with no-op handlers (the floor any discrete-event design in Python pays; median of 5, since one
replay takes only a fraction of a second and a single one is noisy on a shared machine).

    .venv/bin/python benchmarks/sim_speed.py [--policies static,switchboard] [--repeat 3] \
        [--cluster examples/clusters/hetero-32.yaml]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from switchboard.sim import workload as wl
from switchboard.sim.cluster import load_cluster
from switchboard.sim.events import Event, EventQueue, Priority
from switchboard.sim.quality import routing_inputs
from switchboard.sim.scenario import Knobs, run_policy

ROOT = Path(__file__).resolve().parents[1]


def baseline_replay_s(num_events: int, repeat: int = 5) -> tuple[float, float]:
    """Median (wall, cpu) seconds to push and pop `num_events` events through the event queue, doing nothing."""
    runs = [_one_baseline_replay_s(num_events) for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _one_baseline_replay_s(num_events: int) -> tuple[float, float]:
    queue = EventQueue()
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    for k in range(num_events):
        queue.push(Event(float(k % 997), Priority.ARRIVAL, "noop", k))
        if len(queue) > 64:
            queue.pop()
    while queue:
        queue.pop()
    return time.perf_counter() - t_wall, time.process_time() - t_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="static,fixed-keepalive,quality-only-routing,switchboard")
    parser.add_argument("--cluster", default=str(ROOT / "examples/clusters/hetero-32.yaml"))
    parser.add_argument("--repeat", type=int, default=1, help="runs per policy set; the median CPU/wall is reported")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    spec = load_cluster(args.cluster)
    t0 = time.perf_counter()
    data = wl.load_routing_data()
    workload = wl.attach_prompts(wl.load_azure_trace(), len(data), np.random.default_rng(0))
    load_s = time.perf_counter() - t0
    rows = []
    for name in args.policies.split(","):
        walls, cpus = [], []
        for _ in range(max(1, args.repeat)):
            t_wall, t_cpu = time.perf_counter(), time.process_time()
            summary, _ = run_policy(name, spec, workload, lambda ids: routing_inputs(workload, data, ids), Knobs())
            walls.append(time.perf_counter() - t_wall)
            cpus.append(time.process_time() - t_cpu)
        wall, cpu = statistics.median(walls), statistics.median(cpus)
        base_wall, base_cpu = baseline_replay_s(summary.num_events)
        rows.append({
            "policy": name, "num_requests": summary.num_requests, "num_events": summary.num_events,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "cpu_s_runs": [round(c, 3) for c in cpus],
            "events_per_cpu_s": round(summary.num_events / cpu),
            "baseline_cpu_s": round(base_cpu, 3), "ratio_to_baseline": round(cpu / base_cpu, 1),
            "meets_5s_target_cpu": cpu <= 5.0,
        })
    if args.json:
        print(json.dumps({"trace_and_data_load_s": round(load_s, 3), "runs": rows}))
        return
    print(f"workload: {len(workload)} requests, {workload.duration_s:.0f} s of trace; cluster {spec.name}; "
          f"trace + routing data load {load_s:.2f} s")
    print(f"{'policy':<22}{'events':>8}{'wall s':>8}{'cpu s':>8}{'events/cpu-s':>14}{'x baseline':>12}{'<=5 s':>7}")
    for r in rows:
        print(f"{r['policy']:<22}{r['num_events']:>8}{r['wall_s']:>8.2f}{r['cpu_s']:>8.2f}{r['events_per_cpu_s']:>14}"
              f"{r['ratio_to_baseline']:>12}{'yes' if r['meets_5s_target_cpu'] else 'no':>7}")


if __name__ == "__main__":
    main()
