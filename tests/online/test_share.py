"""The router's share of the online posterior (`Adjustment.router_share`), which scales its conservative rule."""

from __future__ import annotations

import numpy as np

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import OnlineLearner
from switchboard.router import load_default_router


def test_the_routers_share_falls_with_the_feedback_near_the_prompt_and_only_for_that_expert():
    router = load_default_router()
    learner = OnlineLearner(router, OnlineLearningConfig(enabled=True, explore_fraction=0.0), np.random.default_rng(0))
    prompt = "What is 17 * 23? Answer with a number."
    x = router.features([prompt])
    base = router.predict_quality_from_features(x)[0]
    share = learner.posterior("t", x[0], base).router_share
    assert np.all(share == 1.0)  # no feedback: all of it is the router's
    for _ in range(8):
        learner.learn("t", prompt, router.experts[0], 1.0)
    adjust = learner.adjuster("t")
    adjust(x[0], list(router.experts), base)
    prior = OnlineLearningConfig().prior_events
    assert adjust.router_share[0] < prior / (prior + 7) and np.all(adjust.router_share[1:] == 1.0)
    assert np.allclose(learner.posterior("t", x[0], base)[1], adjust.router_share)
    assert learner.posterior("other", x[0], base)[1].tolist() == [1.0] * len(router.experts)  # per tenant
