"""/v1/embeddings on the local all-MiniLM-L6-v2 expert: cross-request batching (max_batch 32) against the
baseline of one input per model run (max_batch 1), through the real gateway.

Both gateways run in this process (uvicorn in threads; onnxruntime releases the GIL while it computes), each
with one onnxruntime thread, and take turns: every round measures both at each concurrency, alternating which
goes first, so load from other jobs on the machine hits both alike. Closed-loop load from benchmarks/_load.py,
one single-text request per call (about 12 tokens). Reports the median over rounds of req/s and p50, their
ratio, and the spread (min-max) of the ratio across rounds.

Run: .venv/bin/python benchmarks/embeddings.py [--duration 3] [--rounds 3] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load import build_request, run_load  # noqa: E402

from switchboard.config import parse_config  # noqa: E402
from switchboard.gateway.app import build_app  # noqa: E402
from switchboard.testing.servers import serve_in_thread  # noqa: E402

CONFIG = """
experts:
  - id: small
    backend: {{kind: simulated, time_scale: 0}}
embedding_experts:
  - id: minilm
    backend: {{kind: onnx, max_batch: {max_batch}, num_threads: 1}}
storage: {{enabled: false}}
"""
BODY = json.dumps({"model": "minilm", "input": "How do I reset my password on the mobile app?", "encoding_format": "base64"}).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = parser.parse_args()
    variants = {"batched (32)": 32, "unbatched (1)": 1}
    with serve_in_thread(build_app(parse_config(CONFIG.format(max_batch=32)))) as batched, \
            serve_in_thread(build_app(parse_config(CONFIG.format(max_batch=1)))) as unbatched:
        urls = {"batched (32)": batched, "unbatched (1)": unbatched}
        requests = {name: build_request("127.0.0.1", int(url.rsplit(":", 1)[1]), "/v1/embeddings", BODY) for name, url in urls.items()}
        for name, url in urls.items():  # load each model before measuring
            asyncio.run(run_load("127.0.0.1", int(url.rsplit(":", 1)[1]), requests[name], concurrency=1, duration_s=0.5, warmup_s=0.5))
        results: dict[tuple[str, int], list] = {}
        for round_ in range(args.rounds):
            for concurrency in args.concurrency:
                order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
                for name in order:
                    port = int(urls[name].rsplit(":", 1)[1])
                    result = asyncio.run(run_load("127.0.0.1", port, requests[name], concurrency=concurrency, duration_s=args.duration))
                    assert result.num_errors == 0, f"{name}: {result.num_errors} errors"
                    results.setdefault((name, concurrency), []).append(result)
    print("| concurrency | batched req/s | unbatched req/s | ratio (spread) | batched p50 ms | unbatched p50 ms |")
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        on, off = results[("batched (32)", concurrency)], results[("unbatched (1)", concurrency)]
        ratios = [a.rps / b.rps for a, b in zip(on, off)]
        print(f"| {concurrency} | {statistics.median(r.rps for r in on):.0f} | {statistics.median(r.rps for r in off):.0f} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | {statistics.median(r.pct_ms(50) for r in on):.1f} | "
              f"{statistics.median(r.pct_ms(50) for r in off):.1f} |")


if __name__ == "__main__":
    main()
