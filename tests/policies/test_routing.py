"""Fleet-aware routing: the score, cold-start hiding with a background wake, route-aware pre-warming."""

from __future__ import annotations

from policy_builders import fleet, with_replica
from switchboard.fleet import ReplicaLoad
from switchboard.fleet import ops
from switchboard.policies.routing import (
    ExpertCandidate,
    PrewarmSettings,
    PrewarmState,
    RoutePrediction,
    RouteReasonCode,
    RoutingSettings,
    make_prewarm,
    make_routing,
)
from switchboard.types import ExpertId, ReplicaId, ReplicaState

WORKERS = [(f"w{i}", "l4", 24.0, 0.8) for i in range(3)]


def _fleet(warm=("small",)):
    s = fleet(experts=("big", "small", "api"), workers=WORKERS, external=("api",))
    for i, e in enumerate(warm):
        s = with_replica(s, f"r{i}", expert=e, worker=f"w{i}")
    return s


def _candidates(q_big=0.80, q_small=0.77):
    return [ExpertCandidate(ExpertId("big"), q_big, 1.0), ExpertCandidate(ExpertId("small"), q_small, 0.2)]


def test_cold_start_hiding_answers_with_the_close_warm_expert_and_wakes_the_cold_one():
    policy = make_routing(RoutingSettings(kind="fleet-aware", latency_weight_per_s=0.0, cold_start_quality_margin=0.05))
    d = policy.route(_fleet(), _candidates())
    assert d.expert_id == "small" and d.wake_expert_ids == ("big",) and not d.is_cold_start
    assert d.reason.code is RouteReasonCode.COLD_START_HIDDEN and "big is cold" in d.reason.detail


def test_no_hiding_when_the_warm_expert_is_much_worse():
    policy = make_routing(RoutingSettings(kind="fleet-aware", latency_weight_per_s=0.0, cold_start_quality_margin=0.05))
    d = policy.route(_fleet(), _candidates(q_small=0.5))
    assert d.expert_id == "big" and d.is_cold_start and d.wake_expert_ids == ()
    assert d.reason.code is RouteReasonCode.COLD_START


def test_quality_only_is_blind_to_the_fleet():
    d = make_routing(RoutingSettings(kind="quality-only", latency_weight_per_s=1.0)).route(_fleet(), _candidates())
    assert d.expert_id == "big" and d.is_cold_start and d.wake_expert_ids == ()


def test_latency_term_charges_queueing_and_cold_starts():
    s = _fleet(warm=("small", "big"))
    busy = ReplicaLoad(num_running=16, num_running_tokens=16 * 4000)
    s = ops.set_load(s, "r1", busy)  # big's only replica is saturated
    policy = make_routing(RoutingSettings(kind="fleet-aware", latency_weight_per_s=0.1))
    d = policy.route(s, _candidates())
    scored = {x.candidate.expert_id: x for x in d.scored}
    assert scored["big"].expected_extra_latency_s > scored["small"].expected_extra_latency_s == 0
    assert d.expert_id == "small" and d.reason.code is RouteReasonCode.BEST_SCORE
    assert scored["small"].score == 0.77 - 0.1 * 0.0


def test_price_weight_and_external_experts():
    policy = make_routing(RoutingSettings(kind="fleet-aware", usd_weight=0.1))
    cands = [ExpertCandidate(ExpertId("api"), 0.9, 10.0), ExpertCandidate(ExpertId("small"), 0.8, 0.2)]
    d = policy.route(_fleet(), cands)
    assert d.expert_id == "small"  # 0.9 − 1.0 < 0.8 − 0.02
    assert make_routing(RoutingSettings()).route(_fleet(), cands).expert_id == "api"  # always warm, λ = 0


def test_no_candidates_is_explicit():
    d = make_routing(RoutingSettings()).route(_fleet(), [])
    assert d.reason.code is RouteReasonCode.NO_CANDIDATES and d.expert_id == ""


def test_route_aware_prewarm_starts_cold_experts_with_predicted_demand_and_forgets_over_time():
    policy = make_prewarm(PrewarmSettings(kind="route-aware", half_life_s=60, horizon_s=60, min_expected_requests=1))
    s = _fleet()
    preds = [RoutePrediction(float(t), {ExpertId("big"): 0.5, ExpertId("small"): 0.5}) for t in range(0, 10)]
    state = policy.observe(PrewarmState(), preds, now_s=10.0)
    wanted = policy.wanted(s, state)
    assert [w.expert_id for w in wanted] == ["big"]  # small is warm, api external
    later = policy.observe(state, [], now_s=600.0)
    assert policy.wanted(s, later) == []
    none = make_prewarm(PrewarmSettings(kind="none"))
    assert none.wanted(s, state) == []


