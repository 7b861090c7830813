"""What a running batch does to live requests on the embedded llama.cpp expert (SmolLM2-135M, one worker, one
sequence at a time): live chat requests sent one after another while a batch of longer requests runs, three ways —

    idle          no batch: the live requests alone (the floor)
    arrival       a batch running, its requests queued with live ones in arrival order (`batches.background_priority: false`)
    background    a batch running at background priority (the default): a queued live request starts before any
                  queued batch request (the replica serves one sequence at a time: a live request waits for the
                  one running)

Each arm is a fresh gateway (`storage` on SQLite in a scratch directory, `batches.max_concurrency: 2`), the
official openai client, arms alternated over rounds. Reported per arm: the live requests' p50 and p90 latency
(of those served), the ratio of each p50 to idle's, how many live requests admission refused (a 429: predicted to
miss `--ttft-slo-s`; the default 300 s never refuses), and how many of the batch's requests finished while the
live ones ran. With the expert's default SLO (`--ttft-slo-s 2`) it shows whether admission predicts a live
request behind the batch's queued requests, which it overtakes (it should not: `policies/predict.py`).

Run: .venv/bin/python benchmarks/batch_live_latency.py [--rounds 2] [--live 12] [--ttft-slo-s 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import openai

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

CONFIG = """
experts:
  - id: smol
    backend: {{kind: llamacpp, n_threads: 1}}
    context_tokens: 2048
    warm_at_start: true
    ttft_slo_s: {ttft_slo_s}
storage: {{url: "sqlite:///{db}"}}
batches: {{max_concurrency: 2, poll_interval_s: 0.2, background_priority: {priority}}}
"""
ARMS = ("idle", "arrival", "background")
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello in Spanish."]


def one_arm(arm: str, num_live: int, ttft_slo_s: float) -> tuple[list[float], int, int]:
    """The served live requests' latencies (s), how many were refused, and the batch's requests finished meanwhile."""
    with tempfile.TemporaryDirectory() as scratch:
        config = parse_config(CONFIG.format(db=f"{scratch}/log.db", priority="false" if arm == "arrival" else "true",
                                            ttft_slo_s=ttft_slo_s))
        with serve_in_thread(build_app(config), startup_timeout_s=180) as base:
            client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=300)
            client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "hi"}], max_tokens=4)  # warm
            batch = None
            if arm != "idle":
                lines = [{"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                          "body": {"model": "smol", "messages": [{"role": "user", "content": f"Write a story about the number {i}."}],
                                   "max_tokens": 96, "temperature": 0}} for i in range(200)]
                upload = client.files.create(file=("b.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
                batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
                while client.batches.retrieve(batch.id).request_counts.completed < 1:  # the batch is under way
                    time.sleep(0.05)
            done_before = client.batches.retrieve(batch.id).request_counts.completed if batch else 0
            took, num_refused = [], 0
            for i in range(num_live):
                started = time.perf_counter()
                try:
                    client.chat.completions.create(model="smol", messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                                   max_tokens=16, temperature=0)
                    took.append(time.perf_counter() - started)
                except openai.RateLimitError:  # admission: predicted past the SLO
                    num_refused += 1
                time.sleep(0.2)  # a user's pause: the worker has time to start a batch request
            done = (client.batches.retrieve(batch.id).request_counts.completed - done_before) if batch else 0
            if batch is not None:
                client.batches.cancel(batch.id)
    return took, num_refused, done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--live", type=int, default=12)
    parser.add_argument("--ttft-slo-s", type=float, default=300.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    took: dict[str, list[float]] = {arm: [] for arm in ARMS}
    done: dict[str, int] = {arm: 0 for arm in ARMS}
    refused: dict[str, int] = {arm: 0 for arm in ARMS}
    for r in range(args.rounds):
        for arm in ARMS if r % 2 == 0 else ARMS[::-1]:
            latencies, num_refused, num_done = one_arm(arm, args.live, args.ttft_slo_s)
            took[arm] += latencies
            refused[arm] += num_refused
            done[arm] += num_done
    p50 = {arm: statistics.median(took[arm]) if took[arm] else float("nan") for arm in ARMS}
    print(f"{args.live} live requests (max_tokens 16) an arm a round, {args.rounds} rounds; batch requests max_tokens 96; "
          f"SmolLM2-135M, 1 thread; TTFT SLO {args.ttft_slo_s:g} s")
    print(f"{'arm':<11} {'p50 s':>7} {'p90 s':>7} {'p50 vs idle':>12} {'refused':>8} {'batch requests done meanwhile':>31}")
    for arm in ARMS:
        p90 = statistics.quantiles(took[arm], n=10)[-1] if len(took[arm]) > 1 else float("nan")
        print(f"{arm:<11} {p50[arm]:>7.3f} {p90:>7.3f} {p50[arm] / p50['idle']:>11.2f}x {refused[arm]:>8} {done[arm]:>31}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"latencies_s": took, "refused": refused, "batch_done": done}, fh, indent=2)


if __name__ == "__main__":
    main()
