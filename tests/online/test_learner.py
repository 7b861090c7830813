"""`OnlineLearner` on the packaged router: feedback moves routing for its tenant only, within the budget and
the memory bounds, and a restore from logged events gives the same corrections as learning them live."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import FeedbackEvent, LearnOutcome, OnlineLearner
from switchboard.router import load_default_router
from switchboard.router.selection import RoutingConstraints

PROMPT = "Write a Python function that returns the n-th Fibonacci number."
SIMILAR = "Write a Python function that returns the n-th prime number."


@pytest.fixture(scope="module")
def router():
    return load_default_router()


def learner(router, **settings) -> OnlineLearner:
    return OnlineLearner(router, OnlineLearningConfig(**{"explore_fraction": 0.0, **settings}), np.random.default_rng(7))


def route(router, online, tenant, prompt=PROMPT) -> str:
    return router.route(prompt, RoutingConstraints(), adjust=online.adjuster(tenant)).expert


def test_bad_scores_move_routing_away_from_an_expert_for_that_tenant_only(router):
    online = learner(router)
    first = route(router, online, "acme")
    assert online.adjuster("acme") is None  # no feedback yet: nothing to apply, nothing to explore
    for _ in range(30):
        assert online.learn("acme", PROMPT, first, 0.0) is LearnOutcome.LEARNED
    assert route(router, online, "acme") != first
    assert route(router, online, "acme", SIMILAR) != first  # a nearby prompt benefits too
    assert route(router, online, "globex") == first  # another tenant's routing is untouched
    assert online.num_events("acme") == 30 and online.num_events("globex") == 0


def test_good_scores_for_a_cheap_expert_make_it_the_choice_under_a_cost_weight(router):
    online = learner(router)
    cheap = "gemma-2-9b-it"
    constraints = RoutingConstraints(cost_weight=0.2)
    assert router.route(PROMPT, constraints).expert != cheap
    for _ in range(40):
        online.learn("acme", PROMPT, cheap, 1.0)
    assert router.route(PROMPT, constraints, adjust=online.adjuster("acme")).expert == cheap


def test_unusable_feedback_is_named_not_learned(router):
    online = learner(router)
    assert online.learn("acme", None, "gemma-2-9b-it", 1.0) is LearnOutcome.NO_PROMPT
    assert online.learn("acme", PROMPT, "not-an-expert", 1.0) is LearnOutcome.UNKNOWN_EXPERT
    assert learner(router, enabled=False).learn("acme", PROMPT, "gemma-2-9b-it", 1.0) is LearnOutcome.DISABLED
    assert online.num_events("acme") == 0


def test_exploration_stays_within_the_tenants_budget(router):
    online = learner(router, explore_fraction=0.25)
    online.learn("acme", PROMPT, "gemma-2-9b-it", 1.0)
    explored = 0
    for _ in range(40):
        adjust = online.adjuster("acme")
        router.route(PROMPT, RoutingConstraints(), adjust=adjust)
        explored += adjust.is_sampled
    budget = online.budget("acme")
    assert budget.num_decisions == 40 and budget.num_sampled == explored == 10


def test_memory_is_bounded_per_tenant_and_in_tenants(router):
    online = learner(router, max_events_per_tenant=5, max_tenants=2)
    for i in range(12):
        online.learn("acme", f"{PROMPT} ({i})", "gemma-2-9b-it", 1.0)
    assert online.num_events("acme") == 12  # counted; only the last 5 are held
    x = router.features([PROMPT])[0]
    assert online.posterior_mean("acme", x, router.predict_quality_from_features(x[None])[0]).shape == (len(router.experts),)
    online.learn("globex", PROMPT, "gemma-2-9b-it", 1.0)
    online.learn("initech", PROMPT, "gemma-2-9b-it", 1.0)
    assert online.num_events("acme") == 0  # least recently used tenant evicted


def test_restore_rebuilds_the_same_corrections_as_live_learning(router):
    scored = [FeedbackEvent("acme", f"{PROMPT} v{i}", e, s) for i, (e, s) in
              enumerate([("gemma-2-9b-it", 1.0), ("qwen2.5-7b-instruct", 0.0), ("gemma-2-9b-it", 0.5)] * 4)]
    scored += [FeedbackEvent("globex", SIMILAR, "qwen2.5-7b-instruct", 1.0), FeedbackEvent("acme", None, "gemma-2-9b-it", 1.0)]
    live, restored = learner(router), learner(router)
    for e in scored:
        live.learn(e.tenant, e.prompt, e.expert, e.score)
    assert restored.restore(scored, batch_size=5) == len(scored) - 1
    x = router.features([SIMILAR])[0]
    quality = router.predict_quality_from_features(x[None])[0]
    for tenant in ("acme", "globex"):
        assert np.allclose(live.posterior_mean(tenant, x, quality), restored.posterior_mean(tenant, x, quality), atol=1e-6)
    assert not np.allclose(live.posterior_mean("acme", x, quality), quality)


def routed(router, online, tenant, constraints=RoutingConstraints(), prompt=PROMPT):
    """One decision as `RouterChooser` makes it: route with the tenant's adjustment, then settle it."""
    adjust = online.adjuster(tenant)
    expert = router.route(prompt, constraints, adjust=adjust).expert
    if adjust is not None:
        adjust.settle(expert)
    return expert, adjust


