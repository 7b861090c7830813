"""`router.online.slope_prior_by_confidence`: the slope's prior mean at a prompt is the router's weight on its task
stage there, so feedback corrects a familiar task's per-prompt estimates by an offset and replaces an unfamiliar
one's by the local mean; `Router.route` hands the online correction the router's confidence."""

from __future__ import annotations

import numpy as np
import pytest

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import OnlineLearner
from switchboard.router import load_default_router
from switchboard.router.selection import RoutingConstraints

PROMPT = "Which gas do plants absorb from the air? (A) oxygen (B) carbon dioxide (C) helium (D) neon"


@pytest.fixture(scope="module")
def router():
    return load_default_router()


def test_the_slopes_prior_mean_is_the_routers_weight_on_its_task_stage_and_only_when_asked(router):
    power = router.model.task_gate_power
    assert power > 0  # the packaged router has a task stage
    on = OnlineLearner(router, OnlineLearningConfig(slope_prior_by_confidence=True), np.random.default_rng(0))
    off = OnlineLearner(router, OnlineLearningConfig(), np.random.default_rng(0))
    assert on._slope_prior_mean(0.9) == pytest.approx(0.9 ** power)
    assert on._slope_prior_mean(None) is None and off._slope_prior_mean(0.9) is None


class Recorder:
    """An `adjust` that changes nothing and keeps what the router handed it."""

    confidence: float | None = -1.0

    def __call__(self, features, names, quality, confidence=None):
        self.confidence = confidence
        return np.asarray(quality, np.float64)


def test_the_router_hands_the_correction_its_confidence_in_the_prompts_task(router):
    recorder = Recorder()
    router.route(PROMPT, RoutingConstraints(), adjust=recorder)
    _, confidence = router.predict_with_confidence(router.features([PROMPT]))
    assert recorder.confidence == pytest.approx(float(confidence[0]))


def test_on_a_familiar_prompt_feedback_shifts_the_routers_estimate_and_on_an_unfamiliar_one_replaces_it(router):
    """40 answers of one expert scored 0.5 on average near the prompt, where the router had guessed 0.2 higher than
    it guesses here. Confident (b₀ = 1, an offset): the router was 0.3 too high there, so here it is corrected to
    its own estimate less about 0.3 — the router's per-prompt difference is kept. Unfamiliar (b₀ = 0): the local
    mean, about 0.5, whatever the router guessed."""
    x = router.features([PROMPT])
    base = router.predict_quality_from_features(x)[0].astype(np.float64)
    expert = 3
    settings = OnlineLearningConfig(slope_prior_by_confidence=True, slope_prior_var=0.0, explore_fraction=0.0)
    learner = OnlineLearner(router, settings, np.random.default_rng(0))
    for k in range(40):
        row = base.copy()
        row[expert] = base[expert] + 0.2
        learner.add_event("acme", x[0], expert, row, 0.5 + (0.25 if k % 2 else -0.25))
    shrink = 40 / (40 + settings.prior_events)
    familiar = learner.posterior("acme", x[0], base, confidence=1.0).mean[expert]
    unfamiliar = learner.posterior("acme", x[0], base, confidence=0.0).mean[expert]
    assert familiar == pytest.approx(base[expert] + shrink * (0.5 - base[expert] - 0.2), abs=1e-4)
    assert unfamiliar == pytest.approx(base[expert] + shrink * (0.5 - base[expert]), abs=1e-4)
    assert unfamiliar - familiar == pytest.approx(0.2 * shrink, abs=1e-4)


def test_the_task_context_appends_the_stages_posterior_so_prompts_filed_under_other_tasks_are_less_alike(router):
    """`task_context_weight`: the similarity the corrections use is taken with the task stage's posterior appended."""
    code = "Write a Python function that returns the n-th Fibonacci number."
    x = router.features([PROMPT, code])
    plain = OnlineLearner(router, OnlineLearningConfig(), np.random.default_rng(0))
    staged = OnlineLearner(router, OnlineLearningConfig(task_context_weight=1.0), np.random.default_rng(0))
    a, b = plain.context(x[0]), plain.context(x[1])
    sa, sb = staged.context(x[0]), staged.context(x[1])
    assert a.shape == (x.shape[1],) and sa.shape == (x.shape[1] + len(router.model.task_stage.task_means),)
    assert np.linalg.norm(sa) == pytest.approx(1.0, abs=1e-5)
    posterior = router.model.task_stage.posterior(x)
    assert int(np.argmax(posterior[0])) != int(np.argmax(posterior[1]))  # the stage files them under different tasks
    assert float(sa @ sb) < float(a @ b)
