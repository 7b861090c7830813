"""What a request costs, per expert, in money: input price × prompt tokens + output price × predicted output tokens.

The router trades quality against **the request's own USD per Mtok**: its predicted cost in USD divided by its
predicted tokens (prompt + output), in millions. λ (`cost_weight`) is therefore "quality per USD per Mtok" as
before, but the price is this request's: a long prompt with a short answer pays mostly the input price, a short
question with a long answer mostly the output price. With equal input and output prices (the shipped data) it
is the plain price. `request_usd` is the money itself (reported in `x-switchboard-route`).

Output tokens are predicted per expert (`OutputLengthModel`: one ridge regression per expert on log tokens,
from the router's cheap prompt features), fitted from training rows that carry `output_tokens`; the shipped
data has none, so the packaged router predicts a constant: 129 tokens, the median answer length of the Azure
LLM conversation trace (Patel et al., Splitwise, 2024), capped by the request's `max_tokens` where known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_OUTPUT_TOKENS = 129.0
"""Median GeneratedTokens of the Azure LLM conversation trace (data/traces/azure_llm_2023_conv.csv)."""

CHARS_PER_TOKEN = 4
"""The gateway's token estimate (gateway/requests.py): no tokeniser call on the routing path."""


def estimate_prompt_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


@dataclass(frozen=True)
class OutputLengthModel:
    """Per-expert predicted output tokens: exp(features · weights[:, j] + bias[j]) − 1, at least 1."""

    weights: np.ndarray  # (d, m)
    bias: np.ndarray  # (m,)

    def predict(self, features: np.ndarray, max_tokens: int | None = None) -> np.ndarray:
        """(n, m) predicted output tokens for (n, d) cheap features; never above `max_tokens` when given."""
        tokens = np.expm1(np.asarray(features, np.float64) @ self.weights + self.bias)
        tokens = np.maximum(tokens, 1.0)
        return np.minimum(tokens, float(max_tokens)) if max_tokens is not None else tokens

    @classmethod
    def constant(cls, num_features: int, num_experts: int, tokens: float = DEFAULT_OUTPUT_TOKENS) -> "OutputLengthModel":
        return cls(np.zeros((num_features, num_experts)), np.full(num_experts, math.log1p(tokens)))

    @classmethod
    def fit(cls, features: np.ndarray, tokens: np.ndarray, ridge: float = 1.0) -> "OutputLengthModel":
        """Ridge regression of log1p(tokens) per expert; NaN marks a missing observation. An expert with no
        observation gets the constant default."""
        x = np.asarray(features, np.float64)
        tokens = np.asarray(tokens, np.float64)
        d, m = x.shape[1], tokens.shape[1]
        weights, bias = np.zeros((d, m)), np.full(m, math.log1p(DEFAULT_OUTPUT_TOKENS))
        for j in range(m):
            seen = np.isfinite(tokens[:, j])
            if not seen.any():
                continue
            target = np.log1p(np.maximum(tokens[seen, j], 0.0))
            xs = x[seen]
            mean_x, mean_t = xs.mean(axis=0), target.mean()
            xc = xs - mean_x
            weights[:, j] = np.linalg.solve(xc.T @ xc + ridge * np.eye(d), xc.T @ (target - mean_t))
            bias[j] = mean_t - mean_x @ weights[:, j]
        return cls(weights, bias)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "bias": self.bias}

    @classmethod
    def from_arrays(cls, arrays) -> "OutputLengthModel":
        return cls(np.asarray(arrays["weights"], np.float64), np.asarray(arrays["bias"], np.float64))


def request_usd(input_usd_per_mtok: np.ndarray, output_usd_per_mtok: np.ndarray, prompt_tokens: np.ndarray,
                output_tokens: np.ndarray) -> np.ndarray:
    """(n, m) USD of each request on each expert; prices (m,), prompt tokens (n,), output tokens (n, m)."""
    prompt = np.asarray(prompt_tokens, np.float64)[:, None]
    return (np.asarray(input_usd_per_mtok) * prompt + np.asarray(output_usd_per_mtok) * output_tokens) / 1e6


def request_usd_per_mtok(input_usd_per_mtok: np.ndarray, output_usd_per_mtok: np.ndarray, prompt_tokens: np.ndarray,
                         output_tokens: np.ndarray) -> np.ndarray:
    """(n, m) each request's own USD per million of its tokens (prompt + predicted output): what λ multiplies."""
    prompt = np.asarray(prompt_tokens, np.float64)[:, None]
    output_share = output_tokens / np.maximum(prompt + output_tokens, 1e-9)
    input_usd = np.asarray(input_usd_per_mtok, np.float64)
    # Written as input + (output − input) · share so equal prices come back exactly as they were.
    return input_usd + (np.asarray(output_usd_per_mtok, np.float64) - input_usd) * output_share
