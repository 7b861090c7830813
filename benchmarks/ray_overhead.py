"""Ray overhead: the same simulated experts served embedded and on a local Ray cluster, side by side.

For each expert (`instant`: time_scale 0, so only the serving path is measured; `timed`: a 1B model's modelled
L4 timing, to show the overhead relative to a real answer's duration), streaming and not, at concurrency 1 and
16, prints requests/s and p50 latency (streams: also p50 time to first byte) embedded and on Ray, the ratio
Ray/embedded and the added p50 latency. On Ray a gateway assigns a request to a warm replica itself, from the
view the control actor pushes (docs/ray.md, "Local decisions"): the answer comes from the replica actor (another
process), opened in a batch with the gateway's other requests to it that arrive while a call is in flight
(docs/ray.md, "Batched calls"), and the rest of a stream or slow answer is fetched in batches of ready events.
Those calls go over the gateway's direct connection to the replica (docs/ray.md, "Direct connections"); the
`calls` rows (`--call-gateways`) are gateways with `direct_requests: false`, making them as Ray actor calls: the
path before direct connections, measured in the same run as its baseline.

Both sides run for the whole benchmark (the embedded gateway, and the Ray cluster with its gateways) and each
cell is measured in rounds alternating the order (embedded, Ray 1..N gateways; then Ray N..1, embedded; ...:
ABBA), so slow drifts of a shared machine hit both sides alike. Per cell it prints the median over rounds and the
spread (min-max) of the per-round ratio and added latency.

Processes: the embedded gateway (`switchboard serve`, one worker), this load generator, and on Ray a one-node
Ray cluster (GCS, raylet, the control actor, the replica actors; the node declares 4 L4s) with its gateways, on
the same machine, so absolute numbers include that contention; the ratios compare like with like.

Scale-out (`--gateways 1 2 3`): N gateway processes share the control actor and the replicas, and each cell's
connections are split evenly over them (concurrency 1: one gateway carries the load); the embedded baseline is
one gateway. On one machine more gateways add processes, not cores.

Run: .venv/bin/python benchmarks/ray_overhead.py [--duration 3] [--rounds 4] [--gateways 1 2 3] [--call-gateways 1]
[--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from _load import LoadResult, build_request, run_load  # noqa: E402

from switchboard.testing.servers import free_port  # noqa: E402

EXPERTS = """
experts:
  - id: instant
    backend: {kind: simulated, hardware: l4, time_scale: 0, default_output_tokens: 16}
    params_b: 1
  - id: timed
    backend: {kind: simulated, hardware: l4, time_scale: 1, default_output_tokens: 16}
    params_b: 1
router: {enabled: false}
storage: {enabled: false}
"""
CONCURRENCIES = (1, 16)


def _body(model: str, stream: bool) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16,
                       "stream": stream}).encode()


def _serve(config_text: str) -> tuple[subprocess.Popen, int]:
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(config_text)
    config.close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--config", config.name, "--port", str(port),
                             "--log-level", "warning"])
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with {proc.returncode}")
        try:
            fleet = httpx.get(f"http://127.0.0.1:{port}/admin/fleet", timeout=2).json()
            if all(any(r["state"] == "warm" for r in e["replicas"]) for e in fleet["experts"]):
                return proc, port
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError("the gateway's replicas never became warm")
        time.sleep(0.3)


async def _split_load(ports: list[int], body: bytes, concurrency: int, duration_s: float) -> LoadResult:
    """`concurrency` connections spread evenly over the gateways at `ports`, measured together."""
    import numpy as np

    shares = [concurrency // len(ports) + (1 if i < concurrency % len(ports) else 0) for i in range(len(ports))]
    results = await asyncio.gather(*(
        run_load("127.0.0.1", port, build_request("127.0.0.1", port, "/v1/chat/completions", body), concurrency=share, duration_s=duration_s)
        for port, share in zip(ports, shares) if share
    ))
    return LoadResult(sum(r.num_requests for r in results), sum(r.num_errors for r in results), max(r.elapsed_s for r in results),
                      np.concatenate([r.latencies_s for r in results]), np.concatenate([r.ttfb_s for r in results]))


def _measure_cell(ports: list[int], model: str, stream: bool, concurrency: int, duration_s: float) -> dict[str, float]:
    result = asyncio.run(_split_load(ports, _body(model, stream), concurrency, duration_s))
    return {"rps": result.rps, "p50_ms": result.pct_ms(50), "ttfb_p50_ms": result.pct_ms(50, ttfb=True),
            "num_errors": result.num_errors}


def _start_embedded() -> list[subprocess.Popen]:
    proc, port = _serve(EXPERTS)
    proc.ports = [port]  # type: ignore[attr-defined]
    return [proc]


def _start_ray(num_gateways: int, num_call_gateways: int) -> tuple[object, list[subprocess.Popen], list[int], list[int]]:
    """The cluster, its gateway processes, the ports of the `num_gateways` that send requests over direct
    connections (the default) and of the `num_call_gateways` that send them by Ray actor calls."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"switchboard/hw:l4": 4}, "object_store_memory": 100 * 1024 * 1024, "include_dashboard": False,
    })
    procs, ports, call_ports = [], [], []
    try:
        # One at a time: the first creates the control actor, the others join it.
        for direct, into in [(True, ports)] * num_gateways + [(False, call_ports)] * num_call_gateways:
            proc, port = _serve(_ray_config(cluster.address, direct=direct))
            procs.append(proc)
            into.append(port)
    except BaseException:
        _stop(procs)
        cluster.shutdown()
        raise
    return cluster, procs, ports, call_ports


