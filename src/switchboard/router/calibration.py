"""Per-expert isotonic calibration: maps a strategy's raw estimate to the expected score.

Fitted on out-of-fold raw estimates (so it corrects what the strategy gets wrong on unseen prompts) and stored
as knots; applying it is `np.interp`, with no scikit-learn at serve time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    knots_x: tuple[np.ndarray, ...]  # per expert, increasing
    knots_y: tuple[np.ndarray, ...]  # per expert, non-decreasing, in [0, 1]

    def apply(self, raw: np.ndarray) -> np.ndarray:
        raw = np.atleast_2d(raw)
        out = np.empty_like(raw, dtype=np.float32)
        for j, (kx, ky) in enumerate(zip(self.knots_x, self.knots_y)):
            out[:, j] = np.interp(raw[:, j], kx, ky)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for j, (kx, ky) in enumerate(zip(self.knots_x, self.knots_y)):
            out[f"x{j}"], out[f"y{j}"] = kx, ky
        return out

    @classmethod
    def from_arrays(cls, arrays, num_experts: int) -> "Calibration":
        return cls(
            tuple(np.asarray(arrays[f"x{j}"], np.float64) for j in range(num_experts)),
            tuple(np.asarray(arrays[f"y{j}"], np.float64) for j in range(num_experts)),
        )

    @classmethod
    def identity(cls, num_experts: int) -> "Calibration":
        knots = tuple(np.array([0.0, 1.0]) for _ in range(num_experts))
        return cls(knots, knots)


def fit_calibration(raw: np.ndarray, y: np.ndarray) -> Calibration:
    """Isotonic fit per column of `raw` (n, m) against scores `y` (n, m)."""
    from sklearn.isotonic import IsotonicRegression

    xs, ys = [], []
    for j in range(raw.shape[1]):
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw[:, j], y[:, j])
        xs.append(np.asarray(iso.X_thresholds_, np.float64))
        ys.append(np.asarray(iso.y_thresholds_, np.float64))
    return Calibration(tuple(xs), tuple(ys))
