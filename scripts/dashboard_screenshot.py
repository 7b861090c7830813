"""Regenerates docs/dashboard.png: a demo fleet of simulated experts under load, the dashboard in Debian's headless
Chromium (scripts/ensure_chromium.sh). Usage: .venv/bin/python scripts/dashboard_screenshot.py [OUT.png] [SECONDS]"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
import sys
import threading
import time

import openai
from playwright.sync_api import sync_playwright

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.router import load_default_router
from switchboard.router.chooser import RouterChooser
from switchboard.testing.browser import launch_chromium
from switchboard.testing.servers import serve_in_thread

DEMO = """
workers:
  - {id: l4-1, hardware: l4, memory_gb: 24, usd_per_hour: 0.8, devices: [0]}
  - {id: l4-2, hardware: l4, memory_gb: 24, usd_per_hour: 0.8, devices: [0]}
  - {id: h100-1, hardware: h100, memory_gb: 640, usd_per_hour: 32.0, devices: [0, 1, 2, 3, 4, 5, 6, 7]}
experts:
  - {id: qwen2.5-7b-instruct, backend: {kind: simulated, hardware: l4, time_scale: 0.05}, params_b: 7, usd_per_mtok_input: 0.2, usd_per_mtok_output: 0.2}
  - {id: gemma-2-9b-it, backend: {kind: simulated, hardware: l4, time_scale: 0.05}, params_b: 9, usd_per_mtok_input: 0.1, usd_per_mtok_output: 0.1}
  - {id: llama-3.3-nemotron-super-49b-v1, backend: {kind: simulated, hardware: h100, time_scale: 0.05}, params_b: 49, usd_per_mtok_input: 0.9, usd_per_mtok_output: 0.9}
  - {id: llama3-chatqa-1.5-70b, backend: {kind: simulated, hardware: h100, time_scale: 0.05}, params_b: 70, usd_per_mtok_input: 0.9, usd_per_mtok_output: 0.9, warm_at_start: false, ttft_slo_s: 30}
  - {id: llama-3.1-nemotron-51b-instruct, backend: {kind: simulated, hardware: h100, time_scale: 0.05}, params_b: 51, usd_per_mtok_input: 0.9, usd_per_mtok_output: 0.9, warm_at_start: false}
control_plane:
  step_interval_s: 0.5
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 4}
    autoscale: {min_replicas: 0, max_replicas: 3, downscale_delay_s: 2, upscale_delay_s: 0, min_replicas_by_expert: {qwen2.5-7b-instruct: 1, gemma-2-9b-it: 1}}
"""
ROUTING_DATA = Path(__file__).resolve().parent.parent / "src/switchboard/data/routing/train.jsonl"
POPULARITY = {"auto": 4, "qwen2.5-7b-instruct": 3, "gemma-2-9b-it": 3, "llama-3.3-nemotron-super-49b-v1": 2, "llama3-chatqa-1.5-70b": 1}
SMALL = ["qwen2.5-7b-instruct", "gemma-2-9b-it"]


def load(url: str, seed: int, stop: threading.Event, prompts: list[str]) -> None:
    """Closed-loop clients; the big experts get traffic in bursts, so they scale to zero and wake again."""
    rng = random.Random(seed)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    i = 0
    while not stop.is_set():
        i += 1
        in_burst = time.time() % 30 < 18
        model = rng.choices(list(POPULARITY), list(POPULARITY.values()))[0] if in_burst else rng.choice(SMALL)
        messages = [{"role": "user", "content": rng.choice(prompts)}]
        try:
            if i % 2:
                client.chat.completions.create(model=model, messages=messages, max_tokens=rng.randint(8, 48))
            else:
                list(client.chat.completions.create(model=model, messages=messages, max_tokens=rng.randint(8, 48), stream=True))
        except openai.APIError:
            pass


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else "docs/dashboard.png"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 40.0
    stop = threading.Event()
    config = parse_config(DEMO)
    chooser = RouterChooser(load_default_router(), config.default_expert_id)
    prompts = [json.loads(line)["prompt"][:2000] for line in itertools.islice(open(ROUTING_DATA, encoding="utf-8"), 400)]
    with serve_in_thread(build_app(config, chooser=chooser)) as url:
        clients = [threading.Thread(target=load, args=(url, seed, stop, prompts), daemon=True) for seed in range(8)]
        for c in clients:
            c.start()
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url + "/dashboard")
            time.sleep(seconds)
            page.screenshot(path=out)
            browser.close()
        stop.set()
        for c in clients:
            c.join(timeout=70)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