def test_every_expert_gets_tried_within_the_bound_and_only_for_the_tenant_that_gave_feedback(router):
    online = learner(router, explore_fraction=0.25, explore_min_evidence=3.0)
    favourite = route(router, online, "acme")
    online.learn("acme", PROMPT, favourite, 1.0)
    tried = {favourite}
    for _ in range(120):
        expert, adjust = routed(router, online, "acme")
        budget = online.budget("acme")
        assert budget.num_sampled <= 0.25 * budget.num_decisions  # the bound, after every decision
        assert adjust.info()["explore_fraction"] == 0.25
        online.learn("acme", PROMPT, expert, 0.5)  # feedback on every answer, as a client scoring all of them
        tried.add(expert)
        assert routed(router, online, "globex") == (favourite, None)  # no feedback: the router's choice, no budget
    assert tried == set(router.experts)  # including the ones the router rates worst here
    assert online.budget("globex").num_decisions == 0
    without = learner(router)  # explore_fraction 0: the same feedback tries only what the router picks
    without.learn("acme", PROMPT, favourite, 1.0)
    assert {routed(router, without, "acme")[0] for _ in range(20)} == {favourite}


def test_an_exploration_the_trade_off_declines_is_still_charged_and_names_no_expert(router):
    online = learner(router, explore_fraction=0.5, explore_min_evidence=3.0)
    cheapest = router.experts[int(np.argmin(router.usd_per_mtok))]
    for _ in range(5):
        online.learn("acme", PROMPT, cheapest, 1.0)  # every other expert is under-tried here
    expensive = RoutingConstraints(cost_weight=100.0)  # even a perfect answer is not worth a dearer expert
    for _ in range(6):
        expert, adjust = routed(router, online, "acme", expensive)
        assert expert == cheapest and "explored_expert" not in adjust.info()
    assert online.budget("acme").num_sampled == 3  # every other decision was offered an exploration
    explored = []
    for _ in range(2):  # λ = 0: the offer is taken
        expert, adjust = routed(router, online, "acme")
        if adjust.info()["explored"]:
            explored.append((expert, adjust.info()["explored_expert"]))
    assert len(explored) == 1 and explored[0][0] == explored[0][1] != cheapest


def test_under_the_default_rule_experts_the_router_passes_over_get_tried_and_without_exploration_never(router):
    def tried_by(explore_fraction: float) -> set[str]:
        online = OnlineLearner(router, OnlineLearningConfig(explore_fraction=explore_fraction), np.random.default_rng(7))
        favourite = route(router, online, "acme")
        online.learn("acme", PROMPT, favourite, 0.9)
        tried = {favourite}
        for _ in range(60):
            expert, _ = routed(router, online, "acme")
            budget = online.budget("acme")
            assert budget.num_sampled <= explore_fraction * budget.num_decisions
            online.learn("acme", PROMPT, expert, 0.9)  # every answer is good: the favourite only gets better
            tried.add(expert)
        return tried

    assert len(tried_by(0.0)) == 1  # the favourite's mean only rises: nothing else is ever seen
    assert len(tried_by(0.2)) > 1  # optimism sends some decisions to experts with only the prior's wide SD
