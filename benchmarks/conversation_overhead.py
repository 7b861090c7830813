"""What keeping a conversation on the server costs per turn: the same 10-turn conversations through one gateway,
each turn a Response, its history carried three ways —

    stateless     the client sends the whole history as `input` each turn (`store: false`): the baseline
    previous      each turn names the last one's `previous_response_id` (one stored Response read and one written)
    conversation  each turn names a `conversation` (its items read, the turn's items appended; made before turn 1)

A fast mock upstream answers every turn; the gateway (`switchboard serve`, the default request log on SQLite in a
scratch directory) does the rest. Variants take turns conversation by conversation (ABBA order) so drift on this
2-core machine hits each alike; each turn is timed at the client (the official openai client, one connection).
Reported per variant: p50 and p90 turn latency, the p50 at turn 1 and at turn 10 (the history's growth), and the
p50's difference from the baseline's.

Run: .venv/bin/python benchmarks/conversation_overhead.py [--conversations 12] [--turns 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import openai

sys.path.insert(0, os.path.dirname(__file__))
from _mock_gateway import storing_mock_gateway  # noqa: E402

VARIANTS = ("stateless", "previous", "conversation")


def one_conversation(client: openai.OpenAI, variant: str, num_turns: int) -> list[float]:
    """Each turn's latency in seconds (the conversation's creation, for `conversation`, is not counted)."""
    history: list[dict] = []
    previous: str | None = None
    conversation = client.conversations.create().id if variant == "conversation" else None
    took = []
    for turn in range(num_turns):
        question = {"role": "user", "content": f"Question {turn}: what happens next in the story?"}
        kwargs: dict = {"model": "fast", "max_output_tokens": 16}
        if variant == "stateless":
            kwargs.update(input=[*history, question], store=False)
        elif variant == "previous":
            kwargs.update(input=[question], **({"previous_response_id": previous} if previous else {}))
        else:
            kwargs.update(input=[question], conversation=conversation)
        started = time.perf_counter()
        answer = client.responses.create(**kwargs)
        took.append(time.perf_counter() - started)
        previous = answer.id
        history += [question, {"role": "assistant", "content": answer.output_text}]
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=12, help="per variant")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    turns: dict[str, list[list[float]]] = {v: [] for v in VARIANTS}
    with storing_mock_gateway() as port, openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0) as client:
        for variant in VARIANTS:  # warm-up: connections, first writes, code paths
            one_conversation(client, variant, 2)
        for i in range(args.conversations):
            for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):
                turns[variant].append(one_conversation(client, variant, args.turns))

    def ms(values: list[float]) -> float:
        return statistics.median(values) * 1000

    base = ms([t for c in turns["stateless"] for t in c])
    print(f"conversation overhead: {args.conversations} conversations of {args.turns} turns per variant, ABBA, load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"{'variant':<13} {'p50 ms':>7} {'p90 ms':>7} {'turn 1 p50':>11} {f'turn {args.turns} p50':>12} {'p50 − stateless':>16}")
    for variant in VARIANTS:
        every = [t for c in turns[variant] for t in c]
        p90 = statistics.quantiles(every, n=10)[-1] * 1000
        print(f"{variant:<13} {ms(every):>7.2f} {p90:>7.2f} {ms([c[0] for c in turns[variant]]):>11.2f} "
              f"{ms([c[-1] for c in turns[variant]]):>12.2f} {ms(every) - base:>+16.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(turns, fh)


if __name__ == "__main__":
    main()
