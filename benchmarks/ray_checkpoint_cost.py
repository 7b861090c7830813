"""What the control actor's checkpoint costs its event loop (issue 17, docs/ray.md "What survives a restart").

The control actor checkpoints the keys' counts (`ray_limits.KeyCounts`: every key's rpm window, one entry per
request admitted in the last minute, the leases and holds in flight) and the keep-alive histograms. This builds
that state as three gateways leave it after a minute of keyed traffic (each key offered a little more than its
rpm through quota leases, requests settled 1 s after admission), then measures, in this one process (no Ray):

- the checkpoint's size, the time to take it (`ControlActor._checkpoint`, on the actor's loop) and to encode
  it (pickle: on the loop before this change, in the writing thread since), median and max of `--reps`, CPU
  time too;
- the added latency of control calls while checkpoints are taken: a probe awaits `asyncio.sleep(1 ms)` in a
  loop and records how late it wakes (a call arriving at the actor waits the same), with the real
  `Checkpointer` writing every `CHECKPOINT_INTERVAL_S` (marked dirty continuously, as under keyed traffic) and
  without, A B B A. Run it with another checkout's `src` on PYTHONPATH for that checkout's numbers (main's).

Run: PYTHONPATH=src .venv/bin/python benchmarks/ray_checkpoint_cost.py [--keys 20] [--rpm 3000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import time

import switchboard
from switchboard.cluster.ray_checkpoint import Checkpointer, ControlCheckpoint, MemoryCheckpointStore, histograms_state
from switchboard.cluster.ray_limits import KeyCounts, KeyLease, LeaseHold, Returned, Settled
from switchboard.policies.keepalive import IdleHistogram
from switchboard.tenants.keys import KeyLimits
from switchboard.types import ExpertId

NUM_GATEWAYS = 3
NUM_EXPERTS = 9
STEP_S = 0.1
SETTLE_AFTER_S = 1.0
OFFERED = 0.9
"""Of each key's rpm: below it, so gateways hold leases (at or above it, keys are refused between leases)."""
NUM_TOKENS, USD_ESTIMATE, USD_COST = 100, 0.001, 0.0008


def loaded_key_counts(num_keys: int, rpm: int, minutes: float = 1.0, start_s: float = 1_800_000_000.0) -> KeyCounts:
    """`KeyCounts` after `minutes` of `num_keys` keys each offered `OFFERED` × `rpm` through `NUM_GATEWAYS` gateways'
    quota leases (each gateway returns a lease once used up or expired, and takes the next)."""
    now = [start_s]
    counts = KeyCounts(60.0, clock=lambda: now[0])
    limits = KeyLimits(rpm=rpm, usd_per_day=1e6)
    per_step = OFFERED * rpm / 60 * STEP_S / NUM_GATEWAYS
    leases: dict[tuple[str, str], list] = {}  # (gateway, key) -> [lease, taken_at_s, num_taken]
    in_flight: collections.deque = collections.deque()  # (settle at, gateway, LeaseHold)
    owed = collections.defaultdict(float)
    for _ in range(int(minutes * 60 / STEP_S)):
        now[0] += STEP_S
        while in_flight and in_flight[0][0] <= now[0]:
            _, gateway, hold = in_flight.popleft()
            counts.apply([Settled(hold, NUM_TOKENS - 20, USD_COST)], gateway)
        for k in range(num_keys):
            key = f"key-{k}"
            for g in range(NUM_GATEWAYS):
                gateway = f"gw-{g}"
                owed[gateway, key] += per_step
                while owed[gateway, key] >= 1:
                    held = leases.get((gateway, key))
                    if held is None or held[2] >= held[0].num_requests or now[0] - held[1] >= held[0].ttl_s:
                        if held is not None:
                            lease, _, num_taken = held
                            counts.apply([Returned(lease.lease_id, num_taken, lease.num_requests - num_taken, 0,
                                                   max(0.0, lease.usd - num_taken * USD_ESTIMATE))], gateway)
                        fresh = counts.lease(key, limits, NUM_TOKENS, USD_ESTIMATE, gateway, admit_one=False)
                        if not isinstance(fresh, KeyLease):  # near the limit: the rest of this step is refused
                            leases.pop((gateway, key), None)
                            owed[gateway, key] = 0
                            break
                        held = leases[gateway, key] = [fresh, now[0], 0]
                    held[2] += 1
                    owed[gateway, key] -= 1
                    in_flight.append((now[0] + SETTLE_AFTER_S, gateway, LeaseHold(held[0].lease_id, key, NUM_TOKENS, USD_ESTIMATE)))
    return counts