def _ray_config(address: str, *, direct: bool = True) -> str:
    """A gateway's config on the cluster; `direct`: requests go over direct connections to the replicas (the
    default, docs/ray.md "Direct connections"), else by a Ray actor call each (`direct_requests: false`)."""
    options = "" if direct else ", direct_requests: false"
    return f'cluster: {{kind: ray, address: "{address}", namespace: switchboard-bench{options}}}\n' + EXPERTS


def _call_ceiling(address: str, duration_s: float) -> dict[int, float]:
    """Calls/s of the `instant` replica actor's `complete`, called straight from this process (a bare Ray driver,
    no gateway) with 1 and 16 calls in flight: what one actor call per request allows on this machine."""
    import ray

    from switchboard.engines.base import GenerationRequest

    ray.init(address=address, namespace="switchboard-bench", include_dashboard=False, log_to_driver=False)
    # The first replica (autoscaling may have added more under the load before).
    name = min(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["namespace"] == "switchboard-bench" and "/instant#" in a["name"])
    actor = ray.get_actor(name, namespace="switchboard-bench")
    request = GenerationRequest("bench", "chat", json.loads(_body("instant", False)), 16, 4)

    async def calls_per_s(concurrency: int) -> float:
        num_calls = 0
        stop_at = time.perf_counter() + duration_s

        async def caller() -> None:
            nonlocal num_calls
            while time.perf_counter() < stop_at:
                await actor.complete.remote(request)
                num_calls += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return num_calls / duration_s

    return {concurrency: asyncio.run(calls_per_s(concurrency)) for concurrency in CONCURRENCIES}


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=60)


