"""The online anchor (`router.online.anchor_sd`): near a prompt, the tenant's best expert by a context-free posterior
of its feedback there is the default choice, and any other expert must beat it at the prompt by its own posterior
SDs — the selection rule's `Challengers.EVERY`, the learner's `correction.anchor`, and `Router.route`."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import OnlineLearner
from switchboard.online.correction import Events, anchor, unit
from switchboard.router import load_default_router
from switchboard.router.router import after_feedback
from switchboard.router.selection import Caution, Challengers, RoutingConstraints, choose, rank_candidates

PRICE = np.array([0.1, 0.2, 0.9])
NAMES = ["cheap", "mid", "big"]
SETTINGS = OnlineLearningConfig(min_similarity=0.5, prior_events=2.0)


def test_on_every_challenger_the_margin_applies_to_dearer_experts_too_but_never_to_the_prior_choice():
    prior = np.array([0.4, 0.7, 0.6])  # `mid` is the anchor at λ = 0
    quality = np.array([[0.3, 0.6, 0.65]])
    lam0 = RoutingConstraints()
    assert choose(quality, PRICE, NAMES, lam0)[0][0] == 2  # plain: `big` by 0.05
    by_price = Caution(prior, np.full((1, 3), 0.1))
    assert choose(quality, PRICE, NAMES, lam0, caution=by_price)[0][0] == 2  # `big` is dearer than `mid`: no margin
    anchored = Caution(prior, np.full((1, 3), 0.1), challengers=Challengers.EVERY)
    assert choose(quality, PRICE, NAMES, lam0, caution=anchored)[0][0] == 1  # 0.65 − 0.1 < 0.6
    assert choose(np.array([[0.3, 0.6, 0.75]]), PRICE, NAMES, lam0, caution=anchored)[0][0] == 2  # 0.75 − 0.1 > 0.6
    ranking = rank_candidates(quality[0], PRICE, NAMES, lam0, caution=anchored)
    assert ranking[0].expert == "mid" and ranking[0].quality_for_choice == pytest.approx(0.6)
    assert next(c for c in ranking if c.expert == "big").quality_for_choice == pytest.approx(0.55)


def events(contexts, experts, predictions, scores) -> Events:
    predictions = np.asarray(predictions, np.float32)
    experts = np.asarray(experts, np.int16)
    return Events(np.stack([unit(c) for c in contexts]), experts, predictions[np.arange(len(experts)), experts],
                  np.asarray(scores, np.float32), predictions)


def test_the_anchor_is_each_experts_mean_feedback_near_the_prompt_shrunk_to_the_routers_mean_prediction_there():
    near, far = [1.0, 0.0], [0.0, 1.0]
    ev = events([near, near, near, far], [0, 0, 1, 1], [[0.5, 0.5], [0.7, 0.3], [0.6, 0.4], [0.9, 0.9]],
                [1.0, 1.0, 0.0, 1.0])
    means = anchor(ev, unit(near), np.array([0, 1]), SETTINGS)
    router_mean = np.array([0.6, 0.4])  # over the three near prompts; the far event counts for nothing
    assert means == pytest.approx([(2 * router_mean[0] + 2.0) / 4, (2 * router_mean[1] + 0.0) / 3])
    assert anchor(ev, unit(near), np.array([1]), SETTINGS) == pytest.approx([(2 * 0.4) / 3])  # asked-for experts only
    assert anchor(ev, unit([-1.0, 0.0]), np.array([0, 1]), SETTINGS) is None  # nothing near
    assert anchor(Events(ev.contexts, ev.experts, ev.predicted, ev.scores), unit(near), np.array([0, 1]), SETTINGS) is None


def test_an_anchor_replaces_the_routers_rule_except_on_an_exploring_decision():
    rule = Caution(np.array([0.4, 0.5, 0.6]), np.full((1, 3), 0.2))
    anchored = Caution(np.array([0.7, 0.5, 0.6]), np.full((1, 3), 0.05), challengers=Challengers.EVERY)
    assert after_feedback(rule, np.full(3, 0.5), False, anchored) is anchored
    assert after_feedback(rule, np.full(3, 0.5), True, anchored) is None
    assert after_feedback(None, None, False, anchored) is anchored


PROMPT = "Write a Python function that returns the n-th Fibonacci number."


@pytest.fixture(scope="module")
def router():
    return load_default_router()


def test_feedback_anchors_the_tenant_on_the_expert_it_rates_best_and_only_with_anchor_sd(router):
    """Every expert answers the prompt a few times; one is scored best on average. With the anchor on, routing
    stays with it unless another's posterior at the prompt beats it by a margin; off (the default), there is no
    anchor and the router's own rule applies."""
    names = list(router.experts)
    favourite = names[1]
    runs = {}
    for anchor_sd in (0.0, 1.0):
        online = OnlineLearner(router, OnlineLearningConfig(explore_fraction=0.0, anchor_sd=anchor_sd),
                               np.random.default_rng(3))
        for k in range(6):
            for name in names:
                online.learn("acme", PROMPT, name, 0.9 if name == favourite else (0.6 if k % 2 else 0.9))
        adjust = online.adjuster("acme")
        decision = router.route(PROMPT, RoutingConstraints(), adjust=adjust)
        runs[anchor_sd] = (adjust.anchor, decision, adjust.info())
    off, on = runs[0.0], runs[1.0]
    assert off[0] is None and "anchored" not in off[2]
    assert on[2]["anchored"] is True  # what x-switchboard-route's "online" object says
    caution = on[0]
    assert caution is not None and caution.challengers is Challengers.EVERY
    assert int(np.argmax(caution.prior)) == 1 and on[1].expert == favourite
    x = router.features([PROMPT])
    post = OnlineLearner(router, OnlineLearningConfig(anchor_sd=1.0), np.random.default_rng(0)).posterior(
        "acme", x[0], router.predict_quality_from_features(x)[0])
    assert post.anchor is None  # another learner, no feedback for the tenant: nothing to anchor on


def test_an_event_needs_the_routers_prediction_of_every_expert(router):
    online = OnlineLearner(router, OnlineLearningConfig(), np.random.default_rng(0))
    x = router.features([PROMPT])[0]
    with pytest.raises(ValueError, match="one value per expert"):
        online.add_event("acme", x, 0, 0.5, 1.0)
    online.add_event("acme", x, 0, np.full(len(router.experts), 0.5), 1.0)
    assert online.num_events("acme") == 1
