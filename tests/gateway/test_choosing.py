"""`auto` without a router: the default expert, falling back along its configured fallbacks."""

import pytest

from switchboard.config import parse_config
from switchboard.gateway.choosing import ChoiceError, DefaultExpertChooser
from switchboard.gateway.schemas import RoutingParams

CONFIG = """
experts:
  - {id: main, backend: {kind: simulated}, fallbacks: [spare, pricey], usd_per_mtok_input: 0.1, usd_per_mtok_output: 0.1}
  - {id: spare, backend: {kind: simulated}, usd_per_mtok_input: 0.1, usd_per_mtok_output: 0.1}
  - {id: pricey, backend: {kind: simulated}, usd_per_mtok_input: 9, usd_per_mtok_output: 9}
defaults: {expert: main}
"""


def test_the_default_expert_falls_back_along_its_configured_fallbacks():
    config = parse_config(CONFIG)
    chooser = DefaultExpertChooser("main")
    choice = chooser.choose("hi", None, config.experts)
    assert (choice.expert_id, choice.fallbacks) == ("main", ("spare", "pricey"))
    # The request's own constraints bound the fallbacks too.
    cheap = chooser.choose("hi", RoutingParams(max_usd_per_mtok=1.0), config.experts)
    assert (cheap.expert_id, cheap.fallbacks) == ("main", ("spare",))
    only = chooser.choose("hi", RoutingParams(experts=["pricey"]), config.experts)
    assert (only.expert_id, only.fallbacks) == ("pricey", ())
    with pytest.raises(ChoiceError):
        chooser.choose("hi", RoutingParams(experts=["nobody"]), config.experts)
