"""`n` > 1, and several prompts of a legacy completion, on engines that answer one choice per request (llama.cpp,
simulated): one generation per prompt and choice on one lease, one after another, merged into one answer whose
choices are indexed as OpenAI's — prompt i's n choices at i·n … i·n + n − 1. `openai` and `process` experts get
`n` and the prompt list passed through instead (their server makes the choices).

Each later choice of a prompt gets `seed + j` when the client gave a seed, so the choices differ yet reproduce;
usage counts each prompt once and every choice's completion tokens, as OpenAI's does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from switchboard.engines.base import Completion, Finish, GenerationRequest, StreamEvent, TextDelta, Usage
from switchboard.gateway.requests import estimate_tokens


def num_choices(body: dict[str, Any]) -> int:
    """Choices per prompt (`n`)."""
    n = body.get("n")
    return n if isinstance(n, int) and n > 1 else 1


def prompts(body: dict[str, Any]) -> list[str] | list[list[int]] | None:
    """A legacy completion's prompts when it has several (strings, or token-id lists), else None (one prompt, or a
    chat)."""
    prompt = body.get("prompt")
    is_several = isinstance(prompt, list) and len(prompt) > 1 and (all(isinstance(p, str) for p in prompt) or all(isinstance(p, list) for p in prompt))
    return prompt if is_several else None  # type: ignore[return-value]


def num_generations(body: dict[str, Any]) -> int:
    """The generations a one-choice engine makes for `body`: prompts × n."""
    return len(prompts(body) or [None]) * num_choices(body)


def choice_requests(request: GenerationRequest) -> list[GenerationRequest]:
    """One request per prompt and choice, in choice-index order (each prompt alone in its body, with its own
    token estimate)."""
    n = num_choices(request.body)
    several = prompts(request.body)
    bodies = [request.body] if several is None else [{**request.body, "prompt": p} for p in several]
    seed = request.body.get("seed")
    out = []
    for body in bodies:
        one_prompt = body["prompt"] if several is not None else None
        estimate = (request.num_prompt_tokens_estimate if one_prompt is None
                    else estimate_tokens(one_prompt) if isinstance(one_prompt, str) else len(one_prompt))  # token ids: their count
        one = dataclasses.replace(request, body=body, num_prompt_tokens_estimate=estimate)
        out.append(one)
        for j in range(1, n):
            out.append(one if not isinstance(seed, int) else dataclasses.replace(one, body={**body, "seed": seed + j}))
    return out


def _total(usages: list[Usage], n: int) -> Usage:
    """One usage for the choices so far: each prompt's tokens once (the first of its n choices), every choice's
    completion tokens."""
    firsts = usages[::n]
    cached = [u.cached_prompt_tokens for u in firsts]
    return Usage(sum(u.prompt_tokens for u in firsts), sum(u.completion_tokens for u in usages),
                 None if None in cached else sum(cached))  # type: ignore[arg-type]


async def complete_choices(lease: Any, requests: list[GenerationRequest], n: int) -> Completion:
    """The whole answers as one Completion (choice 0 first, the rest in `more_choices`); `n` choices a prompt."""
    completions = [await lease.complete(r) for r in requests]
    first = completions[0]
    return dataclasses.replace(first, finish=Finish(first.finish.reason, _total([c.finish.usage for c in completions], n)),
                               more_choices=tuple(completions[1:]))


async def stream_choices(lease: Any, requests: list[GenerationRequest], n: int) -> AsyncIterator[StreamEvent]:
    """The streams one after another, each event tagged with its choice's index; every choice ends with its
    own Finish, the last one's usage covering all (`n` choices a prompt)."""
    usages: list[Usage] = []
    last = len(requests) - 1
    for index, request in enumerate(requests):
        async for event in lease.stream(request):
            if isinstance(event, TextDelta):
                yield dataclasses.replace(event, index=index)
            elif isinstance(event, Finish):
                usages.append(event.usage)
                yield Finish(event.reason, _total(usages, n) if index == last else event.usage, index=index)
