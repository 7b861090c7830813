"""CPU per request on the Ray path, per process, against embedded mode (issue 17: on a 2-core machine the bare
path's throughput is bounded by the CPU all processes spend per request, so this is the measure to cut).

Starts what `ray_overhead.py` starts (an embedded gateway; a one-node Ray cluster with N gateway processes sharing
the control actor), drives each cell's load through them in turn, and reads every process's user+system CPU
seconds (psutil) before the load and again `--settle` seconds after it (so work a process still does for the
load, e.g. the control actor counting reports, is charged to it). It prints, per cell and side, CPU µs per
request for: the gateways, the replica actors, the control actor, Ray's own processes (raylet, GCS, agents,
idle workers) and this load generator — this script's processes and their descendants only, never another job's
on a shared machine — and, on Ray, the replica actors' calls per request (`ReplicaActor.call_counts`, read by a
driver in this process before and after each cell; "-" for code without it). CPU time is robust to the machine's
load where wall-clock throughput is not; an idle window of the same length is measured too (what the processes spend with no load).

Run with the code to measure first on the path (A/B against another checkout by `PYTHONPATH`):
  PYTHONPATH=$PWD/src .venv/bin/python benchmarks/ray_cpu.py [--gateways 3] [--duration 4] [--rounds 2] [--cells plain16 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _load import build_request, run_load  # noqa: E402
from ray_overhead import _body, _start_embedded, _start_ray, _stop_all  # noqa: E402

CELLS = {"plain16": ("instant", False, 16), "streamed16": ("instant", True, 16), "plain1": ("instant", False, 1),
         "streamed1": ("instant", True, 1)}
GROUPS = ("gateways", "replica actors", "control actor", "ray system", "load generator")


def _group(proc: psutil.Process, gateway_pids: set[int], is_ray: bool) -> str | None:
    """Which group a process's CPU counts in; None: not part of the side measured."""
    if proc.pid == os.getpid():
        return "load generator"
    if proc.pid in gateway_pids:
        return "gateways"
    if not is_ray:
        return None
    try:
        name = " ".join(proc.cmdline()[:1]) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    if name.startswith("ray::ReplicaActor"):
        return "replica actors"
    if name.startswith("ray::ControlActor"):
        return "control actor"
    return "ray system"  # the GCS, the raylet, Ray's agents and idle workers of this cluster


def _cpu_by_process(gateway_pids: set[int], is_ray: bool) -> dict[int, tuple[str, float]]:
    """Pid -> (group, CPU seconds so far, user + system) of this process and its descendants (the embedded
    gateway, the Ray cluster this script started, its workers and the Ray gateways: never another job's)."""
    me = psutil.Process()
    found = {}
    for proc in [me, *me.children(recursive=True)]:
        group = _group(proc, gateway_pids, is_ray)
        if group is None:
            continue
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found[proc.pid] = (group, times.user + times.system)
    return found


