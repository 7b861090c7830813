"""Simulator speed, A/B: the same replay as `sim_speed.py`, for two (or more) source trees loaded in ONE process
and run alternately, reporting each tree's CPU seconds and its ratio to the first tree's.

Why: CPU time on the shared 2-core VM drifts by ±30% between hours (and with other work on the machine), so two
separate `sim_speed.py` runs cannot show a 10% change; runs interleaved in one process see the same conditions.
The first tree is the baseline (e.g. a copy of main's `src` before a change):

    cp -r src /tmp/base-src   # before the change
    .venv/bin/python benchmarks/sim_speed_ab.py --rounds 3 --policies switchboard /tmp/base-src src

Each tree is imported as `switchboard` in turn (its modules are swapped into `sys.modules` while it runs, so
imports made at run time resolve to the same tree); rounds alternate the order. Reported per tree: median and
min CPU seconds, the ratio of medians and the median of the per-round ratios to the first tree.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _load_tree(src: str, cluster: str):
    """Import `switchboard` from `src` and return (its modules, a function running one policy set)."""
    for name in [n for n in sys.modules if n == "switchboard" or n.startswith("switchboard.")]:
        del sys.modules[name]
    sys.path.insert(0, src)
    try:
        wl = importlib.import_module("switchboard.sim.workload")
        quality = importlib.import_module("switchboard.sim.quality")
        scenario = importlib.import_module("switchboard.sim.scenario")
        spec = importlib.import_module("switchboard.sim.cluster").load_cluster(cluster)
        if not sys.modules["switchboard"].__file__.startswith(str(Path(src).resolve())):
            raise SystemExit(f"{src}: imported switchboard from {sys.modules['switchboard'].__file__}")
        data = wl.load_routing_data()
        workload = wl.attach_prompts(wl.load_azure_trace(), len(data), np.random.default_rng(0))
    finally:
        sys.path.remove(src)
    modules = {n: m for n, m in sys.modules.items() if n == "switchboard" or n.startswith("switchboard.")}

    def run(policy: str) -> tuple[float, int]:
        summary, _ = scenario.run_policy(policy, spec, workload, lambda ids: quality.routing_inputs(workload, data, ids),
                                         scenario.Knobs())
        return summary.usd_cost, summary.num_events

    return modules, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("srcs", nargs="+", help="source trees (directories holding the `switchboard` package)")
    parser.add_argument("--policies", default="switchboard")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", default=str(ROOT / "examples/clusters/hetero-32.yaml"))
    args = parser.parse_args()

    srcs = [str(Path(s).resolve()) for s in args.srcs]
    trees = [(src, *_load_tree(src, args.cluster)) for src in srcs]
    policies = args.policies.split(",")
    cpu_s: dict[tuple[str, str], list[float]] = {(p, src): [] for p in policies for src in srcs}
    for k in range(args.rounds):
        for policy in policies:
            outcomes = set()
            for src, modules, run in (trees if k % 2 == 0 else trees[::-1]):
                sys.modules.update(modules)
                t_cpu = time.process_time()
                outcomes.add(run(policy))
                cpu_s[(policy, src)].append(time.process_time() - t_cpu)
                print(f"round {k} {policy:<22}{cpu_s[(policy, src)][-1]:7.3f} s  {src}", flush=True)
            if len(outcomes) != 1:
                print(f"  note: {policy} gives different cost/events across trees: {sorted(outcomes)}")
    print(f"\n{'policy':<22}{'median s':>9}{'min s':>8}{'ratio':>7}{'median of round ratios':>24}  tree")
    for policy in policies:
        base = cpu_s[(policy, srcs[0])]
        for src in srcs:
            runs = cpu_s[(policy, src)]
            per_round = statistics.median(r / b for r, b in zip(runs, base))
            print(f"{policy:<22}{statistics.median(runs):9.3f}{min(runs):8.3f}"
                  f"{statistics.median(runs) / statistics.median(base):7.3f}{per_round:24.3f}  {src}")


if __name__ == "__main__":
    main()
