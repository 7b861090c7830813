"""Synthetic corpora for router tests (learnable, unrelated to the real data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from switchboard.router.data import ExpertPrice, RoutingExample

EXPERTS = ("cheap", "mid", "big")
PRICES = {"cheap": ExpertPrice(0.1, 0.1), "mid": ExpertPrice(0.2, 0.4), "big": ExpertPrice(0.9, 0.9)}


def synthetic_xy(rng: np.random.Generator, n: int = 300, d: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Features whose first coordinate decides which expert succeeds: learnable, unrelated to any real data."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    p = np.stack([1 / (1 + np.exp(-3 * x[:, 0])), 1 / (1 + np.exp(3 * x[:, 0])), np.full(n, 0.6)], axis=1)
    return x, (rng.random(p.shape) < p).astype(np.float32)


def synthetic_examples(rng: np.random.Generator, n: int = 60) -> list[RoutingExample]:
    """Prompts about code go well for `mid`, prompts about cooking for `cheap`; `big` is middling on both."""
    out = []
    for i in range(n):
        is_code = i % 2 == 0
        prompt = (
            f"Write a python function number {i} that returns the sorted list"
            if is_code
            else f"How long should I boil pasta for recipe number {i}?"
        )
        scores = {
            "cheap": float(rng.random() < (0.1 if is_code else 0.9)),
            "mid": float(rng.random() < (0.9 if is_code else 0.1)),
            "big": float(rng.random() < 0.6),
        }
        out.append(RoutingExample(prompt, scores, "code" if is_code else "cooking"))
    return out


def write_examples(path: Path, examples: list[RoutingExample]) -> Path:
    path.write_text("".join(json.dumps({"prompt": e.prompt, "scores": dict(e.scores)}) + "\n" for e in examples))
    return path


def write_models(path: Path) -> Path:
    obj = {e: {"input_price_per_mtok": p.input_usd_per_mtok, "output_price_per_mtok": p.output_usd_per_mtok} for e, p in PRICES.items()}
    path.write_text(json.dumps(obj))
    return path
