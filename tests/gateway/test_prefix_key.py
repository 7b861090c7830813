"""Prefix-affinity keys are the same in every gateway process (a keyed BLAKE2b, not the salted `hash()`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from switchboard.config import ConfigError, parse_config
from switchboard.gateway import requests as rq
from switchboard.gateway.affinity import chat_prefix_key, prefix_key

CONVERSATION = {"model": "auto", "messages": [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Summarise the plot of Hamlet."},
    {"role": "assistant", "content": "A prince avenges his father."},
    {"role": "user", "content": "Shorter."},
]}

# What a gateway process computes for CONVERSATION: the key its handler uses, and the old salted hash.
KEY_IN_A_PROCESS = """
import json, sys
from switchboard.config import parse_config
from switchboard.gateway import requests as rq
from switchboard.gateway.affinity import chat_prefix_key
config = parse_config("experts: [{id: a, backend: {kind: simulated}}]")
parsed, _ = rq.parse_chat(sys.stdin.read().encode())
opening = tuple(m.content[:512] for m in parsed.messages[:2])
print(json.dumps({"key": chat_prefix_key(parsed, config.gateway.prefix_key_secret.encode()), "salted": str(hash(opening))}))
"""


def key_in_process(hash_seed: int) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    done = subprocess.run([sys.executable, "-c", KEY_IN_A_PROCESS], input=json.dumps(CONVERSATION), env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def test_two_gateway_processes_agree_on_a_conversations_key():
    first, second = key_in_process(1), key_in_process(2)
    assert first["salted"] != second["salted"]  # what the key used to be: each process salts it differently
    assert first["key"] == second["key"] and len(first["key"]) == 32
    secret = parse_config("experts: [{id: a, backend: {kind: simulated}}]").gateway.prefix_key_secret.encode()
    assert chat_prefix_key(rq.parse_chat(json.dumps(CONVERSATION).encode())[0], secret) == first["key"]


def test_the_key_names_the_opening_under_the_configured_secret():
    secret = b"fleet-a"
    key = prefix_key(["You are a terse assistant.", "Summarise the plot of Hamlet."], secret)
    assert prefix_key(["You are a terse assistant.", "Summarise the plot of Hamlet."], b"fleet-b") != key
    assert prefix_key(["You are a terse assistant.", "Summarise the plot of Macbeth."], secret) != key
    assert prefix_key(["ab", "c"], secret) != prefix_key(["a", "bc"], secret)  # message boundaries count
    assert prefix_key(["x" * 512 + "tail one"], secret) == prefix_key(["x" * 512 + "tail two"], secret)
    assert prefix_key([], secret) == ""
    # Only the opening counts: later turns of the same conversation keep its key (and its replica).
    longer = dict(CONVERSATION, messages=CONVERSATION["messages"] + [{"role": "user", "content": "Even shorter."}])
    assert chat_prefix_key(rq.parse_chat(json.dumps(longer).encode())[0], secret) == \
        chat_prefix_key(rq.parse_chat(json.dumps(CONVERSATION).encode())[0], secret)


@pytest.mark.parametrize("secret", ["", "k" * 65, "clé"])
def test_a_secret_blake2b_cannot_take_is_refused_with_the_field_named(secret):
    with pytest.raises(ConfigError, match="prefix_key_secret"):
        parse_config(f"experts: [{{id: a, backend: {{kind: simulated}}}}]\ngateway: {{prefix_key_secret: '{secret}'}}")


def test_a_prompt_cache_key_names_the_prefix_instead_of_the_opening():
    secret = b"s"

    def key(body):
        parsed, _ = rq.parse_chat(json.dumps(body).encode())
        return chat_prefix_key(parsed, secret)

    other_opening = {**CONVERSATION, "messages": [{"role": "system", "content": "Today is Monday."}, *CONVERSATION["messages"][1:]]}
    assert key(CONVERSATION) != key(other_opening)
    # The client says the two share their prefix (the varying line aside): one key, so one replica.
    assert key({**CONVERSATION, "prompt_cache_key": "hamlet"}) == key({**other_opening, "prompt_cache_key": "hamlet"})
    assert key({**CONVERSATION, "prompt_cache_key": "hamlet"}) != key({**CONVERSATION, "prompt_cache_key": "lear"})
    assert key({**CONVERSATION, "prompt_cache_key": "hamlet"}) != key(CONVERSATION)
    assert key({**CONVERSATION, "prompt_cache_key": ""}) == key(CONVERSATION)  # empty: no key given
