"""Properties of the shared selection rule, for both rules (argmax and cascade)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.router.selection import RoutingConstraints, SelectionRule, choose, rank_candidates

NAMES = [f"e{i}" for i in range(6)]
quality_values = st.floats(0.0, 1.0, allow_nan=False, width=32)
price_values = st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 0.9, 1.5, 3.0])
cost_weights = st.floats(0.0, 20.0, allow_nan=False)


@st.composite
def problems(draw):
    m = draw(st.integers(1, len(NAMES)))
    n = draw(st.integers(1, 5))
    quality = np.asarray(draw(st.lists(quality_values, min_size=n * m, max_size=n * m)), np.float64).reshape(n, m)
    price = np.asarray(draw(st.lists(price_values, min_size=m, max_size=m)), np.float64)
    return quality, price, NAMES[:m]


@st.composite
def constraint_sets(draw, names):
    allowed = draw(st.none() | st.frozensets(st.sampled_from(names)))
    return RoutingConstraints(
        cost_weight=draw(cost_weights),
        max_usd_per_mtok=draw(st.none() | price_values),
        min_quality=draw(st.none() | quality_values),
        experts=allowed,
    )


rules = st.sampled_from(list(SelectionRule))


@settings(max_examples=120, deadline=None)
@given(data=st.data(), rule=rules)
def test_constraints_always_respected(data, rule):
    quality, price, names = data.draw(problems())
    constraints = data.draw(constraint_sets(names))
    index, is_feasible = choose(quality, price, names, constraints, rule)
    for row, (j, ok) in enumerate(zip(index, is_feasible)):
        if not ok:
            continue
        assert constraints.experts is None or names[j] in constraints.experts
        assert constraints.max_usd_per_mtok is None or price[j] <= constraints.max_usd_per_mtok
        assert constraints.min_quality is None or quality[row, j] >= constraints.min_quality


@settings(max_examples=120, deadline=None)
@given(data=st.data(), rule=rules)
def test_infeasible_only_when_nothing_passes(data, rule):
    quality, price, names = data.draw(problems())
    constraints = data.draw(constraint_sets(names))
    _, is_feasible = choose(quality, price, names, constraints, rule)
    for row, ok in enumerate(is_feasible):
        any_pass = any(
            (constraints.experts is None or names[j] in constraints.experts)
            and (constraints.max_usd_per_mtok is None or price[j] <= constraints.max_usd_per_mtok)
            and (constraints.min_quality is None or quality[row, j] >= constraints.min_quality)
            for j in range(len(names))
        )
        assert ok == any_pass


@settings(max_examples=120, deadline=None)
@given(data=st.data(), rule=rules)
def test_zero_cost_weight_picks_max_quality(data, rule):
    quality, price, names = data.draw(problems())
    index, is_feasible = choose(quality, price, names, RoutingConstraints(cost_weight=0.0), rule)
    assert is_feasible.all()
    assert np.array_equal(quality[np.arange(len(index)), index], quality.max(axis=1))


@settings(max_examples=120, deadline=None)
@given(data=st.data(), rule=rules, low=cost_weights, extra=st.floats(0.0, 20.0, allow_nan=False))
def test_larger_cost_weight_never_picks_pricier(data, rule, low, extra):
    quality, price, names = data.draw(problems())
    base = data.draw(constraint_sets(names))
    lo = RoutingConstraints(low, base.max_usd_per_mtok, base.min_quality, base.experts)
    hi = RoutingConstraints(low + extra, base.max_usd_per_mtok, base.min_quality, base.experts)
    i_lo, ok_lo = choose(quality, price, names, lo, rule)
    i_hi, ok_hi = choose(quality, price, names, hi, rule)
    assert np.array_equal(ok_lo, ok_hi)
    assert np.all(price[i_hi][ok_hi] <= price[i_lo][ok_lo])


def test_ties_go_to_the_cheaper_expert():
    index, _ = choose(np.array([[0.5, 0.5]]), np.array([0.9, 0.1]), ["a", "b"], RoutingConstraints())
    assert index[0] == 1


def test_cascade_stops_at_first_good_enough_rung():
    # utilities at λ=0.2: 0.48, 0.66, 0.62 → argmax picks the 0.2 expert; so does the cascade here.
    quality, price = np.array([[0.5, 0.7, 0.8]]), np.array([0.1, 0.2, 0.9])
    for rule in SelectionRule:
        assert choose(quality, price, ["a", "b", "c"], RoutingConstraints(cost_weight=0.2), rule)[0][0] == 1
    # The cascade takes the cheapest expert that beats the best-quality one net of cost (a), argmax the best (b).
    quality = np.array([[0.65, 0.80, 0.81]])
    lam = RoutingConstraints(cost_weight=0.3)
    assert choose(quality, price, ["a", "b", "c"], lam, SelectionRule.CASCADE)[0][0] == 0
    assert choose(quality, price, ["a", "b", "c"], lam, SelectionRule.ARGMAX)[0][0] == 1


def test_rank_lists_feasible_first_by_utility():
    ranking = rank_candidates(
        np.array([0.9, 0.5, 0.7]), np.array([0.9, 0.1, 0.2]), ["big", "cheap", "mid"], RoutingConstraints(0.1, max_usd_per_mtok=0.5)
    )
    assert [c.expert for c in ranking] == ["mid", "cheap", "big"]
    assert [c.is_feasible for c in ranking] == [True, True, False]


@pytest.mark.parametrize(
    "kwargs", [{"cost_weight": -1.0}, {"cost_weight": float("nan")}, {"max_usd_per_mtok": -0.1}, {"min_quality": 1.5}]
)
def test_bad_constraints_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RoutingConstraints(**kwargs)
