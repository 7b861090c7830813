"""Matrix factorisation, RouteLLM-style, generalised from a strong/weak pair to N experts: the prompt's
features are projected into a k-dim latent space and each expert has a latent vector there; the success
logit is their dot product plus a per-expert bias. Trained with binary cross-entropy on graded scores."""

from __future__ import annotations

import dataclasses

import numpy as np

from switchboard.router.strategies.base import Adam, QualityModel, StrategyName, minibatches, sigmoid


@dataclasses.dataclass(frozen=True)
class MfModel(QualityModel):
    name = StrategyName.MF
    projection: np.ndarray  # (d, k)
    expert_vectors: np.ndarray  # (m, k)
    expert_bias: np.ndarray  # (m,)

    def predict(self, x: np.ndarray) -> np.ndarray:
        latent = np.asarray(x, np.float32) @ self.projection
        return sigmoid(latent @ self.expert_vectors.T + self.expert_bias).astype(np.float32)

    @classmethod
    def fit(cls, x, y, rng, latent_dims: int = 32, epochs: int = 40, lr: float = 2e-3, weight_decay: float = 1e-4):
        x, y = np.asarray(x, np.float32), y.astype(np.float32)
        d, m = x.shape[1], y.shape[1]
        mean = np.clip(y.mean(0), 1e-3, 1 - 1e-3)
        p = {
            "projection": rng.normal(0, 1 / np.sqrt(d), (d, latent_dims)).astype(np.float32),
            "expert_vectors": rng.normal(0, 0.1, (m, latent_dims)).astype(np.float32),
            "expert_bias": np.log(mean / (1 - mean)).astype(np.float32),
        }
        opt = Adam(p, lr, weight_decay)
        for _ in range(epochs):
            for idx in minibatches(len(x), 128, rng):
                latent = x[idx] @ p["projection"]
                dz = (sigmoid(latent @ p["expert_vectors"].T + p["expert_bias"]) - y[idx]) / len(idx)
                opt.step(
                    {
                        "expert_vectors": dz.T @ latent,
                        "expert_bias": dz.sum(0),
                        "projection": x[idx].T @ (dz @ p["expert_vectors"]),
                    }
                )
        return cls(p["projection"], p["expert_vectors"], p["expert_bias"])
