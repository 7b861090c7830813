"""The conservative selection rule (`selection.Caution`): properties of the shared rule, the margin's choice on
leave-one-task-out inner folds, a router that carries it through save and load; and the packaged form, the margin
gated by the model's confidence per prompt, through nested CV, `Router.route`, the chooser's hand-over to the fleet,
online feedback and evaluation as served."""

from __future__ import annotations

import dataclasses
import json
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.config import parse_config
from switchboard.gateway.schemas import RoutingParams
from switchboard.router import load_router
from switchboard.router.calibration import Calibration
from switchboard.router.chooser import RouterChooser
from switchboard.router.embed import StaticEmbedder
from switchboard.router.nested import CalibrationKind, Candidate, nested_cross_validate, select_and_fit
from switchboard.router.pipeline import TrainSettings, train_router, write_router
from switchboard.router.persist import builtin_static_dir
from switchboard.router.protocol import SplitKind
from switchboard.router.report import margins_per_fold
from switchboard.router.selection import (Caution, Challengers, RoutingConstraints, SelectionRule, choose,
                                          gated_margin, rank_candidates)
from switchboard.router.router import Router, after_feedback
from switchboard.router.strategies import QualityModel, StrategyName

from .helpers import PRICES, synthetic_examples
from .test_protocol import corpus
from .test_selection import constraint_sets, problems

PRICE = np.array([0.1, 0.2, 0.9])
NAMES = ["cheap", "mid", "big"]
PRIOR = np.array([0.4, 0.5, 0.6])  # `big` is the prior choice at λ = 0


def test_a_cheaper_expert_must_beat_the_prior_by_the_margin():
    caution = Caution(PRIOR, np.full(3, 0.05))
    lam0 = RoutingConstraints()
    assert choose(np.array([[0.3, 0.64, 0.6]]), PRICE, NAMES, lam0)[0][0] == 1  # plain: any gain wins
    assert choose(np.array([[0.3, 0.64, 0.6]]), PRICE, NAMES, lam0, caution=caution)[0][0] == 2  # 0.04 < 0.05
    assert choose(np.array([[0.3, 0.66, 0.6]]), PRICE, NAMES, lam0, caution=caution)[0][0] == 1  # 0.06 > 0.05


def test_experts_priced_at_or_above_the_prior_carry_no_margin():
    # At λ = 0.3 the prior choice is `mid` (0.5 − 0.06 beats 0.6 − 0.27 and 0.4 − 0.03).
    caution = Caution(PRIOR, np.full(3, 0.5))
    quality = np.array([[0.9, 0.5, 0.9]])
    assert choose(quality, PRICE, NAMES, RoutingConstraints(cost_weight=0.3), caution=caution)[0][0] == 2
    assert choose(quality, PRICE, NAMES, RoutingConstraints(cost_weight=0.3))[0][0] == 0


def test_not_dearer_puts_the_margin_on_same_priced_peers_but_not_on_dearer_experts():
    price = np.array([0.1, 0.9, 0.9, 1.5])
    names = ["cheap", "big", "peer", "dearest"]
    prior = np.array([0.4, 0.6, 0.5, 0.55])  # `big` is the prior choice at λ = 0
    lam0 = RoutingConstraints()
    cheaper = Caution(prior, np.full(4, 0.1))
    peers = dataclasses.replace(cheaper, challengers=Challengers.NOT_DEARER)
    quality = np.array([[0.3, 0.6, 0.65, 0.62]])
    assert choose(quality, price, names, lam0, caution=cheaper)[0][0] == 2  # a same-priced peer: no margin
    assert choose(quality, price, names, lam0, caution=peers)[0][0] == 3  # the peer pays 0.1; the dearer does not
    assert choose(np.array([[0.3, 0.6, 0.75, 0.62]]), price, names, lam0, caution=peers)[0][0] == 2  # 0.65 > 0.62
    assert choose(np.array([[0.75, 0.6, 0.3, 0.3]]), price, names, lam0, caution=peers)[0][0] == 0  # 0.65 > 0.6
    assert choose(np.array([[0.65, 0.6, 0.3, 0.3]]), price, names, lam0, caution=peers)[0][0] == 1  # 0.55 < 0.6
    scaled = after_feedback(peers, np.full(4, 0.5), is_exploring=False)  # feedback scales the margin, keeps the scope
    assert scaled.challengers is Challengers.NOT_DEARER and np.allclose(scaled.margin, 0.05)


