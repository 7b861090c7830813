"""What running requests as a batch costs against sending them live: the same chat requests through one gateway
(`switchboard serve`, storage on SQLite in a scratch directory, the default `batches.max_concurrency` of 2) in front
of a fast mock upstream —

    live-1   one client sends them one after another (the official openai client, one connection)
    live-2   two clients, each half of them, at once: the same concurrency the batch runner uses (the baseline)
    batch    uploaded as a JSONL file, run as a batch; timed from the upload to the batch's `completed` (the client
             polls every 20 ms), its output file read back

Rounds alternate the variants so drift on this 2-core machine hits each alike. Reported per variant: the median
round's requests per second, and the ratio to live-2's.

Run: .venv/bin/python benchmarks/batch_overhead.py [--requests 300] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import openai

sys.path.insert(0, os.path.dirname(__file__))
from _mock_gateway import storing_mock_gateway  # noqa: E402

VARIANTS = ("live-1", "live-2", "batch")


def _body(i: int) -> dict:
    return {"model": "fast", "messages": [{"role": "user", "content": f"Request {i}: summarise the story so far."}], "max_tokens": 16}


def live(base_url: str, num_requests: int, num_clients: int) -> float:
    """Seconds to answer `num_requests`, `num_clients` clients each sending its share one after another."""
    def send(share: range) -> None:
        with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
            for i in share:
                client.chat.completions.create(**_body(i))
    shares = [range(k, num_requests, num_clients) for k in range(num_clients)]
    threads = [threading.Thread(target=send, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def batch(base_url: str, num_requests: int) -> float:
    """Seconds from the upload to the batch's end, its output read back; fails unless every request was answered."""
    lines = "\n".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": _body(i)})
                      for i in range(num_requests))
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0) as client:
        started = time.perf_counter()
        upload = client.files.create(file=("requests.jsonl", lines.encode()), purpose="batch")
        job = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
        while job.status not in ("completed", "failed", "cancelled", "expired"):
            time.sleep(0.02)
            job = client.batches.retrieve(job.id)
        output = client.files.content(job.output_file_id).text if job.output_file_id else ""
        took = time.perf_counter() - started
    answered = sum(1 for line in output.splitlines() if json.loads(line)["response"]["status_code"] == 200)
    assert job.status == "completed" and answered == num_requests, f"{job.status}: {answered} of {num_requests} answered"
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    took: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with storing_mock_gateway() as port:
        base_url = f"http://127.0.0.1:{port}/v1"
        live(base_url, 20, 2)  # warm-up: connections, the expert's first answer
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                took[variant].append(batch(base_url, args.requests) if variant == "batch"
                                     else live(base_url, args.requests, 1 if variant == "live-1" else 2))
    rates = {v: args.requests / statistics.median(took[v]) for v in VARIANTS}
    print(f"{args.requests} chat requests a round, {args.rounds} rounds, median round; fast mock upstream, storage on SQLite")
    print(f"{'variant':<8} {'req/s':>8} {'vs live-2':>10}")
    for v in VARIANTS:
        print(f"{v:<8} {rates[v]:>8.1f} {rates[v] / rates['live-2']:>9.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"requests": args.requests, "rounds": args.rounds, "seconds": took, "req_per_s": rates}, fh, indent=2)


if __name__ == "__main__":
    main()
