"""What a quota lease costs a keyed request (issue 17): one gateway's `RayKeyLedger` admitting a key's requests
against a real control actor on a one-node local Ray cluster, one at a time, settling each.

Prints the p50 and p99 of an admission served from the gateway's lease (no call), of one that had to wait for
a lease call (one actor call, with the pending settlements), and of an exact admission (one actor call per
request: what every keyed request cost before leases, and what requests near a limit still cost), and how many
admissions made a call. Background renewals (`RENEW_BELOW`) keep most requests from waiting for one.

Processes: this driver (the gateway's side) and a one-node Ray cluster (GCS, raylet, the control actor).

Run: .venv/bin/python benchmarks/ray_key_lease_cost.py [--requests 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time


def _quantiles_ms(samples_s: list[float]) -> dict:
    if not samples_s:
        return {"n": 0}
    ordered = sorted(samples_s)
    return {"n": len(ordered), "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))]}


async def _measure(actor, num_requests: int) -> dict:
    from switchboard.cluster.ray_key_ledger import RayKeyLedger
    from switchboard.tenants.keys import KeyLimits

    ledger = RayKeyLedger(lambda: actor, "bench-gw", "bench-control")
    limits = KeyLimits(rpm=1_000_000, tpm=100_000_000, usd_per_day=1_000.0)
    local, called = [], []
    for _ in range(num_requests):
        calls = ledger.num_calls
        start = time.perf_counter()
        hold = await ledger.admit("leased", limits, 100, 0.001)
        (called if ledger.num_calls > calls else local).append(time.perf_counter() - start)
        ledger.settle(hold, 80, 0.0008)
        await asyncio.sleep(0)  # a background renewal gets its turn, as between a gateway's requests
    ledger.flush(give_back_all=True)
    exact = []
    near_limit = KeyLimits(usd_per_day=1_000.0)  # a sixteenth of what is left never holds one request: exact
    for _ in range(min(num_requests, 1000)):
        start = time.perf_counter()
        hold = await ledger.admit("exact", near_limit, 100, 100.0)
        exact.append(time.perf_counter() - start)
        ledger.release(hold)
    ledger.flush()
    return {"from_lease": _quantiles_ms(local), "waited_for_a_lease_call": _quantiles_ms(called),
            "exact_one_call_each": _quantiles_ms(exact), "lease_calls": ledger.num_calls - len(exact),
            "requests": num_requests}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import ray

    from switchboard.cluster.ray_control import ControlActor
    from switchboard.config import parse_config

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        config = parse_config("experts: [{id: e, backend: {kind: simulated, time_scale: 0}}]")
        actor = ray.remote(ControlActor).options(max_concurrency=10_000).remote(config.model_dump(mode="json"))
        ray.get(actor.key_updates.remote("bench-gw", []))  # up and warm (the fleet is never started: keys need none)
        result = asyncio.run(_measure(actor, args.requests))
    finally:
        ray.shutdown()
    for name in ("from_lease", "waited_for_a_lease_call", "exact_one_call_each"):
        cell = result[name]
        print(f"{name:>24}: n={cell['n']:5d}" + (f"  p50 {cell['p50_ms']:.3f} ms  p99 {cell['p99_ms']:.3f} ms" if cell["n"] else ""))
    print(f"lease calls: {result['lease_calls']} for {result['requests']} requests")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
