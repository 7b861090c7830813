"""The sleep tier in the simulator: `switchboard` beside `switchboard-sleep` (warm → asleep → cold) on a trace.

Runs the packaged conversation trace (default) on a cluster spec through `switchboard` (warm → cold) and
`switchboard-sleep` at each `--sleep-after-s`, with the first `--warmup-s` seconds left out of the request
metrics (not of the cost), as `switchboard sim compare --warmup-s 300` does; the static fleet's cost is the
baseline. Deterministic (seeded): one run per row.

Routes with the cross-fitted (out-of-sample) router by default, as `switchboard sim compare` does; `--trace`,
`--seed`, `--time-scale` and `--tenants` give the other workload shapes of docs/simulator.md.

`--shapes` runs the seven workload shapes of docs/simulator.md ("The sleep tier") instead — the conversation
trace, `--seed` 1 and 2, `--time-scale` 0.5 and 2, `--tenants 2`, the synthetic code-like trace — with
`switchboard-sleep` at its own setting, two shapes at a time, and prints one row per shape: cost, TTFT SLO
attainment and p99 TTFT without and with the tier, and the p99 TTFT difference with its 95% interval from a
paired bootstrap over the requests (the same resampled requests for both sets, 1,000 resamples): how far the
difference could move with another draw of requests of the same shape, which a one-run difference alone
does not say. `--step-s 0.98,1,1.02` repeats each shape with the control step's period moved by ±2% (an
operationally irrelevant change that moves which decisions fall in which step): how much a policy set's p99
TTFT moves with the fleet's decision dynamics alone, the other noise a one-run difference has.

Run: .venv/bin/python benchmarks/sleep_tier.py [--cluster examples/clusters/hetero-32.yaml] [--sleep-after-s 0,1,5,30]
     .venv/bin/python benchmarks/sleep_tier.py --shapes [--step-s 0.98,1,1.02]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from switchboard.cli.sim import DEFAULT_COST_WEIGHT, _prepare
from switchboard.sim.runner import RunResult
from switchboard.sim.scenario import run_policy

SHAPES: tuple[tuple[str, dict], ...] = (
    ("conversation trace", {}), ("`--seed 1`", {"seed": 1}), ("`--seed 2`", {"seed": 2}),
    ("`--time-scale 0.5` (double load)", {"time_scale": 0.5}), ("`--time-scale 2` (half load)", {"time_scale": 2.0}),
    ("`--tenants 2`", {"tenants": 2}), ("synthetic code-like", {"code_like": True}),
)
NUM_RESAMPLES = 1000


def prepare(cluster: Path, router: str, *, trace: Path | None = None, seed: int = 0, time_scale: float = 1.0,
            tenants: int = 1):
    # The router's λ of `sim compare` by default: the live `auto` default (the balanced preset; 0 before 2026-12-07).
    return _prepare(trace, cluster, router=router, cost_weight=DEFAULT_COST_WEIGHT, keepalive_s=None, seed=seed,
                    time_scale=time_scale, tenants=tenants, num_requests=None, workload="trace", num_experts=0,
                    rate=0.0, duration_s=0.0, zipf=1.0)


def ttft_s(result: RunResult, warmup_s: float) -> np.ndarray:
    """Each counted request's TTFT (NaN if it did not finish), in request order."""
    counted = result.workload.arrival_s >= warmup_s
    ttft = result.first_token_at - result.workload.arrival_s
    ttft[np.isnan(result.finished_at)] = np.nan
    return ttft[counted]


def paired_p99_difference(without: np.ndarray, with_tier: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% interval of p99(with) − p99(without) over `NUM_RESAMPLES` paired bootstrap resamples of the requests."""
    rng = np.random.default_rng(seed)
    n = len(without)
    diffs = np.empty(NUM_RESAMPLES)
    for k in range(NUM_RESAMPLES):
        rows = rng.integers(0, n, n)
        diffs[k] = np.nanpercentile(with_tier[rows], 99) - np.nanpercentile(without[rows], 99)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def shape_row(args: tuple[str, dict, Path, str, float, float]) -> str:
    label, shape, cluster, router, warmup_s, step_s = args
    shape = dict(shape)
    with tempfile.TemporaryDirectory() as tmp:
        if shape.pop("code_like", False):
            sys.path.insert(0, str(Path(__file__).parent))
            from synthetic_code_trace import write_code_like_trace

            shape["trace"] = Path(tmp) / "code_like.csv"
            write_code_like_trace(shape["trace"])
        spec, workload, routing, knobs = prepare(cluster, router, **shape)
        knobs = dataclasses.replace(knobs, control_interval_s=step_s)
        runs = {name: run_policy(name, spec, workload, routing, knobs, warmup_s=warmup_s)
                for name in ("static", "switchboard", "switchboard-sleep")}
    static_usd = runs["static"][0].usd_cost
    (a, ra), (b, rb) = runs["switchboard"], runs["switchboard-sleep"]
    low, high = paired_p99_difference(ttft_s(ra, warmup_s), ttft_s(rb, warmup_s))
    diff = b.p99_ttft_s - a.p99_ttft_s
    return (f"| {label} | {step_s:g} | {static_usd:.2f} | {a.usd_cost:.2f} ({100 * a.usd_cost / static_usd:.2f}%) | "
            f"{b.usd_cost:.2f} ({100 * b.usd_cost / static_usd:.2f}%) | "
            f"{a.ttft_slo_attainment:.4f} → {b.ttft_slo_attainment:.4f} | {a.p99_ttft_s:.3f} → {b.p99_ttft_s:.3f} | "
            f"{1000 * diff:+.0f} ({1000 * low:+.0f} to {1000 * high:+.0f}) | {a.quality:.4f} → {b.quality:.4f} | "
            f"{a.num_rejected} → {b.num_rejected} |")


def shapes(cluster: Path, router: str, warmup_s: float, steps_s: list[float]) -> None:
    print("| workload | step s | static USD | `switchboard` (no tier) | `switchboard-sleep` | TTFT att. no tier → tier | "
          "p99 TTFT s no tier → tier | p99 Δ ms (95% interval) | quality | rejected |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    jobs = [(label, shape, cluster, router, warmup_s, step_s) for label, shape in SHAPES for step_s in steps_s]
    with ProcessPoolExecutor(2) as pool:
        for row in pool.map(shape_row, jobs):
            print(row, flush=True)


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
    parser.add_argument("--shapes", action="store_true", help="the seven workload shapes, one row each")
    parser.add_argument("--step-s", default="1", help="--shapes: control step periods to run each shape at")
    args = parser.parse_args()
    if args.shapes:
        shapes(args.cluster, args.router, args.warmup_s, [float(s) for s in args.step_s.split(",")])
        return
    spec, workload, routing, knobs = prepare(args.cluster, args.router, trace=args.trace, seed=args.seed,
                                             time_scale=args.time_scale, tenants=args.tenants)
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
