"""Simulator fidelity: one small workload run live on the local llama.cpp expert and simulated on the CPU worker
calibrated from separate measurements of the same engine; TTFT, end-to-end latency and cold starts side by side.

1. Calibration (half before and half after the workload, never during it, on prompts the workload does not
   use): a LlamaCppEngine is started a few times (cold start = spawn to the first token of a short first
   request, less that request's prefill: the worker's one-off first-request set-up is part of every wake-up);
   then, through the same gateway and streaming client as the replay (the served engine, which shares the 2
   cores with them), prompts spanning the workload's lengths are prefilled with max_tokens=1 (prefill
   tokens/s: median of per-prompt rates over the tokens actually computed, i.e. less those the engine reported
   as `cached_tokens`) and long answers generated (decode tokens/s after the first token). The medians become
   the cluster's `calibration: cpu:` section (`switchboard.perf.calibrate_hardware`); the cached tokens
   measure the chat template's shared prefix (the system prompt llama-cpp-python keeps in its KV cache).
2. Live: a seeded workload — Poisson arrivals with inter-arrival gaps capped below the keep-alive, plus planned
   idle gaps well beyond it (so the expert scales to zero and wakes again), prompts from the shipped routing
   data truncated to varied lengths, varied max_tokens — replayed in real time against the real gateway and
   live control plane over a scaled-to-zero llama.cpp expert. Per request: TTFT (first streamed token),
   end-to-end latency, the `x-switchboard-cold-start` flag and the exact `usage` tokens.
3. Simulated: the same arrival times (as actually sent) and the measured prompt / completion tokens through
   `switchboard.sim` with the calibrated CPU worker and the *same* control-plane settings (keep-alive,
   autoscaling, step interval) as the live run; every prompt starts with the calibration's shared prefix, which
   the simulated engine computes once per start (prefix caching) — which requests hit it is the simulator's
   own prediction, compared with the live `cached_tokens` in an info row.
4. The table: TTFT and end-to-end p50 (and p90), cold starts, live vs simulated, relative error, PASS/FAIL
   against the tolerance (15%; cold starts must be equal).

The machine is shared: the load average is recorded next to every phase, since CPU contention from other
processes changes the live numbers (the calibration brackets the replay to see the load around it; its
before / after rates are printed, so a drift shows).

Run: .venv/bin/python benchmarks/sim_fidelity.py [--seed 0] [--json out.json]   (about 2.3 minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

import httpx
import numpy as np

from switchboard.config import parse_config
from switchboard.engines.base import Finish, GenerationRequest, TextDelta
from switchboard.engines.llamacpp.engine import LlamaCppEngine
from switchboard.gateway.app import build_app
from switchboard.policies.control import ControlSettings
from switchboard.sim.cluster import ClusterSpec, resolve_cluster
from switchboard.sim.planes import ServerlessPlane
from switchboard.sim.runner import RoutingInputs, Simulation
from switchboard.sim.workload import Workload, load_routing_data
from switchboard.testing.servers import serve_in_thread

EXPERT_ID = "smol"
PARAMS_B = 0.135
BYTES_PER_PARAM = 0.625  # SmolLM2-135M-Instruct Q4_1 GGUF
CONTEXT_TOKENS = 2048


@dataclasses.dataclass(frozen=True)
class FidelityPlan:
    """Everything that defines a run; written next to its results."""

    seed: int = 0
    num_requests: int = 20
    rate_per_s: float = 0.33
    max_gap_s: float = 6.0
    """Ordinary inter-arrival gaps are capped here, clearly below the keep-alive, so only planned gaps scale to zero."""
    keepalive_s: float = 8.0
    idle_gap_s: float = 24.0
    num_idle_gaps: int = 2
    prompt_chars: tuple[int, int] = (40, 400)
    max_tokens: tuple[int, int] = (8, 48)
    step_interval_s: float = 0.25
    n_threads: int | None = None
    """llama.cpp threads (None: the worker's default, half the cores, as `make run`)."""
    tolerance: float = 0.15
    calibration_starts: int = 5
    calibration_prefills: int = 8
    calibration_decodes: int = 3
    calibration_decode_tokens: int = 48
    sleep_after_s: float | None = None
    """The sleep tier's `keepalive.sleep_after_s` (None: off, the live default). On the CPU worker, which
    declares no devices live or simulated, nothing sleeps: the tier must not change the cold starts."""

    def policies(self) -> dict:
        """The control-plane settings both worlds run (live config `control_plane.policies`, simulator)."""
        keepalive = {"kind": "fixed", "idle_timeout_s": self.keepalive_s}
        if self.sleep_after_s is not None:
            keepalive["sleep_after_s"] = self.sleep_after_s
        return {
            "keepalive": keepalive,
            "autoscale": {"min_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0, "downscale_delay_s": 0},
            "admission": {"kind": "always"},
            "migration": {"kind": "none"},
            "prewarm": {"kind": "none"},
        }


@dataclasses.dataclass(frozen=True)
class PlannedRequest:
    at_s: float
    content: str
    max_tokens: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One request as it went (live) or as simulated."""

    arrival_s: float
    ttft_s: float
    e2e_s: float
    is_cold: bool
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    """Prompt tokens served from the engine's prefix cache."""


@dataclasses.dataclass(frozen=True)
class Calibration:
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    prefill_num_tokens: int
    cold_start_s: float
    num_shared_prefix_tokens: int
    """The chat template's prefix every prompt shares (median `cached_tokens` of the warm prefills)."""
    samples: dict

    def section(self) -> dict:
        """The cluster file's `calibration: cpu:` entry."""
        return {"params_b": PARAMS_B, "bytes_per_param": BYTES_PER_PARAM,
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
                "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
                "prefill_num_tokens": self.prefill_num_tokens, "cold_start_s": round(self.cold_start_s, 3)}


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# ---------------------------------------------------------------------------------------------- the workload


def pick_prompts(rng: np.random.Generator, count: int, chars: tuple[int, int], exclude: set[int] = frozenset()
                 ) -> tuple[list[str], list[int]]:
    """`count` prompts from the routing data, each cut to a length drawn in `chars`, with distinct openings:
    llama.cpp reuses the KV of any prompt prefix it has just seen, and the simulator models only the chat
    template's shared one."""
    prompts = load_routing_data().prompts
    order = rng.permutation(len(prompts))
    out: list[str] = []
    used: list[int] = []
    openings: set[str] = set()
    for row in order:
        row = int(row)
        text = prompts[row]
        if row in exclude or len(text) < chars[1] or text[:40] in openings:
            continue
        openings.add(text[:40])
        out.append(text[: int(rng.integers(chars[0], chars[1] + 1))])
        used.append(row)
        if len(out) == count:
            break
    return out, used


def build_workload(plan: FidelityPlan) -> tuple[list[PlannedRequest], set[int]]:
    """The seeded request schedule, and the routing-data rows it uses."""
    rng = np.random.default_rng(plan.seed)
    gaps = np.minimum(rng.exponential(1.0 / plan.rate_per_s, plan.num_requests - 1), plan.max_gap_s)
    # Planned idle gaps split the run into equal parts.
    for k in range(1, plan.num_idle_gaps + 1):
        gaps[k * (plan.num_requests - 1) // (plan.num_idle_gaps + 1)] = plan.idle_gap_s
    at_s = np.concatenate([[0.0], np.cumsum(gaps)])
    prompts, rows = pick_prompts(rng, plan.num_requests, plan.prompt_chars)
    max_tokens = rng.integers(plan.max_tokens[0], plan.max_tokens[1] + 1, plan.num_requests)
    return [PlannedRequest(float(t), p, int(m)) for t, p, m in zip(at_s, prompts, max_tokens)], set(rows)


# ---------------------------------------------------------------------------------------------- calibration


async def _timed(engine: LlamaCppEngine, content: str, max_tokens: int) -> tuple[float, float, int, int]:
    """(TTFT, total seconds, prompt tokens, completion tokens) of one streamed request straight to the engine."""
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    t0 = time.perf_counter()
    first = math.nan
    usage = None
    async for event in engine.stream(GenerationRequest("calibration", "chat", body, max_tokens, len(content) // 4)):
        if isinstance(event, TextDelta) and event.text and math.isnan(first):
            first = time.perf_counter() - t0
        elif isinstance(event, Finish):
            usage = event.usage
    total = time.perf_counter() - t0
    assert usage is not None
    return (total if math.isnan(first) else first), total, usage.prompt_tokens, usage.completion_tokens


async def measure_engine(plan: FidelityPlan, exclude_rows: set[int], phase: int, num_starts: int) -> dict:
    """Measure the engine: cold starts on its own, then prefill on prompts of the workload's lengths (not its
    prompts) and decode on long answers as served (`_measure_served`). Each prompt is new to the engine, so no
    KV prefix is reused beyond the chat template's."""
    rng = np.random.default_rng([plan.seed, 1_000_003, phase])
    samples: dict = {"starts": [], "prefill": [], "decode": []}
    engine = None
    # One unmeasured start first: the first spawn in a while reads the interpreter, llama.cpp and the model from
    # disk (up to 3x slower here); the live run follows at once, with all of it in the page cache.
    for i in range(num_starts + 1):
        if engine is not None:
            await engine.stop()
        engine = LlamaCppEngine(EXPERT_ID, n_ctx=CONTEXT_TOKENS, n_threads=plan.n_threads)
        await engine.start()
        # The first request after a start pays a one-off set-up in the worker (~0.5-1 s here) that every woken
        # request pays too: it belongs to the cold start, not to prefill.
        ttft, _, n_prompt, _ = await _timed(engine, f"Say hello to {phase}-{i}.", 1)
        if i > 0:
            samples["starts"].append({"ready_s": engine.last_cold_start.ready_s, "first_ttft_s": ttft,
                                      "num_tokens": n_prompt})
    assert engine is not None
    await engine.stop()
    await _measure_served(plan, rng, exclude_rows, phase, samples)
    samples["load_average"] = load_average()
    samples["prefill_tokens_per_s"] = _median_prefill_rate(samples["prefill"])
    samples["decode_tokens_per_s"] = float(np.median([x["tokens_per_s"] for x in samples["decode"]]))
    return samples


async def _measure_served(plan: FidelityPlan, rng: np.random.Generator, exclude_rows: set[int], phase: int,
                          samples: dict) -> None:
    """Prefill and decode rates as the replay sees them: through the same gateway (in a thread of this process,
    as in the replay) and the same streaming client, on a warm replica. On 2 cores the gateway and the client
    take CPU from llama.cpp's threads while tokens stream, so the bare engine decodes faster than the served one
    (32 vs 17-25 tokens/s in one quiet run); the simulated CPU worker stands for the served one."""
    lo, hi = plan.prompt_chars
    prompts, _ = pick_prompts(rng, plan.calibration_prefills, (hi, hi), exclude_rows)
    with serve_in_thread(build_app(parse_config(live_config(plan)))) as url:
        async with httpx.AsyncClient(base_url=url, timeout=300) as http:
            # Wakes the expert (unmeasured): every measured request below finds it warm (gaps << keep-alive).
            await _stream_chat(http, f"Say hello to {phase}.", 1)
            for k, text in enumerate(prompts):
                cut = int(lo + (hi - lo) * (k + 0.5) / len(prompts))
                ttft, _, is_cold, n_prompt, _, n_cached = await _stream_chat(http, text[:cut], 1)
                assert not is_cold, "a calibration prefill met a cold start"
                samples["prefill"].append({"num_tokens": n_prompt, "num_cached_tokens": n_cached, "ttft_s": ttft})
            for k in range(plan.calibration_decodes):
                ttft, total, is_cold, _, n_out, _ = await _stream_chat(
                    http, f"Count from {10 * phase + k + 2} to 500, separated by commas.", plan.calibration_decode_tokens)
                assert not is_cold, "a calibration decode met a cold start"
                samples["decode"].append({"num_tokens": n_out, "tokens_per_s": (n_out - 1) / (total - ttft)})


def _median_prefill_rate(prefills: list[dict]) -> float:
    # A median of per-prompt rates, not a least-squares fit: on a shared machine one prompt in ten stalls 2x when
    # another process takes a core, and a fit follows it. The roofline's prefill time is proportional to the
    # prompt (plus one step overhead), so a rate is the quantity to estimate. Tokens from the prefix cache cost
    # nothing: the rate is over the computed ones.
    return float(np.median([(x["num_tokens"] - x["num_cached_tokens"]) / x["ttft_s"] for x in prefills]))


def fit_calibration(phases: list[dict]) -> Calibration:
    """Pool the phases' samples: medians of cold start, decode rate and per-prompt prefill rate. The cold start
    is what a woken request waits beyond its own prefill, as the simulator models it: ready + the first
    request's TTFT − that request's prefill at the calibrated rate."""
    pooled = {key: [x for p in phases for x in p[key]] for key in ("starts", "prefill", "decode")}
    prefill_rate = _median_prefill_rate(pooled["prefill"])
    return Calibration(
        decode_tokens_per_s=float(np.median([s["tokens_per_s"] for s in pooled["decode"]])),
        prefill_tokens_per_s=prefill_rate,
        prefill_num_tokens=int(np.median([s["num_tokens"] - s["num_cached_tokens"] for s in pooled["prefill"]])),
        # The first request after a start finds an empty cache: all its tokens are computed.
        cold_start_s=float(np.median([x["ready_s"] + x["first_ttft_s"] - x["num_tokens"] / prefill_rate
                                      for x in pooled["starts"]])),
        num_shared_prefix_tokens=int(np.median([s["num_cached_tokens"] for s in pooled["prefill"]])),
        samples={"phases": phases},
    )


# ---------------------------------------------------------------------------------------------- live


def live_config(plan: FidelityPlan) -> str:
    threads = f", n_threads: {plan.n_threads}" if plan.n_threads else ""
    return f"""
experts:
  - id: {EXPERT_ID}
    backend: {{kind: llamacpp{threads}}}
    params_b: {PARAMS_B}
    context_tokens: {CONTEXT_TOKENS}
    warm_at_start: false
    ttft_slo_s: 300
control_plane:
  step_interval_s: {plan.step_interval_s}
  policies: {json.dumps(plan.policies())}
"""


async def _stream_chat(http: httpx.AsyncClient, content: str, max_tokens: int
                       ) -> tuple[float, float, bool, int, int, int]:
    """(TTFT, total seconds, was cold, prompt tokens, completion tokens, cached prompt tokens) of one streamed
    chat request through the gateway, timed as a client sees it (first content or finish chunk)."""
    body = {"model": EXPERT_ID, "messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    first = math.nan
    usage = None
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        is_cold = response.headers["x-switchboard-cold-start"] == "true"
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = chunk.get("choices") or []
            if math.isnan(first) and choices and (choices[0].get("delta", {}).get("content")
                                                 or choices[0].get("finish_reason")):
                first = time.perf_counter() - sent
    done = time.perf_counter() - sent
    assert usage is not None, "no usage in the stream"
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return ((done if math.isnan(first) else first), done, is_cold, int(usage["prompt_tokens"]),
            int(usage["completion_tokens"]), cached)


async def _replay(url: str, requests: list[PlannedRequest]) -> list[Outcome]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        t0 = time.perf_counter()

        async def one(req: PlannedRequest) -> Outcome:
            await asyncio.sleep(max(0.0, t0 + req.at_s - time.perf_counter()))
            sent = time.perf_counter()
            first, done, is_cold, n_prompt, n_out, n_cached = await _stream_chat(http, req.content, req.max_tokens)
            return Outcome(sent - t0, first, done, is_cold, n_prompt, n_out, n_cached)

        return list(await asyncio.gather(*(one(r) for r in requests)))


def run_live(plan: FidelityPlan, requests: list[PlannedRequest]) -> tuple[list[Outcome], int]:
    """Replay in real time through the gateway; returns the outcomes and the replica starts (cold starts)."""
    with serve_in_thread(build_app(parse_config(live_config(plan)))) as url:
        outcomes = asyncio.run(_replay(url, requests))
        counters = httpx.get(url + "/admin/fleet").json()["counters"]
    return outcomes, int(counters["cold_starts"])


# ---------------------------------------------------------------------------------------------- simulated


def sim_cluster(calibration: Calibration) -> ClusterSpec:
    """The live config's one embedded CPU worker as a simulated pool, calibrated: like it, it declares no
    devices (a CPU pool's default)."""
    return ClusterSpec.model_validate({
        "name": "local-cpu-calibrated",
        "slo": {"ttft_s": 300.0, "tpot_s": 10.0},
        "pools": [{"hardware": "cpu", "workers": 1}],
        "experts": [{"id": EXPERT_ID, "params_b": PARAMS_B, "bytes_per_param": BYTES_PER_PARAM}],
        "calibration": {"cpu": calibration.section()},
    })


def run_sim(plan: FidelityPlan, calibration: Calibration, live: list[Outcome]) -> tuple[list[Outcome], int]:
    """The live run's arrivals and token counts through the simulator, same policies, calibrated CPU worker."""
    cluster = resolve_cluster(sim_cluster(calibration))
    n = len(live)
    workload = Workload.from_arrays(
        [o.arrival_s for o in live], [o.num_prompt_tokens for o in live], [o.num_output_tokens for o in live],
        pinned_expert=np.zeros(n, dtype=np.int32), num_prefix_tokens=calibration.num_shared_prefix_tokens,
        expert_names=(EXPERT_ID,))
    order = np.argsort([o.arrival_s for o in live], kind="stable")  # from_arrays sorts; map back afterwards
    settings = ControlSettings.model_validate(plan.policies())
    plane = ServerlessPlane("fidelity", settings, cluster.expert_ids, np.zeros(1), np.zeros(n, dtype=np.int32),
                            control_interval_s=plan.step_interval_s, seed=plan.seed)
    result = Simulation(cluster, workload, plane, RoutingInputs(np.zeros((n, 1)), np.zeros((n, 1)))).run()
    sim = [None] * n
    for k, i in enumerate(order):
        arrival = float(workload.arrival_s[k])
        sim[i] = Outcome(arrival, float(result.first_token_at[k] - arrival), float(result.finished_at[k] - arrival),
                         bool(result.waited_for_cold_start[k]), int(workload.num_prompt_tokens[k]),
                         int(workload.num_output_tokens[k]), int(result.cached_prompt_tokens[k]))
    return sim, len(result.replicas)


# ---------------------------------------------------------------------------------------------- comparison


@dataclasses.dataclass(frozen=True)
class Row:
    metric: str
    live: float
    sim: float
    is_checked: bool

    @property
    def relative_error(self) -> float:
        return (self.sim - self.live) / self.live if self.live else math.inf

    def passes(self, tolerance: float) -> bool:
        if self.metric.endswith("count"):
            return self.sim == self.live
        return abs(self.relative_error) <= tolerance


def compare(live: list[Outcome], live_starts: int, sim: list[Outcome], sim_starts: int) -> list[Row]:
    def pct(outcomes: list[Outcome], field: str, q: float) -> float:
        return float(np.percentile([getattr(o, field) for o in outcomes], q))

    return [
        Row("TTFT p50 s", pct(live, "ttft_s", 50), pct(sim, "ttft_s", 50), True),
        Row("TTFT p90 s", pct(live, "ttft_s", 90), pct(sim, "ttft_s", 90), False),
        Row("end-to-end p50 s", pct(live, "e2e_s", 50), pct(sim, "e2e_s", 50), True),
        Row("end-to-end p90 s", pct(live, "e2e_s", 90), pct(sim, "e2e_s", 90), False),
        Row("cold-start count", live_starts, sim_starts, True),
        Row("requests behind a cold start count", sum(o.is_cold for o in live), sum(o.is_cold for o in sim), False),
        Row("prefix-cache hits count", sum(o.num_cached_tokens > 0 for o in live),
            sum(o.num_cached_tokens > 0 for o in sim), False),
    ]


def format_table(rows: list[Row], tolerance: float) -> str:
    lines = [f"{'metric':<36}{'live':>9}{'sim':>9}{'error':>9}  check (±{tolerance:.0%})"]
    for r in rows:
        is_count = r.metric.endswith("count")
        live, sim = (f"{r.live:9.0f}", f"{r.sim:9.0f}") if is_count else (f"{r.live:9.3f}", f"{r.sim:9.3f}")
        verdict = ("PASS" if r.passes(tolerance) else "FAIL") if r.is_checked else "(info)"
        lines.append(f"{r.metric:<36}{live}{sim}{r.relative_error:+9.1%}  {verdict}")
    return "\n".join(lines)


def run(plan: FidelityPlan, log: Callable[[str], None] = print) -> dict:
    """Calibrate, replay live, simulate, compare. Returns everything (plan, calibration, per-request, table)."""
    requests, rows_used = build_workload(plan)
    log(f"workload: {len(requests)} requests over {requests[-1].at_s:.0f} s, keep-alive {plan.keepalive_s:.0f} s, "
        f"{plan.num_idle_gaps} idle gaps of {plan.idle_gap_s:.0f} s (load {load_average()})")
    # The calibration brackets the replay (half the cold starts before, half after; prompts new each time): the
    # machine's load drifts over minutes, and the replay sees the load between the two.
    before = asyncio.run(measure_engine(plan, rows_used, 0, math.ceil(plan.calibration_starts / 2)))
    load_before = load_average()
    t0 = time.perf_counter()
    live, live_starts = run_live(plan, requests)
    load_after = load_average()
    log(f"live replay took {time.perf_counter() - t0:.0f} s (load {load_before} before, {load_after} after)")
    after = asyncio.run(measure_engine(plan, rows_used, 1, plan.calibration_starts // 2))
    calibration = fit_calibration([before, after])
    log(f"calibration (load {before['load_average']} before, {after['load_average']} after the replay): "
        f"decode {calibration.decode_tokens_per_s:.1f} tok/s, prefill {calibration.prefill_tokens_per_s:.1f} tok/s, "
        f"cold start {calibration.cold_start_s:.2f} s, shared prefix {calibration.num_shared_prefix_tokens} tokens; before / after: decode {before['decode_tokens_per_s']:.1f} / "
        f"{after['decode_tokens_per_s']:.1f} tok/s, prefill {before['prefill_tokens_per_s']:.1f} / "
        f"{after['prefill_tokens_per_s']:.1f} tok/s (they differ when other processes' load changed)")
    sim, sim_starts = run_sim(plan, calibration, live)
    table = compare(live, live_starts, sim, sim_starts)
    checked = [r for r in table if r.is_checked]
    return {
        "plan": dataclasses.asdict(plan),
        "policies": plan.policies(),
        "calibration": {**calibration.section(), "samples": calibration.samples},
        "load_average": {"before_live": load_before, "after_live": load_after},
        "table": [{**dataclasses.asdict(r), "relative_error": r.relative_error, "passes": r.passes(plan.tolerance)}
                  for r in table],
        "passes": all(r.passes(plan.tolerance) for r in checked),
        "requests": [{"live": dataclasses.asdict(a), "sim": dataclasses.asdict(b)} for a, b in zip(live, sim)],
        "_rows": table,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--requests", type=int, default=FidelityPlan.num_requests)
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: half the cores, as `make run`)")
    parser.add_argument("--tolerance", type=float, default=FidelityPlan.tolerance)
    parser.add_argument("--sleep-after-s", type=float, default=None,
                        help="turn the sleep tier on in both worlds (keepalive.sleep_after_s; default: off)")
    parser.add_argument("--json", default=None, help="write plan, calibration, per-request outcomes and the table")
    args = parser.parse_args()
    plan = FidelityPlan(seed=args.seed, num_requests=args.requests, n_threads=args.threads, tolerance=args.tolerance,
                        sleep_after_s=args.sleep_after_s)
    result = run(plan)
    rows = result.pop("_rows")
    print()
    print(format_table(rows, plan.tolerance))
    print(f"load average {result['load_average']['after_live']} (1/5/15 min, 2 cores); "
          f"overall: {'PASS' if result['passes'] else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
