"""Whole runs: conservation under every policy set, determinism, and the report's arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.sim import workload as wl
from switchboard.sim.cluster import ClusterSpec, ExpertSimSpec, PoolSpec
from switchboard.sim.quality import routing_inputs
from switchboard.sim.scenario import POLICY_SETS, Knobs, run_policy

SPEC = ClusterSpec(
    name="tiny",
    pools=[PoolSpec(hardware="a10g", workers=3), PoolSpec(hardware="h100", workers=1, devices_per_worker=4)],
    experts=[ExpertSimSpec(id="llama-3.1-8b-instruct", params_b=8, usd_per_mtok=0.2),
             ExpertSimSpec(id="gemma-2-9b-it", params_b=9, usd_per_mtok=0.1),
             ExpertSimSpec(id="llama-3.1-nemotron-51b-instruct", params_b=51, usd_per_mtok=0.9)],
)


@pytest.fixture(scope="module")
def data() -> wl.RoutingData:
    return wl.load_routing_data()


def make_workload(seed: int, rate: float, duration: float, cv: float) -> wl.Workload:
    rng = np.random.default_rng(seed)
    arrival = wl.gamma_arrivals(rng, rate, duration, cv)
    n = len(arrival)
    w = wl.Workload.from_arrays(arrival, rng.integers(1, 4000, n), rng.integers(1, 500, n))
    return wl.attach_prompts(w, 5608, rng)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.05, 3.0), cv=st.floats(0.5, 4.0),
       policy=st.sampled_from(POLICY_SETS))
def test_every_request_arrives_once_and_ends_once(data, seed, rate, cv, policy):
    w = make_workload(seed, rate, 120.0, cv)
    summary, result = run_policy(policy, SPEC, w, lambda ids: routing_inputs(w, data, ids), Knobs(seed=seed))
    result.check_conservation()  # run() checks too; restated here as the property under test
    assert summary.num_finished + summary.num_rejected == len(w)
    assert (result.arrived == 1).all()
    done = ~np.isnan(result.finished_at)
    assert (result.first_token_at[done] >= w.arrival_s[done]).all()
    assert (result.finished_at[done] >= result.first_token_at[done]).all()
    assert 0.0 <= summary.slo_attainment <= summary.ttft_slo_attainment <= 1.0


def test_runs_are_deterministic(data):
    w = make_workload(7, 1.0, 200.0, 2.0)
    a, _ = run_policy("switchboard", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    b, _ = run_policy("switchboard", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    assert a.as_dict() == b.as_dict()


def test_static_is_always_on_and_serverless_scales_to_zero(data):
    # One burst, then a long silence: the serverless fleet must go to zero and pay less than the static one.
    rng = np.random.default_rng(1)
    w = wl.attach_prompts(wl.Workload.from_arrays(np.concatenate([rng.uniform(0, 30, 40), [3000.0]]),
                                                  np.full(41, 500), np.full(41, 50)), 5608, rng)
    static, static_run = run_policy("static", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    fixed, fixed_run = run_policy("fixed-keepalive", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    assert static.cold_starts == 0 and static.num_rejected == 0
    assert all(r.is_preprovisioned for r in static_run.replicas)
    assert fixed.cold_starts >= 2  # woke for the burst, scaled to zero, woke again at t=3000
    assert fixed.usd_cost < static.usd_cost
    assert fixed.requests_behind_cold_start >= 2


def test_pinned_requests_go_to_their_expert(data):
    names = ("gemma-2-9b-it", "llama-3.1-8b-instruct")
    w = wl.many_experts_workload(np.random.default_rng(0), names, 0.5, 300.0)
    w = wl.attach_prompts(w, 5608, np.random.default_rng(1))
    _, result = run_policy("switchboard", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    ids = result.expert_ids
    assert [ids[k] for k in result.expert_index] == [names[k] for k in w.pinned_expert]


def test_prewarm_starts_are_told_apart_from_starts_on_demand(data):
    # One expert called every 15 minutes for 8 hours: a 10-minute timeout lets it go and wakes it for every
    # call; the hybrid histogram learns the period, unloads it and pre-warms it ahead of the next call.
    n = 32
    w = wl.attach_prompts(wl.Workload.from_arrays(np.arange(n) * 900.0, np.full(n, 500), np.full(n, 50),
                                                  pinned_expert=np.zeros(n, dtype=np.int32),
                                                  expert_names=("gemma-2-9b-it",)), 5608, np.random.default_rng(2))
    fixed, _ = run_policy("fixed-keepalive", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    hybrid, run = run_policy("hybrid-keepalive", SPEC, w, lambda ids: routing_inputs(w, data, ids))
    assert fixed.prewarm_starts == 0 and fixed.cold_starts == fixed.requests_behind_cold_start == n
    assert hybrid.prewarm_starts == sum(r.is_prewarm for r in run.replicas) > n // 2
    assert hybrid.requests_behind_cold_start == hybrid.cold_starts - hybrid.prewarm_starts < n // 2


def test_the_switchboard_set_is_the_live_default_and_the_others_are_deltas_of_it():
    from switchboard.config import parse_config
    from switchboard.policies.control import ControlSettings
    from switchboard.sim.scenario import DEFAULT_STEP_INTERVAL_S, POLICY_SET_DELTAS, Knobs, control_settings

    live = parse_config("experts: [{id: a, backend: {kind: simulated}}]").control_plane
    assert control_settings("switchboard") == live.policies == ControlSettings()
    assert Knobs().control_interval_s == DEFAULT_STEP_INTERVAL_S == live.step_interval_s
    for name, delta in POLICY_SET_DELTAS.items():
        settings = control_settings(name).model_dump()
        default = ControlSettings().model_dump()
        changed = {section for section in default if settings[section] != default[section]}
        assert changed == set(delta), name  # exactly the sections the delta names differ
