"""Cold-start anatomy of the local llama.cpp engine, and what a cold expert costs a request at the gateway.

Part 1 — repeated starts of a real SmolLM2-135M worker process: process spawn (interpreter up, llama.cpp
imported), model load, warm-up (one decode and the chat template's prefix, restored from the prefix file that
the first start writes), ready (listening), and first token of a first request; p50/p99 over N starts.
Part 2 — the gateway with the live control plane: the same streamed request to an expert scaled to zero
(cold: a new worker process, or a pre-started standby worker adopted), to an asleep one (the sleep tier: the
worker process kept; level 1: its context freed, model and KV cells kept; level 2: its model freed and reloaded
on wake) and to a warm one, side by side, per phase; reports time to first token and total latency for each.
With `--fresh-prompts` every request's text is new, so no request finds its whole prompt in a KV cache (only
the template's prefix): TTFT then includes evaluating the rest of the prompt, warm requests too.

It runs against whatever `switchboard` is importable, so the code before a change can be measured by the same
script (`PYTHONPATH=/tmp/main-src`); modes and settings that code lacks are skipped.

The measured numbers feed the simulator's CPU calibration (switchboard.sim cluster `calibration`).

Run: .venv/bin/python benchmarks/cold_start.py [--starts 10] [--requests 5] [--rounds 2] [--fresh-prompts] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import json
import tempfile
import time

import httpx
import numpy as np

from switchboard.config import parse_config
from switchboard.config.schema import LlamaCppBackend, WorkerConfig
from switchboard.engines.base import GenerationRequest
from switchboard.engines.llamacpp.engine import LlamaCppEngine
from switchboard.gateway.app import build_app
from switchboard.testing.servers import serve_in_thread

PROMPT = [{"role": "user", "content": "Name one colour."}]
_FRESH = itertools.count()


def prompt(fresh: bool) -> list[dict]:
    """The benchmark's prompt; with `fresh`, a text no earlier request sent (no whole-prompt KV cache hit)."""
    return [{"role": "user", "content": f"Name one colour. ({next(_FRESH)})"}] if fresh else PROMPT


HAS_SLEEP_LEVELS = "sleep_level" in LlamaCppBackend.model_fields
HAS_WORKER_DEVICES = "devices" in WorkerConfig.model_fields

GATEWAY_CONFIG = """
experts:
  - id: smol
    backend: {kind: llamacpp}
    params_b: 0.135
    context_tokens: 1024
    warm_at_start: false
    ttft_slo_s: 30
control_plane:
  step_interval_s: 0.1
  policies:
    keepalive: {kind: fixed, idle_timeout_s: 1}
    autoscale: {min_replicas: 0, max_replicas: 1, downscale_delay_s: 0}
    prewarm: {kind: none}
"""


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def engine_starts(num_starts: int, fresh: bool) -> dict[str, list[float]]:
    phases: dict[str, list[float]] = {"spawn_s": [], "load_s": [], "warmup_s": [], "ready_s": [], "first_token_s": [], "total_s": []}
    # A prefix file directory of its own: the first start evaluates the template prefix and writes it, the
    # others restore it (as every start after the first on a machine does).
    prefix_dir = tempfile.mkdtemp(prefix="cold-start-kv-")
    kwargs = {"prefix_cache_dir": prefix_dir} if "prefix_cache_dir" in inspect.signature(LlamaCppEngine).parameters else {}
    for _ in range(num_starts):
        request = GenerationRequest("bench", "chat", {"messages": prompt(fresh), "max_tokens": 4, "temperature": 0}, 4, 8)
        engine = LlamaCppEngine("smol", n_ctx=1024, **kwargs)
        t0 = time.perf_counter()
        await engine.start()
        t_ready = time.perf_counter()
        async for _event in engine.stream(request):
            phases["first_token_s"].append(time.perf_counter() - t_ready)
            break
        phases["total_s"].append(time.perf_counter() - t0)
        anatomy = engine.last_cold_start
        phases["spawn_s"].append(anatomy.spawn_s)
        phases["load_s"].append(anatomy.load_s)
        phases["warmup_s"].append(anatomy.warmup_s)
        phases["ready_s"].append(anatomy.ready_s)
        await engine.stop()
    return phases


def _config(standby_workers: int, sleep_level: int) -> str:
    keepalive = ("{kind: fixed, idle_timeout_s: 600, sleep_after_s: 0.3, asleep_keepalive_s: 600}" if sleep_level
                 else "{kind: fixed, idle_timeout_s: 1}")
    config = GATEWAY_CONFIG.replace("{kind: fixed, idle_timeout_s: 1}", keepalive).replace(
        "step_interval_s: 0.1", f"step_interval_s: 0.1\n  standby_workers: {standby_workers}")
    if HAS_SLEEP_LEVELS and sleep_level:
        config = config.replace("backend: {kind: llamacpp}", f"backend: {{kind: llamacpp, sleep_level: {sleep_level}}}")
    if sleep_level and HAS_WORKER_DEVICES:
        # Keep-alive sleeps a replica only where that frees a priced device (`placement.sleep_frees_accelerator`);
        # the embedded CPU worker declares none, so it never would. One notional device (llama.cpp here runs on
        # the CPU either way) lets the tier's wake path be measured on this machine.
        config = "workers:\n  - {id: local, hardware: cpu, devices: [0]}\n" + config
    return config


