"""Why the sleep tier sleeps an expert or not: per expert, how often keep-alive's latency gate passed, failed on the
TTFT SLO (`predict.start_fits_slo`: a wake plus the prefill of the expert's 99th-percentile prompt past the SLO) or
failed on the fleet's tail (`predict.start_keeps_tail`), with the expert's mean recent prompt at those checks —
one `switchboard sim compare --policies switchboard-sleep` run on the packaged conversation trace, for this code
and, with `--baseline-src DIR`, for another checkout's `src` side by side (issue 15: the tier's saving fell from
42.95% to 50.12% of static when the default router changed; docs/simulator.md, "The sleep tier").

Run: .venv/bin/python benchmarks/sleep_tier_gates.py [--baseline-src ../other/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def count_gates() -> dict[str, dict[str, float]]:
    """Runs the simulation in this process with the gate wrapped; returns per expert its outcome counts and the
    mean of its recent mean prompt tokens over the checks."""
    from switchboard.cli.main import _register_subcommands, app
    from switchboard.policies import predict

    seen: dict[str, dict[str, float]] = {}
    keeps_tail = predict.start_keeps_tail

    def counted(snapshot, expert_id, start_s, estimate, *args, **kwargs):  # noqa: ANN001 — same as wrapped
        kept = keeps_tail(snapshot, expert_id, start_s, estimate, *args, **kwargs)
        outcome = "pass" if kept else ("tail" if predict.start_fits_slo(snapshot, expert_id, start_s, estimate) else "slo")
        row = seen.setdefault(expert_id, {"pass": 0, "slo": 0, "tail": 0, "prompt_sum": 0.0})
        row[outcome] += 1
        row["prompt_sum"] += snapshot.activity_of(expert_id).demand(snapshot.now_s).mean_prompt_tokens
        return kept

    predict.start_keeps_tail = counted  # keep-alive calls it through the module, so the wrap is seen
    _register_subcommands()
    try:
        app(args=["sim", "compare", "--warmup-s", "300", "--policies", "switchboard-sleep", "--json"],
            standalone_mode=False)
    finally:
        predict.start_keeps_tail = keeps_tail
    return seen


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src/, run the same way beside this")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with open(os.devnull, "w") as devnull:  # the sim's own JSON table is not ours to print
            stdout, sys.stdout = sys.stdout, devnull
            try:
                seen = count_gates()
            finally:
                sys.stdout = stdout
        print(json.dumps(seen))
        return 0
    runs = {"this": None} | ({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})
    results = {}
    for name, src in runs.items():
        env = dict(os.environ) | ({"PYTHONPATH": str(src)} if src else {})
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    experts = sorted({e for seen in results.values() for e in seen})
    print(f"{'expert':34} " + " | ".join(f"{n:>30}" for n in results))
    print(f"{'':34} " + " | ".join(f"{'pass  slo-fail tail-fail prompt':>30}" for _ in results))
    for expert in experts:
        cells = []
        for seen in results.values():
            row = seen.get(expert, {"pass": 0, "slo": 0, "tail": 0, "prompt_sum": 0.0})
            num = row["pass"] + row["slo"] + row["tail"]
            prompt = row["prompt_sum"] / num if num else float("nan")
            cells.append(f"{row['pass']:>6} {row['slo']:>8} {row['tail']:>9} {prompt:>6.0f}")
        print(f"{expert:34} " + " | ".join(f"{c:>30}" for c in cells))
    print("counts: keep-alive's latency checks of an idle expert's warm replicas (switchboard-sleep, conversation "
          "trace); prompt: the expert's mean recent prompt tokens at those checks, averaged over them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