def _stop_all(procs: list[subprocess.Popen], cluster) -> None:
    """Stops the gateway processes, the control actor, this driver's Ray connection and the local cluster."""
    import ray

    from switchboard.cluster.ray_control import stop_control_actor
    from switchboard.config import parse_config

    _stop(procs)
    stop_control_actor(parse_config(_ray_config(cluster.address)).cluster)
    ray.shutdown()
    cluster.shutdown()


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell, side and round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per cell, alternating the order (ABBA)")
    parser.add_argument("--gateways", type=int, nargs="+", default=[1], help="numbers of Ray gateway processes to measure")
    parser.add_argument("--call-gateways", type=int, nargs="*", default=[1],
                        help="numbers of Ray gateway processes sending requests by actor calls (direct_requests: false), "
                        "measured beside the direct ones as the baseline of the old path")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    embedded = _start_embedded()
    cluster, ray_procs, ray_ports, call_ports = _start_ray(max(args.gateways), max(args.call_gateways, default=0))
    ray_sides = [(str(n), ray_ports[:n]) for n in sorted(args.gateways)]
    ray_sides += [(f"{n} calls", call_ports[:n]) for n in sorted(args.call_gateways)]
    sides = [("embedded", embedded[0].ports)] + ray_sides  # type: ignore[attr-defined]
    load_before = os.getloadavg()
    cells: dict[tuple, dict] = {}
    try:
        for model in ("instant", "timed"):
            for stream in (False, True):
                for concurrency in CONCURRENCIES:
                    rounds = []
                    for index in range(args.rounds):
                        order = sides if index % 2 == 0 else sides[::-1]
                        rounds.append({name: _measure_cell(ports, model, stream, concurrency, args.duration) for name, ports in order})
                    cells[(model, stream, concurrency)] = rounds
        # Keep-alive may have unloaded `instant` while the `timed` cells ran (over a minute idle): one request
        # through a gateway starts it again, so that the ceiling has a replica to call.
        httpx.post(f"http://127.0.0.1:{ray_ports[0]}/v1/chat/completions", content=_body("instant", False),
                   headers={"content-type": "application/json"}, timeout=180).raise_for_status()
        ceiling = _call_ceiling(cluster.address, args.duration)
    finally:
        load_after = os.getloadavg()
        _stop_all(embedded + ray_procs, cluster)
    rows = []
    print(f"{'gw':>7} {'expert':8} {'stream':6} {'conc':>4} | {'emb rps':>8} {'ray rps':>8} {'ratio':>6} {'(min-max)':>11} | "
          f"{'emb p50':>8} {'ray p50':>8} {'added':>7} {'(min-max)':>13} | {'emb ttfb':>8} {'ray ttfb':>8} | errors")
    for side, _ in ray_sides:
        for (model, stream, concurrency), rounds in cells.items():
            ratios = np.array([r[side]["rps"] / r["embedded"]["rps"] for r in rounds])
            added = np.array([r[side]["p50_ms"] - r["embedded"]["p50_ms"] for r in rounds])
            med = {name: {k: float(np.median([r[name][k] for r in rounds])) for k in rounds[0][name]} for name in ("embedded", side)}
            emb, on_ray = med["embedded"], med[side]
            row = {"gateways": side, "expert": model, "stream": stream, "concurrency": concurrency, "rounds": rounds,
                   "rps_ratio": float(np.median(ratios)), "rps_ratio_range": [float(ratios.min()), float(ratios.max())],
                   "added_p50_ms": float(np.median(added)), "added_p50_ms_range": [float(added.min()), float(added.max())]}
            rows.append(row)
            ttfb = f"{emb['ttfb_p50_ms']:8.2f} {on_ray['ttfb_p50_ms']:8.2f}" if stream else f"{'':8} {'':8}"
            errors = f"{sum(r['embedded']['num_errors'] for r in rounds):.0f}/{sum(r[side]['num_errors'] for r in rounds):.0f}"
            print(f"{side:>7} {model:8} {str(stream):6} {concurrency:4d} | {emb['rps']:8.1f} {on_ray['rps']:8.1f} {row['rps_ratio']:6.2f} "
                  f"({ratios.min():.2f}-{ratios.max():.2f}) | {emb['p50_ms']:8.2f} {on_ray['p50_ms']:8.2f} {row['added_p50_ms']:7.2f} "
                  f"({added.min():+.2f}..{added.max():+.2f}) | {ttfb} | {errors}")
    print("one Ray actor call per request allows: " + ", ".join(
        f"{n:.0f} calls/s at concurrency {c}" for c, n in ceiling.items()) + " (the instant replica actor's `complete`, "
        "called from a bare Ray driver)")
    print("gw: the number of Ray gateway processes, sending requests over direct connections to the replicas, or "
          "('calls') by a Ray actor call each")
    print(f"medians over {args.rounds} ABBA rounds of {args.duration:.0f} s per side; ratio = Ray rps / embedded rps; "
          f"added = Ray p50 - embedded p50 (ms); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load_average": [load_before, load_after], "rows": rows, "call_ceiling": ceiling}, fh, indent=2)


if __name__ == "__main__":
    main()