MODES = {
    # name: (standby workers, sleep level (0: the sleep tier is off))
    "cold, no standby": (0, 0),
    "cold (standby)": (1, 0),
    **({"asleep, level 1": (1, 1), "asleep, level 2": (1, 2)} if HAS_SLEEP_LEVELS else {"asleep": (1, 1)}),
}


def gateway_modes(num_requests: int, num_rounds: int, fresh: bool) -> dict[str, dict[str, list]]:
    """TTFT of the same streamed request meeting each mode, then warm right after; the modes' servers take
    turns round by round, so drifting machine load hits them alike."""
    out: dict[str, dict[str, list]] = {m: {"ttft_s": [], "total_s": [], "phases": []} for m in (*MODES, "warm")}
    for _ in range(num_rounds):
        for mode, (standby, sleep) in MODES.items():
            with serve_in_thread(build_app(parse_config(_config(standby, sleep)))) as url, \
                    httpx.Client(base_url=url, timeout=120) as http:
                def expert() -> dict:
                    return http.get("/admin/fleet").json()["experts"][0]

                def timed(expect_cold: bool) -> tuple[float, float]:
                    body = {"model": "smol", "messages": prompt(fresh), "max_tokens": 8, "temperature": 0, "stream": True}
                    t0 = time.perf_counter()
                    ttft = None
                    with http.stream("POST", "/v1/chat/completions", json=body) as response:
                        assert response.status_code == 200, response.read()
                        assert response.headers["x-switchboard-cold-start"] == ("true" if expect_cold else "false")
                        for line in response.iter_lines():
                            if ttft is None and '"content":"' in line and '"content":""' not in line:
                                ttft = time.perf_counter() - t0
                    return ttft or float("nan"), time.perf_counter() - t0

                if sleep:
                    timed(expect_cold=True)  # the first start, then it goes to sleep
                for _ in range(num_requests):
                    deadline = time.monotonic() + 60
                    while expert()["replicas"] or (sleep and not expert()["asleep"]) or (not sleep and expert()["asleep"]):
                        assert time.monotonic() < deadline, f"{mode}: the expert never reached the state"
                        time.sleep(0.05)
                    time.sleep(5.0)  # every mode alike: a standby worker is back in the pool by then
                    ttft, total = timed(expect_cold=True)
                    out[mode]["ttft_s"].append(ttft)
                    out[mode]["total_s"].append(total)
                    out[mode]["phases"].append(expert()["replicas"][0]["cold_start"])
                    ttft, total = timed(expect_cold=False)
                    out["warm"]["ttft_s"].append(ttft)
                    out["warm"]["total_s"].append(total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fresh-prompts", action="store_true", help="a new text for every request")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    phases = asyncio.run(engine_starts(args.starts, args.fresh_prompts))
    print(f"llama.cpp worker cold start, SmolLM2-135M Q4_1, {args.starts} starts:")
    print(f"  {'phase':<16}{'p50 s':>8}{'p99 s':>8}")
    for name, values in phases.items():
        print(f"  {name:<16}{pct(values, 50):8.3f}{pct(values, 99):8.3f}")

    gw = gateway_modes(args.requests, args.rounds, args.fresh_prompts)
    print(f"\ngateway, the same streamed request ({args.requests} per mode per round, {args.rounds} rounds, modes taking "
          f"turns): the expert scaled to zero (cold, without and with a standby worker to adopt), asleep (sleep "
          f"tier: process kept; level 1 frees the context, level 2 the model), and warm right after each"
          f"{'; every prompt new' if args.fresh_prompts else '; the same prompt every time'}")
    print(f"  {'':<18}{'TTFT p50 s':>12}{'TTFT min s':>12}{'TTFT max s':>12}{'total p50 s':>13}  phases p50")
    for kind in (*MODES, "warm"):
        ttft = gw[kind]["ttft_s"]
        mode_phases = gw[kind].get("phases") or []
        keys = sorted({k for p in mode_phases for k, v in (p or {}).items() if isinstance(v, (int, float))})
        shown = ", ".join(f"{k} {pct([float(p[k]) for p in mode_phases if p and k in p], 50):.3f}" for k in keys)
        print(f"  {kind:<18}{pct(ttft, 50):12.3f}{min(ttft):12.3f}{max(ttft):12.3f}{pct(gw[kind]['total_s'], 50):13.3f}  {shown}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"engine": phases, "gateway": gw}, fh, indent=2)


if __name__ == "__main__":
    main()
