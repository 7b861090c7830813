"""What the router reads of a conversation: the latest user turn, then a bounded slice of its context.

The router was trained on single prompts, so a one-turn conversation must give exactly that prompt (and it
does: the context is empty). With more turns, the text is the latest user turn followed by the system prompt and
the earlier user turns, newest first, cut so the context holds at most `max_context_ratio` times the latest
turn's characters (at least `min_context_chars`). Why this shape:

- the latest turn comes first because the embedder truncates long texts at the end (512 tokens): the question
  is never what gets cut;
- the context is bounded relative to the question because the embedding is a mean over tokens: a 2,000-word
  system prompt would otherwise drown a one-line question and route every request of that application alike;
- the floor lets a short follow-up ("and the next one?", "now in Python") borrow what it refers to;
- assistant turns are left out: they are the previous expert's answer, not what the user asks, and are often
  the longest part of a conversation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Turn:
    role: str  # "system" | "developer" | "user" | "assistant" | "tool"
    text: str


@dataclass(frozen=True)
class ConversationSettings:
    max_context_ratio: float = 1.0
    min_context_chars: int = 400
    max_user_turns: int = 2  # earlier user turns kept in the context, newest first
    max_system_share: float = 0.25  # of the context budget, at most this share for system prompts


CONTEXT_ROLES = frozenset({"system", "developer"})


def routing_text(turns: Sequence[Turn], settings: ConversationSettings = ConversationSettings()) -> str:
    """The text the router embeds for `turns` (oldest first). Equal to the last user turn's text when there is
    nothing else to read; the last turn of any role when no turn is a user turn."""
    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].role == "user"), None)
    if last_user is None:
        return turns[-1].text if turns else ""
    question = turns[last_user].text
    earlier_users = [t.text for t in reversed(turns[:last_user]) if t.role == "user" and t.text.strip()]
    system = [t.text for t in turns if t.role in CONTEXT_ROLES and t.text.strip()]
    if not earlier_users and not system:
        return question
    budget = max(int(settings.max_context_ratio * len(question)), settings.min_context_chars)
    system_budget = int(settings.max_system_share * budget)
    kept: list[str] = []
    for part in earlier_users[: settings.max_user_turns]:
        kept.append(part[:budget])
        budget -= len(kept[-1])
    system_budget = min(budget, system_budget)
    for part in system:
        kept.append(part[:system_budget])
        system_budget -= len(kept[-1])
    return "\n\n".join([question, *(part for part in kept if part)])
