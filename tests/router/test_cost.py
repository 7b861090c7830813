"""Cost in money: each request priced by its own prompt and predicted answer length; λ presets and their order."""

from __future__ import annotations

import json

import numpy as np
import pytest

from switchboard.router import RoutingConstraints, load_router
from switchboard.router.cost import DEFAULT_OUTPUT_TOKENS, OutputLengthModel, estimate_prompt_tokens, request_usd, request_usd_per_mtok
from switchboard.router.data import ExpertPrice, RoutingExample, parse_examples, RoutingDataError
from switchboard.router.objective import OBJECTIVE_COST_WEIGHTS, Objective, resolve_cost_weight
from switchboard.router.persist import builtin_static_dir
from switchboard.router.pipeline import TrainSettings, train_router, write_router
from switchboard.router.strategies import StrategyName


def test_a_request_is_priced_by_its_own_tokens():
    input_usd, output_usd = np.array([1.0, 4.0]), np.array([4.0, 1.0])
    prompt, out = np.array([900.0, 100.0]), np.array([[100.0, 100.0], [900.0, 900.0]])
    usd = request_usd(input_usd, output_usd, prompt, out)
    assert usd[0] == pytest.approx([(900 * 1 + 100 * 4) / 1e6, (900 * 4 + 100 * 1) / 1e6])
    per_mtok = request_usd_per_mtok(input_usd, output_usd, prompt, out)
    # A long prompt with a short answer pays mostly the input price, and the other way round.
    assert per_mtok[0].argmin() == 0 and per_mtok[1].argmin() == 1
    assert per_mtok[0, 0] == pytest.approx(1.3) and per_mtok[1, 1] == pytest.approx(1.3)
    equal = request_usd_per_mtok(np.array([0.2]), np.array([0.2]), prompt, out[:, :1])
    assert np.all(equal == 0.2)  # equal prices come back exactly


def test_output_length_model_learns_per_expert_lengths_and_respects_max_tokens(rng):
    x = rng.random((200, 3))
    tokens = np.stack([np.expm1(2 + 3 * x[:, 0]), np.full(200, 500.0), np.full(200, np.nan)], axis=1)
    model = OutputLengthModel.fit(x, tokens, ridge=1e-6)
    pred = model.predict(x)
    assert np.allclose(pred[:, 0], tokens[:, 0], rtol=1e-3) and np.allclose(pred[:, 1], 500.0)
    assert np.allclose(pred[:, 2], DEFAULT_OUTPUT_TOKENS)  # never observed: the default
    assert model.predict(x, max_tokens=50).max() <= 50
    assert np.allclose(OutputLengthModel.constant(3, 2).predict(x), DEFAULT_OUTPUT_TOKENS)


def test_training_rows_may_carry_output_tokens_and_bad_ones_are_named():
    good = parse_examples(['{"prompt": "p", "scores": {"a": 1}, "output_tokens": {"a": 12}}'])
    assert good[0].output_tokens == {"a": 12.0}
    with pytest.raises(RoutingDataError, match="<data>:1: field 'output_tokens'"):
        parse_examples(['{"prompt": "p", "scores": {"a": 1}, "output_tokens": {"a": -1}}'])


def test_a_verbose_expert_costs_more_and_the_router_knows(tmp_path, rng):
    """Same prices and same quality; one expert answers at length: with λ > 0 the terse one is chosen, and the
    route reports each request's predicted USD."""
    prices = {"terse": ExpertPrice(0.5, 2.0), "verbose": ExpertPrice(0.5, 2.0)}
    examples = [RoutingExample(f"Question number {i} about anything at all", {"terse": 1.0, "verbose": 1.0}, None,
                               {"terse": 20.0, "verbose": 2000.0}) for i in range(40)]
    settings = TrainSettings(strategy=StrategyName.KNN, calibration_folds=2, cache_dir=tmp_path / "cache")
    out = write_router(train_router(examples, prices, settings), tmp_path / "r", settings, 40, builtin_static_dir())
    router = load_router(out)
    assert router.output_length is not None
    decision = router.route("Question number 7 about anything at all", RoutingConstraints(cost_weight=1.0))
    assert decision.expert == "terse"
    assert decision.request_usd["verbose"] > 10 * decision.request_usd["terse"]
    assert "predicted_usd" in json.loads(decision.header_value())
    # Prices as (input, output) pairs from the gateway's config replace the trained ones.
    flipped = router.route("Question number 7 about anything at all", RoutingConstraints(cost_weight=1.0),
                           usd_per_mtok={"terse": (0.5, 50.0), "verbose": (0.5, 0.1)})
    assert flipped.expert == "verbose"


def test_estimated_prompt_tokens_match_the_gateway_rule():
    assert estimate_prompt_tokens("") == 1 and estimate_prompt_tokens("abcd" * 50) == 50


def test_cost_weight_precedence_request_then_objective_then_config_then_balanced():
    assert resolve_cost_weight(0.3, "cost", 0.7).cost_weight == 0.3
    assert resolve_cost_weight(None, "quality", 0.7).cost_weight == 0.0
    assert resolve_cost_weight(None, None, 0.7).source == "config"
    default = resolve_cost_weight(None, None, None)
    assert default.cost_weight == OBJECTIVE_COST_WEIGHTS[Objective.BALANCED] and default.source == "default:balanced"
    assert OBJECTIVE_COST_WEIGHTS[Objective.QUALITY] < OBJECTIVE_COST_WEIGHTS[Objective.BALANCED] < OBJECTIVE_COST_WEIGHTS[Objective.COST]
    with pytest.raises(ValueError):
        resolve_cost_weight(None, "cheapest", None)
