"""The first minute of a new user: `switchboard serve` with no config, then the README's `auto` example at once.

For each source tree given (the baseline first), alternating, `--runs` times: start `python -m switchboard.cli
serve` from that tree on a free port, wait until `/healthz` answers (what `make run` shows as ready), then send
the README's `auto` request (non-streamed, `cost_weight` 0.1, via the official openai client) and time it.
Reports, per tree, the latency p50/min/max, which expert answered and whether its text was placeholder text.

Run: .venv/bin/python benchmarks/first_minute.py --tree BASE_SRC --tree NEW_SRC [--runs 3] [--json out.json]
(a tree is a `src` directory; e.g. `git archive main src | tar -x -C /tmp/base` gives the baseline's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import openai

from switchboard.testing.servers import free_port


def one_run(src: str) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": src, "XDG_DATA_HOME": tempfile.mkdtemp(prefix="first-minute-")}
    proc = subprocess.Popen([sys.executable, "-m", "switchboard.cli", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        t_launch = time.perf_counter()
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.perf_counter() - t_launch > 180:
                raise RuntimeError("switchboard serve did not come up")
            time.sleep(0.05)
        ready_s = time.perf_counter() - t_launch
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        t0 = time.perf_counter()
        answer = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "Solve 12 * 17."}],
            extra_body={"routing": {"cost_weight": 0.1}},
        )
        latency_s = time.perf_counter() - t0
        text = answer.parse().choices[0].message.content or ""
        route = json.loads(answer.headers.get("x-switchboard-route", "{}"))
        return {"ready_s": ready_s, "latency_s": latency_s, "expert": answer.headers["x-switchboard-expert"],
                "fleet": route.get("fleet"), "placeholder": text.startswith("[simulated"), "text": text[:80]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, help="a src directory; the first is the baseline")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {tree: [] for tree in args.tree}
    for i in range(args.runs):
        for tree in args.tree:  # alternating, so drifting machine load hits every tree alike
            run = one_run(tree)
            results[tree].append(run)
            print(f"run {i} {tree}: {run['latency_s']:.2f} s by {run['expert']} ({run['fleet']}), "
                  f"placeholder={run['placeholder']}", flush=True)
    for tree, runs in results.items():
        latencies = [r["latency_s"] for r in runs]
        print(f"{tree}: auto answered in p50 {statistics.median(latencies):.2f} s (min {min(latencies):.2f}, "
              f"max {max(latencies):.2f}) over {len(runs)} runs; experts {sorted({r['expert'] for r in runs})}; "
              f"placeholder text in {sum(r['placeholder'] for r in runs)}/{len(runs)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
