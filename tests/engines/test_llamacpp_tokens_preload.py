"""The gateway loads its llama.cpp prompt counters when it starts, not on the first request to each expert."""

from __future__ import annotations

import asyncio

import pytest

from switchboard.config import parse_config
from switchboard.engines.llamacpp.tokens import PromptTokens

CONFIG = """
experts:
  - id: smol
    backend: {kind: llamacpp}
  - id: sim
    backend: {kind: simulated}
"""


@pytest.mark.llamacpp
async def test_preload_loads_only_the_llamacpp_experts_counters_in_the_background():
    experts = parse_config(CONFIG).experts
    tokens = PromptTokens()
    tokens.preload(experts)
    assert tokens.expert_ids == {"smol"}  # started before any request
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    assert await asyncio.wait_for(tokens.count("chat", body, experts[0], estimate=1), timeout=60) > 1
    assert await tokens.count("chat", body, experts[1], estimate=7) == 7