def test_the_prior_choice_respects_the_constraints():
    # `big` is excluded, so the prior choice is `mid`, and `cheap` must beat it by the margin.
    caution = Caution(PRIOR, np.full(3, 0.1))
    only = RoutingConstraints(experts=frozenset({"cheap", "mid"}))
    assert choose(np.array([[0.55, 0.5, 0.9]]), PRICE, NAMES, only, caution=caution)[0][0] == 1
    assert choose(np.array([[0.65, 0.5, 0.9]]), PRICE, NAMES, only, caution=caution)[0][0] == 0


@st.composite
def cautions(draw, m):
    prior = np.asarray(draw(st.lists(st.floats(0.0, 1.0), min_size=m, max_size=m)))
    return Caution(prior, np.full(m, draw(st.floats(0.0, 0.5))))


@settings(max_examples=150, deadline=None)
@given(data=st.data(), rule=st.sampled_from(list(SelectionRule)))
def test_caution_keeps_the_constraints_and_ranks_its_pick_first(data, rule):
    quality, price, names = data.draw(problems())
    constraints = data.draw(constraint_sets(names))
    caution = data.draw(cautions(len(names)))
    index, is_feasible = choose(quality, price, names, constraints, rule, caution=caution)
    plain_index, plain_feasible = choose(quality, price, names, constraints, rule)
    assert np.array_equal(is_feasible, plain_feasible)  # caution never changes what is allowed
    for row in range(len(quality)):
        if not is_feasible[row]:
            continue
        assert constraints.experts is None or names[index[row]] in constraints.experts
        assert constraints.max_usd_per_mtok is None or price[index[row]] <= constraints.max_usd_per_mtok
        if rule is SelectionRule.ARGMAX:  # the ranking the gateway fails over along starts with the pick
            ranking = rank_candidates(quality[row], price, names, constraints, caution=caution)
            assert next(c for c in ranking if c.is_feasible).expert == names[index[row]]
    zero = Caution(caution.prior, np.zeros(len(names)))
    assert np.array_equal(choose(quality, price, names, constraints, rule, caution=zero)[0], plain_index)


def shifted_corpus(rng, per_task=30):
    """Tasks come in pairs sharing one region of feature space: `cheap` wins the first of each pair (0.95) and
    fails the second (0.1); `big` scores 0.7 everywhere. Trained without a pair's second task, a router sends
    it to `cheap` on its neighbours' word and is wrong; the prior choice (`big`) is right."""
    prompts, tasks, xs, ys = [], [], [], []
    for pair in range(3):
        for second in (False, True):
            name = f"t{pair}{'b' if second else 'a'}"
            for i in range(per_task):
                prompts.append(f"{name} prompt {i}")
                tasks.append(name)
                centre = np.zeros(6)
                centre[pair] = 3.0
                xs.append(centre + 0.3 * rng.normal(size=6))
                p = [0.1 if second else 0.95, 0.1, 0.7]
                ys.append((rng.random(3) < p).astype(np.float32))
    return prompts, tasks, np.asarray(xs, np.float32), np.asarray(ys, np.float32)