def _cpu_by_group(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each group spent between two `_cpu_by_process` readings (a process that started in between
    counts from zero; one that ended, not at all)."""
    totals = dict.fromkeys(GROUPS, 0.0)
    for pid, (group, cpu_s) in after.items():
        totals[group] += cpu_s - before.get(pid, (group, 0.0))[1]
    return totals


def _replica_actors(address: str) -> list:
    """Handles on the bench cluster's replica actors (this process becomes a Ray driver of it)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, namespace="switchboard-bench", include_dashboard=False, log_to_driver=False)
    return [ray.get_actor(a["name"], namespace="switchboard-bench") for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "switchboard-bench" and "#" in a["name"]]


def _call_counts(actors: list) -> dict[str, int] | None:
    """The replica actors' request-path calls and requests opened so far, summed; None when their code counts none."""
    import ray

    try:
        counts = ray.get([actor.call_counts.remote() for actor in actors], timeout=30)
    except (AttributeError, ray.exceptions.RayError):
        return None
    return {key: sum(c[key] for c in counts) for key in counts[0]} if counts else None


def _measure(ports: list[int], gateway_pids: set[int], is_ray: bool, model: str, stream: bool, concurrency: int, duration_s: float,
             settle_s: float, address: str) -> dict:
    body = _body(model, stream)
    shares = [concurrency // len(ports) + (1 if i < concurrency % len(ports) else 0) for i in range(len(ports))]

    async def load() -> list:
        return await asyncio.gather(*(
            run_load("127.0.0.1", port, build_request("127.0.0.1", port, "/v1/chat/completions", body), concurrency=share,
                     duration_s=duration_s, warmup_s=0)
            for port, share in zip(ports, shares) if share))

    actors = _replica_actors(address) if is_ray else []
    counts_before = _call_counts(actors) if is_ray else None
    before = _cpu_by_process(gateway_pids, is_ray)
    results = asyncio.run(load())
    time.sleep(settle_s)
    spent = _cpu_by_group(before, _cpu_by_process(gateway_pids, is_ray))
    num_requests = sum(r.num_requests for r in results)
    num_errors = sum(r.num_errors for r in results)
    cpu_us = {g: spent[g] / max(1, num_requests) * 1e6 for g in GROUPS}
    calls = None
    if counts_before is not None:
        counts_after = _call_counts(actors)
        if counts_after is not None:
            calls = {key: counts_after[key] - counts_before[key] for key in counts_after}
    return {"calls": calls, "calls_per_request": None if calls is None else
            (calls["open_calls"] + calls["take_calls"] + calls["complete_calls"]) / max(1, num_requests),
            "rps": num_requests / max(r.elapsed_s for r in results), "num_requests": num_requests, "num_errors": num_errors,
            "cpu_us": cpu_us, "cpu_us_total": sum(cpu_us.values())}


def main() -> None:
    import switchboard

    parser = argparse.ArgumentParser()
    parser.add_argument("--gateways", type=int, default=3, help="Ray gateway processes sharing the load")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per cell, side and round")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after the load before CPU is read again")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order of the sides (ABBA)")
    parser.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS), help="cells to measure")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    cells = [CELLS[name] for name in args.cells]
    print(f"code: {os.path.dirname(switchboard.__file__)}; load average {os.getloadavg()[0]:.1f}", flush=True)
    embedded = _start_embedded()
    cluster, ray_procs, ray_ports = _start_ray(args.gateways)
    sides = {"embedded": (embedded[0].ports, {embedded[0].pid}), "ray": (ray_ports, {p.pid for p in ray_procs})}  # type: ignore[attr-defined]
    load_before = os.getloadavg()
    rows = []
    try:
        time.sleep(args.settle)
        idle = {}
        for name, (_, pids) in sides.items():
            start = _cpu_by_process(pids, name == "ray")
            time.sleep(args.duration)
            spent = _cpu_by_group(start, _cpu_by_process(pids, name == "ray"))
            idle[name] = {g: spent[g] / args.duration * 1e3 for g in GROUPS}  # ms of CPU per s
        for model, stream, concurrency in cells:
            for index in range(args.rounds):
                order = list(sides) if index % 2 == 0 else list(sides)[::-1]
                for name in order:
                    ports, pids = sides[name]
                    row = {"side": name, "model": model, "stream": stream, "concurrency": concurrency, "round": index,
                           **_measure(ports, pids, name == "ray", model, stream, concurrency, args.duration, args.settle,
                                    cluster.address)}
                    rows.append(row)
                    print(f"{name:8} {model} stream={stream!s:5} c={concurrency:2d} round {index}: {row['rps']:7.0f} req/s, "
                          f"{row['cpu_us_total']:6.0f} us/request: " + ", ".join(f"{g} {row['cpu_us'][g]:.0f}" for g in GROUPS)
                          + (f", {row['calls_per_request']:.3f} calls/request" if row["calls_per_request"] is not None else "")
                          + f" (errors {row['num_errors']}; load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        load_after = os.getloadavg()
        _stop_all(embedded + ray_procs, cluster)
    print(f"\nmedians over {args.rounds} rounds, CPU us per request ({args.gateways} Ray gateways; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after)")
    print(f"{'cell':26} {'side':8} {'req/s':>7} {'total':>6} " + " ".join(f"{g:>14}" for g in GROUPS) + f" {'calls/request':>13}")
    for model, stream, concurrency in cells:
        for name in sides:
            mine = [r for r in rows if (r["side"], r["model"], r["stream"], r["concurrency"]) == (name, model, stream, concurrency)]
            cell = f"{model} {'streamed' if stream else 'plain'} c={concurrency}"
            print(f"{cell:26} {name:8} {statistics.median(r['rps'] for r in mine):7.0f} "
                  f"{statistics.median(r['cpu_us_total'] for r in mine):6.0f} "
                  + " ".join(f"{statistics.median(r['cpu_us'][g] for r in mine):14.0f}" for g in GROUPS)
                  + (f" {statistics.median(r['calls_per_request'] for r in mine):13.3f}"
                     if all(r["calls_per_request"] is not None for r in mine) else f" {'-':>13}"))
    print("idle (ms of CPU per s): " + "; ".join(f"{name}: " + ", ".join(f"{g} {v:.1f}" for g, v in idle[name].items() if v)
                                               for name in idle))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_average": [load_before, load_after], "idle_ms_per_s": idle, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
