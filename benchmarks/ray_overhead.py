"""Ray overhead: the same simulated experts served embedded and on a local Ray cluster, in the same run.

For each expert (`instant`: time_scale 0, so only the serving path is measured; `timed`: a 1B model's modelled
L4 timing, to show the overhead relative to a real answer's duration), streaming and not, at concurrency 1 and
16, prints requests/s and p50 latency (streams: also p50 time to first byte) embedded and on Ray, the ratio
Ray/embedded and the added p50 latency. On Ray each request takes a lease from the control actor (one actor
call), the answer comes from the replica actor (a second process), and each streamed token is one Ray object.

Processes: the gateway (`switchboard serve`, one worker) and this load generator; on Ray also a one-node Ray
cluster (GCS, raylet, the control actor, the replica actors; the node declares 4 L4s) on the same 2-core machine, so absolute numbers
include that contention; the ratios compare like with like.

Scale-out (`--gateways 1 2 3`): on Ray, N gateway processes share the control actor and the replicas, and each
cell's connections are split evenly over them (concurrency 1: one gateway carries the load); the embedded
baseline is one gateway. On one machine more gateways add processes, not cores: the numbers show what the
shared control actor costs as gateways are added, not what more machines would serve.

Run: .venv/bin/python benchmarks/ray_overhead.py [--duration 5] [--gateways 1 2 3] [--json out.json]
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


def _measure(ports: list[int], duration_s: float) -> dict[tuple[str, bool, int], dict[str, float]]:
    cells = {}
    for model in ("instant", "timed"):
        for stream in (False, True):
            for concurrency in CONCURRENCIES:
                result = asyncio.run(_split_load(ports, _body(model, stream), concurrency, duration_s))
                cells[(model, stream, concurrency)] = {
                    "rps": result.rps, "p50_ms": result.pct_ms(50), "ttfb_p50_ms": result.pct_ms(50, ttfb=True),
                    "num_errors": result.num_errors,
                }
    return cells


def _embedded(duration_s: float) -> dict:
    proc, port = _serve(EXPERTS)
    try:
        return _measure([port], duration_s)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _on_ray(duration_s: float, num_gateways: int = 1) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from switchboard.cluster.ray_control import stop_control_actor
    from switchboard.config import parse_config

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"switchboard/hw:l4": 4}, "object_store_memory": 100 * 1024 * 1024, "include_dashboard": False,
    })
    config_text = f'cluster: {{kind: ray, address: "{cluster.address}", namespace: switchboard-bench}}\n' + EXPERTS
    procs = []
    try:
        ports = []
        for _ in range(num_gateways):  # one at a time: the first creates the control actor, the others join it
            proc, port = _serve(config_text)
            procs.append(proc)
            ports.append(port)
        return _measure(ports, duration_s)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=60)
        stop_control_actor(parse_config(config_text).cluster)
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--gateways", type=int, nargs="+", default=[1], help="numbers of Ray gateway processes to measure")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    embedded = _embedded(args.duration)
    on_ray_by_gateways = {n: _on_ray(args.duration, n) for n in args.gateways}
    rows = []
    print(f"{'gw':>2} {'expert':8} {'stream':6} {'conc':>4} | {'emb rps':>8} {'ray rps':>8} {'ratio':>6} | {'emb p50':>8} {'ray p50':>8} "
          f"{'added':>8} | {'emb ttfb':>8} {'ray ttfb':>8} | errors")
    for num_gateways, ray_cells in on_ray_by_gateways.items():
        for key, emb in embedded.items():
            model, stream, concurrency = key
            on_ray = ray_cells[key]
            row = {"gateways": num_gateways, "expert": model, "stream": stream, "concurrency": concurrency, "embedded": emb, "ray": on_ray,
                   "rps_ratio": on_ray["rps"] / emb["rps"], "added_p50_ms": on_ray["p50_ms"] - emb["p50_ms"]}
            rows.append(row)
            ttfb = f"{emb['ttfb_p50_ms']:8.2f} {on_ray['ttfb_p50_ms']:8.2f}" if stream else f"{'':8} {'':8}"
            print(f"{num_gateways:2d} {model:8} {str(stream):6} {concurrency:4d} | {emb['rps']:8.1f} {on_ray['rps']:8.1f} {row['rps_ratio']:6.2f} | "
                  f"{emb['p50_ms']:8.2f} {on_ray['p50_ms']:8.2f} {row['added_p50_ms']:8.2f} | {ttfb} | "
                  f"{emb['num_errors']}/{on_ray['num_errors']}")
    print("ratio = Ray rps / embedded rps; added = Ray p50 - embedded p50 (ms); times in ms")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
