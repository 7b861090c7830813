"""The layer shape of a decoder-only model, which the roofline needs beyond its parameter count.

Attention's FLOPs grow with layers × hidden size, the per-token activation traffic of the unfused element-wise
kernels (norms, rotary embedding, SwiGLU, residual adds) with layers × (hidden + intermediate) size, and kernel
launches with the number of layers. When only a size is known, `llama_shape` interpolates the Llama 3 family.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True, slots=True)
class ModelShape:
    """Layers and widths of a Llama-style decoder. All positive (ValueError otherwise)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "intermediate_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelShape.{name} must be >= 1, got {getattr(self, name)!r}")


# (billions of parameters, layers, hidden, intermediate) of Llama 3.2 1B / 3B, Llama 3.1 8B / 70B / 405B
# (their Hugging Face config.json files).
_LLAMA3 = (
    (1.24, 16, 2048, 8192),
    (3.21, 28, 3072, 8192),
    (8.03, 32, 4096, 14336),
    (70.6, 80, 8192, 28672),
    (405.9, 126, 16384, 53248),
)


def llama_shape(params_b: float) -> ModelShape:
    """The shape of a `params_b`-billion-parameter Llama-3-like model: each dimension interpolated log-log between
    the family's sizes, held at the end sizes outside 1.24B–406B. Non-decreasing in `params_b`.

    Raises ValueError for params_b <= 0.
    """
    if params_b <= 0:
        raise ValueError(f"params_b must be > 0, got {params_b}")
    sizes = [row[0] for row in _LLAMA3]
    x = min(max(params_b, sizes[0]), sizes[-1])
    i = next(i for i in range(len(sizes) - 1) if x <= sizes[i + 1])
    t = (math.log(x) - math.log(sizes[i])) / (math.log(sizes[i + 1]) - math.log(sizes[i]))
    lo, hi = _LLAMA3[i], _LLAMA3[i + 1]
    dims = [round(math.exp((1 - t) * math.log(a) + t * math.log(b))) for a, b in zip(lo[1:], hi[1:])]
    return ModelShape(*dims)
