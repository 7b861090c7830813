"""What the Responses API and stored answers cost over the chat path: the same answer from a fast mock upstream,
asked as a chat completion (the baseline), as a stored chat completion (`store: true`: one database write before the
answer's end; a stream re-framed event by event), as a Response not stored (`store: false`: translation only), and as
a stored Response (translation and one database write), through one gateway, whole and streamed.

Cells alternate round by round (ABBA order) so drift on this 2-core machine hits every variant alike; each
variant's median over rounds is reported with its ratio to chat's. Processes: the mock upstream, the gateway
(`switchboard serve`, the default request log on SQLite in a scratch directory) and this closed-loop load
generator (benchmarks/_load.py).

Run: .venv/bin/python benchmarks/responses_overhead.py [--duration 3] [--rounds 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys

import uvloop

sys.path.insert(0, os.path.dirname(__file__))
from _load import build_request, run_load  # noqa: E402
from _mock_gateway import storing_mock_gateway  # noqa: E402

PROMPT = "Hello there, how are you today?"


def _bodies(stream: bool) -> dict[str, tuple[str, bytes]]:
    """Each variant's endpoint and body, asking for the same answer."""
    chat = {"model": "fast", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16, "stream": stream}
    response = {"model": "fast", "input": PROMPT, "max_output_tokens": 16, "stream": stream}
    return {
        "chat": ("/v1/chat/completions", json.dumps(chat).encode()),
        "chat-stored": ("/v1/chat/completions", json.dumps({**chat, "store": True}).encode()),
        "responses": ("/v1/responses", json.dumps({**response, "store": False}).encode()),
        "responses-stored": ("/v1/responses", json.dumps(response).encode()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows: list[dict] = []
    with storing_mock_gateway() as port:
        uvloop.install()
        for round_ in range(args.rounds):
            for stream in (False, True):
                for concurrency in (1, 16):
                    bodies = _bodies(stream)
                    order = list(bodies) if round_ % 2 == 0 else list(reversed(bodies))
                    for variant in order:
                        path, body = bodies[variant]
                        result = asyncio.run(run_load("127.0.0.1", port, build_request("127.0.0.1", port, path, body),
                                                      concurrency=concurrency, duration_s=args.duration))
                        rows.append({"round": round_, "stream": stream, "concurrency": concurrency, "variant": variant, "rps": result.rps,
                                     "p50_ms": result.pct_ms(50), "p99_ms": result.pct_ms(99), "errors": result.num_errors})
                        print(f"round {round_} {'stream' if stream else 'whole ':6} c={concurrency:<2} {variant:16} {result.rps:7.0f} req/s "
                              f"p50 {result.pct_ms(50):6.2f} ms p99 {result.pct_ms(99):6.2f} ms errors {result.num_errors}", flush=True)
    print("\nmedians over rounds (ratio to chat's):")
    for stream in (False, True):
        for concurrency in (1, 16):
            cell = [r for r in rows if r["stream"] == stream and r["concurrency"] == concurrency]

            def median(variant: str, key: str) -> float:
                return statistics.median(r[key] for r in cell if r["variant"] == variant)

            base_rps, base_p50 = median("chat", "rps"), median("chat", "p50_ms")
            for variant in _bodies(stream):
                rps, p50 = median(variant, "rps"), median(variant, "p50_ms")
                print(f"  {'stream' if stream else 'whole ':6} c={concurrency:<2} {variant:16} {rps:7.0f} req/s (x{rps / base_rps:.2f})  "
                      f"p50 {p50:6.2f} ms ({p50 - base_p50:+.2f} ms)  errors {sum(r['errors'] for r in cell if r['variant'] == variant)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
