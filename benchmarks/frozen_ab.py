"""Is `switchboard/frozen.py` worth keeping? CPU-s of one replay of the conversation hour (hetero-32) for a
policy set, with frozen.py's generated constructors and evolvers (`fast`) or with plain frozen dataclasses
(`plain`: dataclasses' own __init__ and dataclasses.replace; memo caches are then recomputed, results equal).
The two run alternately, each in a fresh process (the decorators apply at import), `--repeat` times each:

    .venv/bin/python benchmarks/frozen_ab.py [--policy switchboard] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replay_cpu_s(mode: str, policy: str) -> tuple[float, float]:
    """(CPU-s of the replay, its USD) in this process, frozen.py switched off first for `plain`."""
    import switchboard.frozen as frozen

    if mode == "plain":
        frozen.fast_init = lambda cls: cls
        frozen.evolve = lambda obj, **changes: dataclasses.replace(obj, **changes)
        frozen.evolver_of = lambda cls, keep_caches=False: (lambda obj, **changes: dataclasses.replace(obj, **changes))
    import numpy as np

    from switchboard.sim import workload as wl
    from switchboard.sim.cluster import load_cluster
    from switchboard.sim.quality import routing_inputs
    from switchboard.sim.scenario import Knobs, run_policy

    spec = load_cluster(ROOT / "examples/clusters/hetero-32.yaml")
    data = wl.load_routing_data()
    w = wl.attach_prompts(wl.load_azure_trace(), len(data), np.random.default_rng(0))
    started = time.process_time()
    summary, _ = run_policy(policy, spec, w, lambda ids: routing_inputs(w, data, ids), Knobs())
    return time.process_time() - started, summary.usd_cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="switchboard")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--mode", choices=("fast", "plain"), help=argparse.SUPPRESS)  # one run, in a child
    args = parser.parse_args()
    if args.mode:
        cpu_s, usd = replay_cpu_s(args.mode, args.policy)
        print(f"{cpu_s} {usd}")
        return
    runs: dict[str, list[float]] = {"fast": [], "plain": []}
    for _ in range(args.repeat):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--mode", mode, "--policy", args.policy],
                                 capture_output=True, text=True, check=True).stdout.split()
            runs[mode].append(float(out[0]))
            print(f"{mode:<6} {args.policy}: {float(out[0]):.2f} CPU-s (USD {float(out[1]):.2f})", flush=True)
    ratio = statistics.median(runs["plain"]) / statistics.median(runs["fast"])
    print(f"plain / fast, medians: {ratio:.2f}x (fast {min(runs['fast']):.2f}-{max(runs['fast']):.2f}, "
          f"plain {min(runs['plain']):.2f}-{max(runs['plain']):.2f} CPU-s)")


if __name__ == "__main__":
    main()