def histograms(num_bins: int = 240) -> dict[ExpertId, IdleHistogram]:
    return {ExpertId(f"expert-{e}"): IdleHistogram(1.0, tuple((e * 7 + b) % 5 for b in range(num_bins)), 3)
            for e in range(NUM_EXPERTS)}


def encode_cost(counts: KeyCounts, hists: dict, reps: int) -> dict:
    """Taking the checkpoint (`ControlActor._checkpoint`: on the actor's loop) and encoding it (`Checkpointer`:
    on the loop before, in a thread now), timed apart: median and max wall, median CPU."""
    take_wall, take_cpu, encode_wall, encode_cpu = [], [], [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        checkpoint = ControlCheckpoint(histograms_state(hists), counts.checkpoint())
        take_cpu.append(time.process_time() - c)
        take_wall.append(time.perf_counter() - w)
        w, c = time.perf_counter(), time.process_time()
        data = checkpoint.encode()
        encode_cpu.append(time.process_time() - c)
        encode_wall.append(time.perf_counter() - w)
    return {"bytes": len(data),
            "take_ms": {"wall_p50": 1000 * statistics.median(take_wall), "wall_max": 1000 * max(take_wall),
                        "cpu_p50": 1000 * statistics.median(take_cpu)},
            "encode_ms": {"wall_p50": 1000 * statistics.median(encode_wall), "wall_max": 1000 * max(encode_wall),
                          "cpu_p50": 1000 * statistics.median(encode_cpu)}}


async def _loop_lag(counts: KeyCounts, hists: dict, checkpointing: bool, duration_s: float) -> dict:
    """How late a 1 ms sleep wakes on this loop, with or without checkpoints taken (marked dirty every 1 ms)."""
    checkpointer = Checkpointer(MemoryCheckpointStore(), "bench",
                                lambda: ControlCheckpoint(histograms_state(hists), counts.checkpoint()))
    tasks = []
    if checkpointing:
        async def mark_forever() -> None:
            while True:
                checkpointer.mark()
                await asyncio.sleep(0.001)

        tasks = [asyncio.create_task(checkpointer.run()), asyncio.create_task(mark_forever())]
    lags = []
    end = time.perf_counter() + duration_s
    while time.perf_counter() < end:
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - asked - 0.001)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ordered = sorted(lags)
    return {"n": len(ordered), "p50_ms": 1000 * statistics.median(ordered), "p99_ms": 1000 * ordered[int(0.99 * (len(ordered) - 1))],
            "max_ms": 1000 * ordered[-1], "checkpoints": checkpointer.num_written}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--lag-s", type=float, default=3.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    counts = loaded_key_counts(args.keys, args.rpm)
    hists = histograms()
    now_s = counts.clock()
    num_entries = sum(counts.meter.snapshot(f"key-{k}", now_s).num_requests for k in range(args.keys))
    result = {"keys": args.keys, "rpm": args.rpm, "gateways": NUM_GATEWAYS, "window_entries": num_entries,
              "leases": counts.num_leases, "loadavg": open("/proc/loadavg").read().split()[:3],
              "encode": encode_cost(counts, hists, args.reps)}
    lag = {"off": [], "on": []}
    for checkpointing in (False, True, True, False):  # A B B A
        lag["on" if checkpointing else "off"].append(asyncio.run(_loop_lag(counts, hists, checkpointing, args.lag_s)))
    result["loop_lag"] = lag
    result["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    enc = result["encode"]
    print(f"{args.keys} keys at rpm {args.rpm}, {NUM_GATEWAYS} gateways: {num_entries} window entries, "
          f"{counts.num_leases} leases in flight; load average {' '.join(result['loadavg'])}")
    print(f"checkpoint {enc['bytes'] / 1024:.0f} KiB (switchboard from {switchboard.__file__})")
    for part in ("take_ms", "encode_ms"):
        cell = enc[part]
        print(f"  {part[:-3]:>6}: p50 {cell['wall_p50']:.2f} ms (CPU {cell['cpu_p50']:.2f} ms), max {cell['wall_max']:.2f} ms")
    for name, runs in lag.items():
        for run in runs:
            print(f"1 ms sleep lateness, checkpoints {name:>3}: p50 {run['p50_ms']:.3f} ms  p99 {run['p99_ms']:.3f} ms  "
                  f"max {run['max_ms']:.2f} ms  ({run['n']} probes, {run['checkpoints']} checkpoints)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
