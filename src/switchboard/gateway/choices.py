"""`n` > 1 on engines that answer one choice per request (llama.cpp, simulated): n generations on one lease,
one after another, merged into one answer whose choices are indexed 0..n-1, as OpenAI's. `openai` experts get
`n` passed through instead (their upstream makes the choices).

Each later generation gets `seed + i` when the client gave a seed, so the choices differ yet reproduce; usage
counts the prompt once and every choice's completion tokens, as OpenAI's does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from switchboard.engines.base import Completion, Finish, GenerationRequest, StreamEvent, TextDelta, Usage


def num_choices(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 1 else 1


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    seed = request.body.get("seed")
    if not isinstance(seed, int):
        return [request] * n
    return [request] + [dataclasses.replace(request, body={**request.body, "seed": seed + i}) for i in range(1, n)]


def _total(usages: list[Usage]) -> Usage:
    return Usage(usages[0].prompt_tokens, sum(u.completion_tokens for u in usages), usages[0].cached_prompt_tokens)


async def complete_choices(lease: Any, requests: list[GenerationRequest]) -> Completion:
    """The n whole answers as one Completion (choice 0 first, the rest in `more_choices`)."""
    completions = [await lease.complete(r) for r in requests]
    first = completions[0]
    return dataclasses.replace(first, finish=Finish(first.finish.reason, _total([c.finish.usage for c in completions])),
                               more_choices=tuple(completions[1:]))


async def stream_choices(lease: Any, requests: list[GenerationRequest]) -> AsyncIterator[StreamEvent]:
    """The n streams one after another, each event tagged with its choice's index; every choice ends with its
    own Finish, the last one's usage covering all."""
    usages: list[Usage] = []
    last = len(requests) - 1
    for index, request in enumerate(requests):
        async for event in lease.stream(request):
            if isinstance(event, TextDelta):
                yield dataclasses.replace(event, index=index)
            elif isinstance(event, Finish):
                usages.append(event.usage)
                yield Finish(event.reason, _total(usages) if index == last else event.usage, index=index)
