"""A SYNTHETIC stand-in for a code-completion trace, for `switchboard sim compare --trace`.

The Azure LLM inference trace 2023 has a *code* trace beside the conversation one (Patel et al., "Splitwise",
ISCA 2024): long prompts (median ~1,500 context tokens) and very short outputs (median ~13 generated tokens).
It is not distributed with this project. This script keeps the packaged conversation trace's real arrival
times (the TIMESTAMP column, verbatim) and replaces its token counts with seeded lognormal draws of that shape:

    ContextTokens   = clip(round(lognormal(ln 1500, 0.9)), 16, 8000)
    GeneratedTokens = clip(round(lognormal(ln 13,   1.2)),  1, 1000)

It is therefore not a real code trace: arrivals (burstiness, rate) are the conversation service's, and the token
counts are independent of each other and of time. Use it only to see how policies behave on that token shape.

    .venv/bin/python benchmarks/synthetic_code_trace.py --out /tmp/code_like.csv [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from switchboard.sim.workload import packaged_trace_path

PROMPT_MEDIAN_TOKENS = 1500
PROMPT_SIGMA = 0.9
PROMPT_CLIP_TOKENS = (16, 8000)
OUTPUT_MEDIAN_TOKENS = 13
OUTPUT_SIGMA = 1.2
OUTPUT_CLIP_TOKENS = (1, 1000)


def lognormal_tokens(rng: np.random.Generator, median: float, sigma: float, clip: tuple[int, int],
                     size: int) -> np.ndarray:
    """`size` integer token counts from a lognormal with the given median and log-space sigma, clipped."""
    draws = rng.lognormal(mean=np.log(median), sigma=sigma, size=size)
    return np.clip(np.rint(draws), clip[0], clip[1]).astype(np.int64)


def write_code_like_trace(out: Path, *, seed: int = 0, source: Path | None = None) -> int:
    """Write `source`'s timestamps (default: the packaged conversation trace) with code-like token counts
    to `out` as TIMESTAMP,ContextTokens,GeneratedTokens. Returns the number of rows written."""
    with (source or packaged_trace_path()).open(newline="") as fh:
        stamps = [row["TIMESTAMP"] for row in csv.DictReader(fh)]
    rng = np.random.default_rng(seed)
    prompt = lognormal_tokens(rng, PROMPT_MEDIAN_TOKENS, PROMPT_SIGMA, PROMPT_CLIP_TOKENS, len(stamps))
    output = lognormal_tokens(rng, OUTPUT_MEDIAN_TOKENS, OUTPUT_SIGMA, OUTPUT_CLIP_TOKENS, len(stamps))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["TIMESTAMP", "ContextTokens", "GeneratedTokens"])
        writer.writerows(zip(stamps, prompt.tolist(), output.tolist()))
    return len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (keep it out of the repository).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--source", type=Path, default=None, help="Trace whose timestamps to keep (default: the "
                        "packaged conversation trace).")
    args = parser.parse_args()
    n = write_code_like_trace(args.out, seed=args.seed, source=args.source)
    print(f"wrote {n} rows to {args.out}")


if __name__ == "__main__":
    main()
