"""Simulator fidelity on the real engine (issue 5), small: a few requests with one idle gap past the keep-alive,
run live on the llama.cpp expert and simulated on the CPU worker calibrated from separate measurements of the
same engine. The full-size check with the strict 15% bound is `benchmarks/sim_fidelity.py`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.llamacpp

# Latency agreement is measured, not asserted: on 2 shared cores other processes' load moves the live engine's
# speed, so a p50 bound here would fail CI on contention, not on the model (our rule: no timing assertions in
# tests). The 15% comparison is `benchmarks/sim_fidelity.py`, reported in docs/simulator.md; this test checks
# what is deterministic — the same cold starts and prefix-cache hits — and that both sides report the
# latencies being compared.
TOLERANCE = 0.15

# Short, with margins that hold on a loaded machine: ordinary gaps (≤ 1.5 s from one arrival to the next) stay
# below the 3 s keep-alive however long a request runs, and the idle gap (9 s) outlasts it by more than any of
# these requests takes (≤ 32 tokens: ~1 s, a few under contention).
PLAN_OVERRIDES = {
    "seed": 3, "num_requests": 8, "rate_per_s": 1.0, "max_gap_s": 1.5, "keepalive_s": 3.0, "idle_gap_s": 9.0,
    "num_idle_gaps": 1, "prompt_chars": (40, 240), "max_tokens": (8, 32), "calibration_starts": 2,
    "calibration_prefills": 4, "calibration_decodes": 1, "calibration_decode_tokens": 48,
}


def _load_benchmark():
    # The benchmark is a script, not a package module; load it by path so the test runs exactly its code.
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_fidelity.py"
    spec = importlib.util.spec_from_file_location("sim_fidelity_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("sleep_after_s", [None, 0.0], ids=["no-tier", "sleep-tier"])
def test_simulated_cold_starts_match_the_live_run_and_latencies_are_compared(sleep_after_s):
    # With the sleep tier on, the CPU worker declares no devices live and simulated, so neither side sleeps: the
    # same 2 cold starts (a simulated pool that declared a device slept and woke instead: 5 against 2).
    bench = _load_benchmark()
    plan = bench.FidelityPlan(**PLAN_OVERRIDES, tolerance=TOLERANCE, sleep_after_s=sleep_after_s)
    result = bench.run(plan, log=lambda _line: None)
    rows = {r.metric: r for r in result["_rows"]}
    table = bench.format_table(result["_rows"], TOLERANCE) + f"\nload average {result['load_average']}"

    assert rows["cold-start count"].live == 2, table  # the first request, and the one after the idle gap
    assert rows["cold-start count"].sim == rows["cold-start count"].live, table
    # Every request finds the chat template's prefix cached, live and simulated: the worker's warm-up leaves it in
    # the KV cache of each engine life (engines/llamacpp/kv.py; Hardware.warmup_caches_prefix in the simulator).
    assert rows["prefix-cache hits count"].live == PLAN_OVERRIDES["num_requests"], table
    assert rows["prefix-cache hits count"].sim == rows["prefix-cache hits count"].live, table
    for metric in ("TTFT p50 s", "end-to-end p50 s"):
        assert rows[metric].live > 0 and rows[metric].sim > 0, table
