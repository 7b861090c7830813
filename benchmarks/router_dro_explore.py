"""Exploration, not a result: training across tasks, cost-sensitive choice, surface features and a task-averaged
prior, on outer folds with raw estimates (no calibration, no selection).

    .venv/bin/python benchmarks/router_dro_explore.py [--seed 0] [--splits leave-one-task-out,task-balanced]

Every estimator is fitted on each outer fold's training part and predicts its test part: a cheap look at which
of issue 13's generalisation ideas deserve the nested protocol of `router_quality.py` (docs/router.md, "Training
across tasks"). The settings below are the fixed grid tried, declared before the first run:

- `mlp-dro-t*`: Group DRO over tasks at temperature τ (`strategies.robust`); `mlp-balanced`: the same with τ =
  1000, i.e. task-balanced training, to separate the balance from the worst-case weighting;
- `mlp-vrex-b*`: V-REx at β;
- `knn-taskprior`: the kNN whose prior is each expert's mean over tasks, not over prompts;
- `mlp-surface`: the MLP with 5 more surface features (`SURFACE_FEATURES`); `mlp-format-only`: an MLP on the 12
  surface features alone, no embedding (does format transfer where content does not?); `mlp-cheap-only`: on the 7
  cheap features the served router already computes (added after seed 0, when `mlp-format-only` stood out), and
  the means of three, kNN + MLP + either;
- `cs-head`: cost-sensitive classification of the best expert at λ = 0 — a softmax over experts trained on the
  best expert(s) of each prompt, each prompt weighted by its regret range (best − worst score), so prompts where
  the choice matters dominate; its centred log-probabilities are scaled onto the centred scores by least squares
  and added to the prior to give per-expert estimates.
"""

from __future__ import annotations

import re

import numpy as np

from _explore import parse_args, screen, shipped_features
from switchboard.router.strategies.base import Adam, minibatches
from switchboard.router.strategies.knn import KnnModel
from switchboard.router.strategies.neural import MlpModel
from switchboard.router.strategies.robust import task_ids

_WH = re.compile(r"^\s*(what|which|who|whom|whose|when|where|why|how)\b", re.I)
_YES_NO = re.compile(r"^\s*(is|are|was|were|does|do|did|can|could|should|will|would|has|have)\b", re.I)
_FEW_SHOT = re.compile(r"^\s*(Q|A|Question|Answer|Input|Output)\s*:", re.M)
SURFACE_FEATURES = ("wh_question", "yes_no_question", "non_ascii_ratio", "few_shot_markers", "backslashes")


def surface_features(text: str) -> list[float]:
    n = max(len(text), 1)
    return [float(bool(_WH.search(text))), float(bool(_YES_NO.search(text))),
            sum(ord(c) > 127 for c in text) / n, min(len(_FEW_SHOT.findall(text)), 10) / 10.0,
            min(text.count("\\"), 20) / 20.0]


def _cost_sensitive_head(x, y, rng, hidden=128, epochs=40, lr=1e-3, weight_decay=1e-4):
    d, m = x.shape[1], y.shape[1]
    best = (y >= y.max(1, keepdims=True) - 1e-9).astype(np.float32)
    target = best / best.sum(1, keepdims=True)
    weight = (y.max(1) - y.min(1)).astype(np.float32)
    weight = weight / max(weight.mean(), 1e-9)
    p = {"w1": rng.normal(0, np.sqrt(2 / d), (d, hidden)).astype(np.float32), "b1": np.zeros(hidden, np.float32),
         "w2": rng.normal(0, np.sqrt(1 / hidden), (hidden, m)).astype(np.float32), "b2": np.zeros(m, np.float32)}

    def forward(xs):
        h = np.maximum(xs @ p["w1"] + p["b1"], 0)
        z = h @ p["w2"] + p["b2"]
        return h, z - z.max(1, keepdims=True)

    opt = Adam(p, lr, weight_decay)
    for _ in range(epochs):
        for idx in minibatches(len(x), 128, rng):
            h, z = forward(x[idx])
            prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            dz = (prob - target[idx]) * weight[idx, None] / len(idx)
            dh = (dz @ p["w2"].T) * (h > 0)
            opt.step({"w2": h.T @ dz, "b2": dz.sum(0), "w1": x[idx].T @ dh, "b1": dh.sum(0)})

    def centred_log_prob(xs):
        z = forward(xs)[1]
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return logp - logp.mean(1, keepdims=True)

    spread, centred = centred_log_prob(x), y - y.mean(1, keepdims=True)
    scale = float((spread * centred).sum() / (spread * spread).sum())
    prior = y.mean(0)
    return lambda xs: (prior + scale * centred_log_prob(xs)).astype(np.float32)


def fit_all(x, surface, y, groups, rng):
    """Fits every estimator on one training part; returns predict((x, surface) of test rows) → name → estimates."""
    def views(xr, sr):  # the 7 cheap features are the last columns of x
        return {"x": xr, "surface": np.concatenate([xr, sr], axis=1), "format": np.concatenate([xr[:, -7:], sr], axis=1),
                "cheap": xr[:, -7:]}

    train = views(x, surface)
    knn = KnnModel.fit(x, y, rng, 100, 4.0, 0.05)
    knn_task = KnnModel.fit(x, y, rng, 100, 4.0, 0.05, groups, prior_by_task=True)
    mlps = {"mlp": ("x", MlpModel.fit(x, y, rng))}
    for tau in (1000.0, 0.03, 0.01):
        name = "mlp-balanced" if tau == 1000.0 else f"mlp-dro-t{tau:g}"
        mlps[name] = ("x", MlpModel.fit(x, y, rng, groups=groups, task_objective="dro", task_strength=tau))
    for beta in (1.0, 10.0):
        mlps[f"mlp-vrex-b{beta:g}"] = ("x", MlpModel.fit(x, y, rng, groups=groups, task_objective="vrex",
                                                         task_strength=beta))
    mlps["mlp-surface"] = ("surface", MlpModel.fit(train["surface"], y, rng))
    mlps["mlp-format-only"] = ("format", MlpModel.fit(train["format"], y, rng))
    mlps["mlp-cheap-only"] = ("cheap", MlpModel.fit(train["cheap"], y, rng))
    cs = _cost_sensitive_head(x, y, rng)

    def predict(test):
        v = views(*test)
        k = knn.predict(v["x"])
        out = {"knn": k, "knn-taskprior": knn_task.predict(v["x"])}
        for name, (view, model) in mlps.items():
            out[name] = model.predict(v[view])
            out[f"ens:{name}"] = (k + out[name]) / 2
        out["ens3:knn+mlp+format"] = (k + out["mlp"] + out["mlp-format-only"]) / 3
        out["ens3:knn+mlp+cheap"] = (k + out["mlp"] + out["mlp-cheap-only"]) / 3
        out["ens-taskprior:mlp"] = (out["knn-taskprior"] + out["mlp"]) / 2
        out["cs-head"] = cs(v["x"])
        out["ens:cs-head"] = (k + out["cs-head"]) / 2
        return out

    return predict


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    data = shipped_features()
    surface = np.asarray([surface_features(t) for t in data.texts], np.float32)

    def fit_fold(train: np.ndarray, rng: np.random.Generator):
        groups = task_ids([data.tasks[i] for i in train])
        predict = fit_all(data.x[train], surface[train], data.y[train], groups, rng)
        return lambda test: predict((data.x[test], surface[test]))

    screen(data, args.splits, args.seed, fit_fold)


if __name__ == "__main__":
    main()