def _starting_fleet():
    """big's only replica started a moment ago (as every expert is right after a server starts); small is warm."""
    s = _fleet()
    s = with_replica(s, "r9", expert="big", worker="w1", state=ReplicaState.COLD)
    return ops.transition(s, ReplicaId("r9"), ReplicaState.STARTING, cold_start_s=20.0)


def test_stand_in_answers_whatever_its_quality_while_the_preferred_expert_starts():
    settings = RoutingSettings(kind="fleet-aware", latency_weight_per_s=0.0, stand_in_after_s=1.0)
    d = make_routing(settings).route(_starting_fleet(), _candidates(q_small=0.3))
    assert d.expert_id == "small" and not d.is_cold_start and d.wake_expert_ids == ("big",)
    assert d.reason.code is RouteReasonCode.STAND_IN and "big is 20.0s from serving" in d.reason.detail


def test_no_stand_in_by_default_or_when_the_preferred_expert_is_close_to_serving():
    d = make_routing(RoutingSettings(latency_weight_per_s=0.0)).route(_starting_fleet(), _candidates(q_small=0.3))
    assert d.expert_id == "big" and d.reason.code is RouteReasonCode.COLD_START
    patient = RoutingSettings(latency_weight_per_s=0.0, stand_in_after_s=30.0)
    assert make_routing(patient).route(_starting_fleet(), _candidates(q_small=0.3)).expert_id == "big"


def test_an_unrated_stand_in_answers_only_while_the_preferred_expert_starts():
    """`stand_in_ids` (experts the router cannot rate) are never chosen on score, even when free and λ is large."""
    settings = RoutingSettings(kind="fleet-aware", latency_weight_per_s=0.0, stand_in_after_s=1.0)
    only_big = [ExpertCandidate(ExpertId("big"), 0.8, 1.0)]
    starting = make_routing(settings).route(_starting_fleet(), only_big, 100.0, (ExpertId("small"),))
    assert starting.expert_id == "small" and starting.reason.code is RouteReasonCode.STAND_IN
    warm = with_replica(_fleet(), "r9", expert="big", worker="w1")
    assert make_routing(settings).route(warm, only_big, 100.0, (ExpertId("small"),)).expert_id == "big"


def test_an_asleep_expert_its_request_wakes_within_the_slo_is_not_hidden_behind_a_stand_in():
    """Sleep tier: the preferred expert has no replica but one asleep with a 0.4 s wake. Its request wakes it
    (no stand-in, nothing woken in the background); with a cold start instead, cold-start hiding answers from the
    warm expert as before."""
    import dataclasses as dc

    from switchboard.fleet.activity import ExpertActivity
    from switchboard.fleet.state import ExpertSpec, FleetSnapshot, Replica, Worker
    from switchboard.perf.roofline import engine_profile
    from switchboard.perf.serving import serving_estimate
    from switchboard.policies.routing import ExpertCandidate, RoutingSettings, make_routing
    from switchboard.types import ExpertId, HardwareKind, ReplicaId, ReplicaState, WorkerId

    best, other = ExpertId("best"), ExpertId("other")
    h100 = HardwareKind("h100")
    workers = {WorkerId("w"): Worker(WorkerId("w"), h100, 640.0, 53.7)}
    cold = {(e, h100): serving_estimate(e, engine_profile(8, "h100")) for e in (best, other)}
    asleep = {**cold, (best, h100): dc.replace(cold[(best, h100)], cold_start_s=cold[(best, h100)].wake_s,
                                           asleep_worker_ids=(WorkerId("w"),))}
    warm = Replica(ReplicaId("other#0"), other, WorkerId("w"), h100, 80.0, cold[(other, h100)].capacity, ReplicaState.WARM)
    activity = {best: ExpertActivity(best, num_arrivals=20, decayed_arrivals=1.0, decayed_prompt_tokens=1000.0)}
    candidates = [ExpertCandidate(best, 0.80, 0.2), ExpertCandidate(other, 0.78, 0.2)]
    routing = make_routing(RoutingSettings())
    for estimates, hidden in ((cold, True), (asleep, False)):
        snapshot = FleetSnapshot(now_s=100.0, workers=workers, experts={e: ExpertSpec(e, 8, 0.2) for e in (best, other)},
                                 estimates=estimates, replicas={warm.replica_id: warm}, activity=activity)
        decision = routing.route(snapshot, candidates)
        assert (decision.expert_id == other) is hidden and bool(decision.wake_expert_ids) is hidden