@pytest.mark.parametrize("kind", [SplitKind.LEAVE_ONE_TASK_OUT, SplitKind.TASK_BALANCED])
def test_the_margin_is_chosen_on_task_held_out_inner_folds(rng, kind):
    """Whatever the outer split, the margin is chosen where tasks are held out one at a time, so the cheap wins
    that do not transfer to an unseen task earn it; with one grid value there is nothing to choose."""
    prompts, tasks, x, y = shifted_corpus(rng)
    cautious = Candidate("knn", StrategyName.KNN, {"num_neighbours": 10}, caution_margins=(0.0, 0.5))
    choice, _, _ = select_and_fit((cautious,), x, y, prompts, tasks, PRICE, kind, np.random.default_rng(0), 3)
    assert choice.caution_margin == 0.5 and choice.label.endswith("+margin0.5")
    plain = Candidate("knn", StrategyName.KNN, {"num_neighbours": 10})
    choice, _, _ = select_and_fit((plain,), x, y, prompts, tasks, PRICE, kind, np.random.default_rng(0), 3)
    assert choice.caution_margin == 0.0 and "margin" not in choice.label


def test_nested_cv_records_each_folds_margin_and_the_prior_per_row(rng):
    prompts, tasks, x, y = corpus(rng)
    candidates = (Candidate("knn", StrategyName.KNN, {"num_neighbours": 5}),
                  Candidate("knn-cautious", StrategyName.KNN, {"num_neighbours": 5}, caution_margins=(0.0, 0.05, 0.2)))
    result = nested_cross_validate(candidates, x, y, prompts, tasks, PRICE, SplitKind.TASK_BALANCED, seed=0, num_folds=3,
                                   num_inner_folds=2)
    assert set(result.cautions) == set(result.predictions)
    assert not result.cautions["knn"].margin.any()
    assert set(np.unique(result.cautions["knn-cautious"].margin)) <= {0.0, 0.05, 0.2}
    for fold in result.folds:  # the prior of a test row is its outer training part's mean, never its own fold's
        assert np.allclose(result.cautions["knn"].prior[fold.test], y[fold.train].mean(axis=0))
    per_fold = margins_per_fold(result, "knn-cautious")  # what the benchmark prints as κ per outer fold
    assert list(per_fold) == [f.name for f in result.folds] and set(per_fold.values()) <= {0.0, 0.05, 0.2}
    for fold in result.folds:
        assert np.all(result.cautions["knn-cautious"].margin[fold.test] == per_fold[fold.name])
    assert set(margins_per_fold(result, "knn").values()) == {0.0}


def test_a_gated_margin_is_kappa_times_the_models_doubt_and_off_without_a_confidence():
    assert np.allclose(gated_margin(0.3, np.array([1.0, 0.5, 0.0]), 3), [[0.0], [0.15], [0.3]])
    assert np.allclose(gated_margin(0.3, np.array([1.2, -0.1]), 2), [[0.0], [0.3]])  # clipped to [0, 1]
    assert not gated_margin(0.3, None, 4).any() and gated_margin(0.3, None, 4).shape == (4, 1)


STAGED = {"num_neighbours": 5, "epochs": 5, "format_columns": 2, "task_gate_power": 4.0}


def test_nested_cv_gates_each_rows_margin_by_the_fold_models_confidence(rng):
    """A gated candidate's margin per test row is κ · (1 − c) from the model fitted on that outer fold; the κ
    chosen per fold is reported as it is; a model without a confidence (no task stage) gets no margin."""
    prompts, tasks, x, y = corpus(rng)
    gated = Candidate("staged-gated", StrategyName.ENSEMBLE, STAGED, calibrations=(CalibrationKind.NONE,),
                      caution_margins=(0.2,), caution_by_confidence=True, group_by_task=True)
    unstaged = Candidate("knn-gated", StrategyName.KNN, {"num_neighbours": 5}, calibrations=(CalibrationKind.NONE,),
                         caution_margins=(0.2,), caution_by_confidence=True)
    result = nested_cross_validate((gated, unstaged), x, y, prompts, tasks, PRICE, SplitKind.TASK_BALANCED, seed=0,
                                   num_folds=3, num_inner_folds=2)
    margin = result.cautions["staged-gated"].margin
    assert margin.shape == (len(y), 1) and len(np.unique(margin)) > 3  # per row, not per fold
    # c = max P(task | prompt) over the 3 training tasks is at least 1/3, so κ · (1 − c) is at most 0.2 · 2/3.
    assert np.all((margin >= 0) & (margin <= 0.2 * 2 / 3 + 1e-9))
    assert set(margins_per_fold(result, "staged-gated").values()) == {0.2}
    assert not result.cautions["knn-gated"].margin.any()
    model = gated.fit(x, y, np.random.default_rng(0), tasks)
    estimate, confidence = model.predict_with_confidence(x)
    assert np.array_equal(estimate, model.predict(x)) and np.all((confidence >= 1 / 3 - 1e-6) & (confidence <= 1))


