"""Experts the router has no prediction for are offered to fleet-aware routing as stand-ins, within the
request's own constraints; they answer only while the preferred expert is far from serving."""

from __future__ import annotations

from switchboard.router.chooser import stand_ins
from switchboard.router.selection import RoutingConstraints

PRICES = {"local": (0.0, 0.0), "pricey": (2.0, 8.0)}  # (input, output) USD/Mtok: blended 0 and 5


def test_unknown_experts_are_stand_ins():
    assert stand_ins(("local", "pricey"), RoutingConstraints(), PRICES) == ("local", "pricey")


def test_the_request_constraints_still_apply():
    assert stand_ins(("local", "pricey"), RoutingConstraints(max_usd_per_mtok=1.0), PRICES) == ("local",)
    assert stand_ins(("local", "pricey"), RoutingConstraints(experts=frozenset({"pricey"})), PRICES) == ("pricey",)
    assert stand_ins(("local",), RoutingConstraints(min_quality=0.1), PRICES) == ()
