"""The sleep tier in the simulator: `switchboard` beside `switchboard-sleep` (warm → asleep → cold) on a trace.

Runs the packaged conversation trace (default) on a cluster spec through `switchboard` (warm → cold) and
`switchboard-sleep` at each `--sleep-after-s`, with the first `--warmup-s` seconds left out of the request
metrics (not of the cost), as `switchboard sim compare --warmup-s 300` does; the static fleet's cost is the
baseline. Deterministic (seeded): one run per row.

Routes with the cross-fitted (out-of-sample) router by default, as `switchboard sim compare` does; `--trace`,
`--seed`, `--time-scale` and `--tenants` give the other workload shapes of docs/simulator.md.

Run: .venv/bin/python benchmarks/sleep_tier.py [--cluster examples/clusters/hetero-32.yaml] [--sleep-after-s 0,1,5,30]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from switchboard.cli.sim import _prepare
from switchboard.sim.scenario import run_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", type=Path, default=Path("examples/clusters/hetero-32.yaml"))
    parser.add_argument("--sleep-after-s", default="0,1,5,30")
    parser.add_argument("--warmup-s", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--router", default="cross-fitted")
    parser.add_argument("--trace", type=Path, default=None)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--tenants", type=int, default=1)
    args = parser.parse_args()
    spec, workload, routing, knobs = _prepare(args.trace, args.cluster, router=args.router, cost_weight=0.0,
                                              keepalive_s=None, seed=args.seed, time_scale=args.time_scale,
                                              tenants=args.tenants, num_requests=None,
                                              workload="trace", num_experts=0, rate=0.0, duration_s=0.0, zipf=1.0)
    rows = [("static", None, knobs), ("switchboard", None, knobs)]
    rows += [("switchboard-sleep", float(s), dataclasses.replace(knobs, sleep_after_s=float(s)))
             for s in args.sleep_after_s.split(",")]
    static_usd = None
    print("| policy | sleep after s | USD | % of static | SLO att. | TTFT att. | p99 TTFT s | quality | cold starts + wakes | rejected |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, sleep_after_s, row_knobs in rows:
        summary, result = run_policy(name, spec, workload, routing, row_knobs, warmup_s=args.warmup_s)
        s = summary.as_dict()
        usd = s["usd_cost"]
        static_usd = static_usd or usd
        print(f"| {name} | {sleep_after_s if sleep_after_s is not None else '—'} | {usd:.2f} | {100 * usd / static_usd:.2f}% | "
              f"{s['slo_attainment']:.4f} | {s['ttft_slo_attainment']:.4f} | {s['p99_ttft_s']:.3f} | {s['quality']:.3f} | {s['cold_starts']} | "
              f"{s['num_rejected']} |", flush=True)


if __name__ == "__main__":
    main()