def test_a_trained_router_carries_its_margin_and_prior_through_save_and_load(tmp_path, rng):
    candidates = (Candidate("linear", StrategyName.LINEAR, {"epochs": 5}, caution_margins=(0.0, 0.3)),)
    settings_ = TrainSettings(candidates=candidates, folds=2, calibration_folds=2, cache_dir=tmp_path / "cache")
    examples = synthetic_examples(rng, 80)
    result = train_router(examples, PRICES, settings_)
    router = load_router(write_router(result, tmp_path / "router", settings_, 80, builtin_static_dir()))
    assert router.caution_margin == result.router.caution_margin in (0.0, 0.3)
    assert np.allclose(router.prior_quality, [np.mean([e.scores[n] for e in examples]) for n in router.experts])
    m = len(router.experts)  # the correlated prior's shape for online learning travels too (4 decimals)
    assert router.residual_correlation.shape == (m, m) and np.allclose(router.residual_correlation, result.router.residual_correlation, atol=1e-4)
    forced = type(router)(**{**router.__dict__, "caution_margin": 1.0})  # a margin no gain can beat
    prior_choice = router.experts[int(np.argmax(router.prior_quality))]
    assert forced.route("How long should I boil pasta?").expert == prior_choice
    meta = json.loads((tmp_path / "router" / "router.json").read_text())
    del meta["prior_quality"], meta["caution_margin"], meta["residual_correlation"]  # a router saved before these
    (tmp_path / "router" / "router.json").write_text(json.dumps(meta))
    old = load_router(tmp_path / "router")
    assert old.caution() is None and old.residual_correlation is None


@dataclasses.dataclass(frozen=True)
class FixedModel(QualityModel):
    """The same estimate for every prompt and a fixed confidence (None: a model that cannot tell)."""

    name: ClassVar[StrategyName] = StrategyName.ENSEMBLE
    quality: tuple[float, ...] = (0.75, 0.5, 0.7)
    confidence: float | None = 1.0

    def predict(self, x):
        return np.tile(np.asarray(self.quality, np.float32), (len(x), 1))

    def predict_with_confidence(self, x):
        return self.predict(x), None if self.confidence is None else np.full(len(x), self.confidence)


def gated_router(confidence: float | None) -> Router:
    """`cheap` predicted 0.75 against the prior choice `big` (prior 0.7, predicted 0.7): a gain of 0.05."""
    return Router(tuple(NAMES), PRICE, FixedModel(confidence=confidence), Calibration.identity(3),
                  StaticEmbedder(builtin_static_dir()), prior_quality=PRIOR_BIG, caution_margin=0.3,
                  caution_by_confidence=True)


PRIOR_BIG = np.array([0.4, 0.5, 0.7])


@pytest.mark.parametrize("confidence, expert", [(1.0, "cheap"), (0.9, "cheap"), (0.5, "big"), (0.0, "big"), (None, "cheap")])
def test_a_router_gated_by_confidence_applies_kappa_times_its_doubt(confidence, expert):
    """κ = 0.3: a sure model (c = 1) keeps the plain rule; at c = 0.9 the margin is 0.03 < 0.05, at c = 0.5
    0.15 > 0.05; a model without a confidence routes by the plain rule (the gate has nothing to read)."""
    router = gated_router(confidence)
    decision = router.route("Which is the capital of France?", RoutingConstraints())
    assert decision.expert == expert
    assert router.route_batch(["Which is the capital of France?"] * 2) == [expert, expert]
    cheap = next(c for c in decision.ranking if c.expert == "cheap")
    doubt = 0.0 if confidence is None else 0.3 * (1 - confidence)
    assert cheap.predicted_quality == pytest.approx(0.75)
    assert cheap.quality_for_choice == pytest.approx(0.75 - doubt)  # what the fleet-aware choice scores
    assert ("must gain" in decision.reason) == (confidence is not None and doubt > 0)