def _asleep_and_warm_on_l4(q_best=0.80, q_other=0.78):
    """`best` asleep on L4 w1 (a 0.71 s wake), `other` warm on L4 w0; both 8B, both with recent traffic of
    1,000-token prompts. The router's candidates with these qualities."""
    import dataclasses as dc

    from switchboard.fleet.activity import ExpertActivity
    from switchboard.fleet.state import ExpertSpec, FleetSnapshot, Replica, Worker
    from switchboard.perf.roofline import engine_profile
    from switchboard.perf.serving import serving_estimate
    from switchboard.types import HardwareKind, WorkerId

    best, other, l4 = ExpertId("best"), ExpertId("other"), HardwareKind("l4")
    workers = {WorkerId(w): Worker(WorkerId(w), l4, 24.0, 0.8) for w in ("w0", "w1")}
    cold = {(e, l4): serving_estimate(e, engine_profile(8, "l4")) for e in (best, other)}
    estimates = {**cold, (best, l4): dc.replace(cold[(best, l4)], cold_start_s=cold[(best, l4)].wake_s,
                                                asleep_worker_ids=(WorkerId("w1"),))}
    warm = Replica(ReplicaId("other#0"), other, WorkerId("w0"), l4, 24.0, cold[(other, l4)].capacity, ReplicaState.WARM)
    activity = {e: ExpertActivity(e, num_arrivals=20, first_arrival_at=0.0, last_arrival_at=100.0, idle_since_at=100.0,
                                  decayed_arrivals=10.0, decayed_prompt_tokens=10_000.0) for e in (best, other)}
    snapshot = FleetSnapshot(now_s=100.0, workers=workers, experts={e: ExpertSpec(e, 8, 0.2) for e in (best, other)},
                             estimates=estimates, replicas={warm.replica_id: warm}, activity=activity)
    return snapshot, [ExpertCandidate(best, q_best, 0.2), ExpertCandidate(other, q_other, 0.2)]


def test_a_request_whose_wake_would_land_in_the_fleets_tail_goes_to_a_near_equal_warm_expert_that_answers_sooner():
    """Slow-wake hiding (sleep tier): woken, a 4,000-token prompt would first answer after 0.71 s + ~1.0 s of
    prefill, past the 99th-percentile warm request (~1.25 s: 1,000-token mean prompts on an L4); the warm expert
    within the quality margin answers it in ~1.0 s, and the sleeper stays asleep. A short prompt, or no prompt
    size (a caller that does not pass one), wakes it as before; so does a long one when no warm expert is near
    enough in quality, or under quality-only routing."""
    from switchboard.fleet.state import ExpertSpec
    from switchboard.policies import predict

    snapshot, candidates = _asleep_and_warm_on_l4()
    fleet_aware = make_routing(RoutingSettings())
    bound_s = predict.warm_ttft_percentile_s(snapshot, ExpertId("best"), 99.0)
    assert predict.woken_ttft_s(snapshot, ExpertId("best"), 200) < bound_s < predict.woken_ttft_s(snapshot, ExpertId("best"), 4000)
    long = fleet_aware.route(snapshot, candidates, num_prompt_tokens=4000)
    assert (long.expert_id, long.wake_expert_ids, long.reason.code) == ("other", (), RouteReasonCode.SLOW_WAKE_HIDDEN)
    assert not long.is_cold_start
    for num_prompt_tokens in (200, None):
        short = fleet_aware.route(snapshot, candidates, num_prompt_tokens=num_prompt_tokens)
        assert (short.expert_id, short.reason.code) == ("best", RouteReasonCode.BEST_SCORE)
    far_snapshot, far = _asleep_and_warm_on_l4(q_other=0.70)
    assert fleet_aware.route(far_snapshot, far, num_prompt_tokens=4000).expert_id == "best"
    # An external expert near in quality is warm but has no replica whose latency the fleet models: not taken.
    api = ExpertId("api")
    with_api = far_snapshot.evolve(experts={**far_snapshot.experts, api: ExpertSpec(api, 0, 1.0, is_external=True)})
    assert fleet_aware.route(with_api, [*far, ExpertCandidate(api, 0.79, 1.0)], num_prompt_tokens=4000).expert_id == "best"
    assert make_routing(RoutingSettings(kind="quality-only")).route(snapshot, candidates, num_prompt_tokens=4000).expert_id == "best"


def test_no_slow_wake_hiding_when_the_warm_expert_would_answer_no_sooner():
    """The warm expert's queue (20,000 prompt tokens ahead, ~5 s) makes it slower than the wake: the request
    wakes the sleeper."""
    from switchboard.fleet.state import QueuedRequest
    from switchboard.types import RequestId

    snapshot, candidates = _asleep_and_warm_on_l4()
    busy = snapshot
    for i in range(5):
        busy = ops.enqueue(busy, QueuedRequest(RequestId(f"q{i}"), ExpertId("other"), 99.0, 4_000, 100), ReplicaId("other#0"))
    decision = make_routing(RoutingSettings()).route(busy, candidates, num_prompt_tokens=4000)
    assert (decision.expert_id, decision.reason.code) == ("best", RouteReasonCode.BEST_SCORE)
