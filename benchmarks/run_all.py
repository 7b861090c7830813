"""`make bench`: runs every benchmark in turn (never part of `make test`), each printing its own table with
ratios against its baseline, and keeps their outputs under runs/bench-<timestamp>/.

Run: .venv/bin/python benchmarks/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    names = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "run_all")
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=names, default=names)
    args = parser.parse_args()
    out_dir = HERE.parent / "runs" / time.strftime("bench-%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only:
        print(f"\n=== {name} ===", flush=True)
        log = out_dir / f"{name}.txt"
        with log.open("w") as fh:
            proc = subprocess.Popen([sys.executable, str(HERE / f"{name}.py")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                fh.write(line)
            if proc.wait() != 0:
                failed.append(name)
    print(f"\noutputs in {out_dir}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