def test_the_chooser_hands_the_fleet_the_routers_judged_quality():
    config = parse_config("experts:\n" + "".join(
        f"  - id: {n}\n    backend: {{kind: simulated, time_scale: 0}}\n    usd_per_mtok_input: {p}\n"
        f"    usd_per_mtok_output: {p}\n" for n, p in zip(NAMES, PRICE)))
    choice = RouterChooser(gated_router(0.5), config.default_expert_id).choose(
        "Which is the capital of France?", RoutingParams(cost_weight=0.0), config.experts)
    assert choice.expert_id == "big"
    assert dict((e, q) for e, q, _ in choice.candidates)["cheap"] == pytest.approx(0.75 - 0.15)
    assert choice.route_info["predicted_quality"] == pytest.approx(0.7)  # the header still reports the estimate


def test_a_gated_router_keeps_its_rule_through_save_and_load(tmp_path, rng):
    candidates = (Candidate("staged", StrategyName.ENSEMBLE, STAGED, calibrations=(CalibrationKind.NONE,),
                            caution_margins=(0.3,), caution_by_confidence=True, group_by_task=True),)
    settings_ = TrainSettings(candidates=candidates, folds=2, calibration_folds=2, cache_dir=tmp_path / "cache")
    examples = synthetic_examples(rng, 80)
    result = train_router(examples, PRICES, settings_)
    router = load_router(write_router(result, tmp_path / "router", settings_, 80, builtin_static_dir()))
    assert router.caution_margin == 0.3 and router.caution_by_confidence and router.model.uses_tasks
    _, confidence = router.predict_with_confidence(router.features(["Write a python function that sorts"]))
    assert confidence is not None and router.caution(None, confidence).margin.shape == (1, 1)


class ShareAdjust:
    """An online correction that changes nothing but says how much of each estimate is still the router's."""

    def __init__(self, share):
        self.router_share = np.asarray(share, np.float64)

    def __call__(self, features, names, quality, confidence=None):
        return np.asarray(quality, np.float64)


def test_online_evidence_outweighs_the_margin_as_it_outweighs_the_estimate():
    """c = 0.5: margin 0.15 > `cheap`'s predicted gain of 0.05. With nine tenths of `cheap`'s corrected estimate
    from the tenant's feedback, the margin left is 0.015, and `cheap` wins."""
    router = gated_router(0.5)
    prompt = "Which is the capital of France?"
    assert router.route(prompt, RoutingConstraints(), adjust=ShareAdjust([1.0, 1.0, 1.0])).expert == "big"
    decision = router.route(prompt, RoutingConstraints(), adjust=ShareAdjust([0.1, 1.0, 1.0]))
    assert decision.expert == "cheap"
    assert next(c for c in decision.ranking if c.expert == "cheap").quality_for_choice == pytest.approx(0.75 - 0.015)


def test_a_router_is_evaluated_as_served_with_its_gated_rule(tmp_path):
    """`router eval` and the simulator's `--router DIR` score what `route_batch` chooses: the rule included."""
    router = gated_router(0.5)
    x = router.features(["Which is the capital of France?"] * 3)
    quality, rule, caution = router.as_served(x)
    assert np.allclose(quality, [[0.75, 0.5, 0.7]] * 3) and rule is router.model.selection_rule
    assert np.allclose(caution.margin, 0.15) and caution.margin.shape == (3, 1)
    assert choose(quality, PRICE, NAMES, RoutingConstraints(), rule, caution=caution)[0].tolist() == [2, 2, 2]
    assert gated_router(None).as_served(x)[2] is None
