"""A warm SmolLM2 expert through a real `switchboard serve` process: time to first token and total, streamed and
not, one request at a time.

    .venv/bin/python benchmarks/warm_request.py [--requests 40]
    PYTHONPATH=/tmp/other-src .venv/bin/python benchmarks/warm_request.py   # the same on other code, for an A/B

It runs against whatever `switchboard` is importable (the server process and its llama.cpp worker inherit
`PYTHONPATH`), so two versions are compared by running it twice, alternately. The expert is kept warm (600 s
keep-alive); the first 5 requests of each kind are not counted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from cold_start import GATEWAY_CONFIG, PROMPT  # noqa: E402
from switchboard.config import parse_config  # noqa: E402
from switchboard.testing.servers import serve_in_process  # noqa: E402

WARMUP = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    config = parse_config(GATEWAY_CONFIG.replace("idle_timeout_s: 1}", "idle_timeout_s: 600}"))
    samples: dict[str, list[float]] = {"streamed TTFT": [], "streamed total": [], "plain total": []}
    with tempfile.TemporaryDirectory() as workdir, serve_in_process(config, workdir) as (url, _), \
            httpx.Client(base_url=url, timeout=120) as http:
        for i in range(args.requests + WARMUP):
            body = {"model": "smol", "messages": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
            start, ttft = time.perf_counter(), None
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if ttft is None and '"content":"' in line and '"content":""' not in line:
                        ttft = time.perf_counter() - start
            streamed = time.perf_counter() - start
            body["stream"] = False
            start = time.perf_counter()
            http.post("/v1/chat/completions", json=body).raise_for_status()
            plain = time.perf_counter() - start
            if i >= WARMUP:
                samples["streamed TTFT"].append(ttft or float("nan"))
                samples["streamed total"].append(streamed)
                samples["plain total"].append(plain)
    import switchboard

    print(f"warm SmolLM2 through switchboard serve ({os.path.dirname(switchboard.__file__)}), {args.requests} requests "
          f"each, 8 tokens; load average {os.getloadavg()[0]:.1f}")
    for name, values in samples.items():
        print(f"  {name:15s} p50 {np.percentile(values, 50) * 1000:7.1f} ms  p99 {np.percentile(values, 99) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
