"""The prefix-affinity key of a chat request (docs/ray.md, "Stable prefix keys").

The key names the conversation's opening (system prompt and first user turn), so the balance policy's
rendezvous hash keeps a conversation on the replica that already holds its prefix in its KV cache (the
prefix-aware placement of Mooncake and SGLang's router). It is a keyed BLAKE2b, not Python's `hash()`: that is
salted per process, so two gateway processes would send the same conversation to different replicas. The key
comes from the config (`gateway.prefix_key_secret`), which every gateway of a fleet shares, and keeps clients
from crafting openings that all land on one replica.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

OPENING_MESSAGES = 2
OPENING_CHARS = 512
"""Of each opening message, only the first characters count: they decide the shared prefix, and hashing stays O(1)."""


def prefix_key(opening: Sequence[str], secret: bytes) -> str:
    """The stable key of a conversation opening ("" for none): equal openings give equal keys in every process
    that shares `secret` (at most 64 bytes, BLAKE2b's key size)."""
    if not opening:
        return ""
    digest = hashlib.blake2b(key=secret, digest_size=16)
    for text in opening:
        piece = text[:OPENING_CHARS].encode()
        digest.update(len(piece).to_bytes(4, "little"))  # length-prefixed: ("ab", "c") and ("a", "bc") differ
        digest.update(piece)
    return digest.hexdigest()


def chat_prefix_key(parsed: Any, secret: bytes) -> str:
    """`prefix_key` of a parsed chat request: its `prompt_cache_key` when it sends one (OpenAI's hint that
    requests sharing it share a prefix: the client knows better than the first messages do, e.g. a long tool list
    or document that comes after a varying system line), else its first messages with text content."""
    cache_key = getattr(parsed, "prompt_cache_key", None)
    if cache_key:
        return prefix_key(["\x00prompt_cache_key", cache_key], secret)  # apart from every opening's key
    return prefix_key([m.content for m in parsed.messages[:OPENING_MESSAGES] if isinstance(m.content, str)], secret)
