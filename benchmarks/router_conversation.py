"""Routing on the conversation vs on the last user turn, on conversations built from the shipped prompts.

    .venv/bin/python benchmarks/router_conversation.py [--seed 0] [--folds 5] [--strategy ensemble]

The shipped routing data is single-turn, so nothing here measures real multi-turn traffic. What it can measure:
each test prompt is wrapped into four conversation shapes whose true scores are the prompt's own —

- `bare`: the prompt as the only user turn (what the router was trained on);
- `system`: a generic system prompt first (one of three, seeded: short, Llama-2's long default, a persona);
- `follow-up`: the prompt, an assistant turn, then a follow-up that does not restate it ("Please go ahead and
  answer the question above.");
- `system+follow-up`: both —

and each shape is read five ways: the last user turn only (the gateway before), `routing_text` (the
serving path now: question first, bounded context, `router.conversation`), two variants of its settings, and
every system and user turn joined without a bound. Task-balanced 5-fold CV (seed 0) with one fixed strategy per fold (no nested selection,
to keep it short): best quality over the λ grid, USD/Mtok to reach 0.563, AUC — task-balanced weights.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from switchboard.router.cache import DEFAULT_CACHE_DIR  # noqa: E402
from switchboard.router.conversation import ConversationSettings, Turn, routing_text  # noqa: E402
from switchboard.router.curves import auc, cost_to_reach, sweep  # noqa: E402
from switchboard.router.data import load_shipped  # noqa: E402
from switchboard.router.embed import StaticEmbedder  # noqa: E402
from switchboard.router.persist import builtin_static_dir  # noqa: E402
from switchboard.router.pipeline import embed_cached  # noqa: E402
from switchboard.router.protocol import SplitKind, make_folds, task_balanced_weights  # noqa: E402
from switchboard.router.router import build_features  # noqa: E402
from switchboard.router.strategies import STRATEGIES, StrategyName  # noqa: E402

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature. If a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information.",
    "You are Ada, the support assistant of a small software company. Be concise and friendly.",
)
FOLLOW_UPS = ("Please go ahead and answer the question above.", "Go on.", "Can you solve that?")
SHAPES = ("bare", "system", "follow-up", "system+follow-up")


def conversation(prompt: str, shape: str, rng: np.random.Generator) -> list[Turn]:
    turns = []
    if "system" in shape:
        turns.append(Turn("system", SYSTEM_PROMPTS[rng.integers(len(SYSTEM_PROMPTS))]))
    turns.append(Turn("user", prompt))
    if "follow-up" in shape:
        turns += [Turn("assistant", "Sure, let me look at this."), Turn("user", FOLLOW_UPS[rng.integers(len(FOLLOW_UPS))])]
    return turns


READERS = {
    "last user turn": lambda turns: next(t.text for t in reversed(turns) if t.role == "user"),
    "routing_text (serving path)": routing_text,
    "routing_text, system ≤ 1/1": lambda turns: routing_text(turns, ConversationSettings(max_system_share=1.0)),
    "routing_text, context ≥ 1000": lambda turns: routing_text(turns, ConversationSettings(min_context_chars=1000)),
    "all turns, unbounded": lambda turns: "\n\n".join(t.text for t in turns if t.role != "assistant"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--strategy", default="ensemble")
    args = parser.parse_args()
    started = time.perf_counter()
    shipped = load_shipped()
    experts, y, price = shipped.experts, shipped.scores, shipped.usd_per_mtok
    texts, tasks = shipped.texts, shipped.tasks
    embedder = StaticEmbedder(builtin_static_dir())
    x_train = build_features(embedder, texts, True, embed_cached(embedder, texts, DEFAULT_CACHE_DIR.expanduser()))
    rng = np.random.default_rng([args.seed, 7])
    views = {}  # (shape, reader) → feature rows of the routed text
    for shape in SHAPES:
        convs = [conversation(p, shape, np.random.default_rng([args.seed, i])) for i, p in enumerate(texts)]
        for reader, read in READERS.items():
            routed = [read(c) for c in convs]
            views[shape, reader] = x_train if routed == texts else build_features(embedder, routed, True)
    folds = make_folds(SplitKind.TASK_BALANCED, texts, tasks, args.folds, np.random.default_rng([args.seed, 0]))
    predicted = {key: np.zeros_like(y) for key in views}
    with threadpool_limits(limits=1):
        for fold in folds:
            model = STRATEGIES[StrategyName(args.strategy)].fit(x_train[fold.train], y[fold.train], rng)
            for key, x in views.items():
                predicted[key][fold.test] = model.predict(x[fold.test])
    weights = task_balanced_weights(tasks)
    print(f"{len(texts)} prompts, task-balanced {args.folds}-fold CV (seed {args.seed}), strategy {args.strategy} "
          f"fitted on bare prompts; scores are each prompt's own; task-balanced weights")
    print(f"{'shape':18s} {'reader':28s} {'best q':>7s} {'$@0.563':>8s} {'AUC':>7s}")
    for (shape, reader), pred in predicted.items():
        points = sweep(pred, y, price, experts, weights=weights)
        usd = cost_to_reach(points, 0.563)
        print(f"{shape:18s} {reader:28s} {max(p.quality for p in points):7.4f} "
              f"{'—' if usd is None else f'{usd:.3f}':>8s} {auc(points, price.min(), price.max()):7.4f}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
