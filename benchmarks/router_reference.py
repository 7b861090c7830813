"""Which of our CV columns predicts the owners' held-out set? Issue 13's three reference routers, rebuilt and
scored under our three splits.

    .venv/bin/python benchmarks/router_reference.py [--seeds 0,1,2] [--folds 5] [--out results.json]

Issue 13 gives held-out numbers (500 prompts, the same 9 experts, a task mix in which rare tasks are as common
as any other) for three simple routers (`HELD_OUT`). Each is rebuilt here as the issue describes it and scored
with the protocol of `router_quality.py` (`report.run_splits`: the same outer folds per seed, leak-checked, the
fixed λ grid of `curves.DEFAULT_COST_WEIGHTS`, best quality and mean USD/Mtok to reach 0.563). They are fixed
routers, with nothing to choose, so the nested CV fits each once per outer fold (`nested._is_fixed`):

- `old-mlp-static`: the router `switchboard router train` shipped when the issue was filed (git 1b6ea8b^): the
  MLP (128 hidden, 40 epochs) on the static table + the 7 cheap features, isotonic calibration fitted on its
  out-of-fold estimates from 3 random inner folds (`training.fit_calibrated`, unchanged since).
- `knn100-minilm`: kNN, k = 100, cosine, every neighbour weighing the same, no prior, on the full
  all-MiniLM-L6-v2 embeddings (onnxruntime fp32, mean-pooled and normalised, as `router_quality.py
  --features onnx-fp32`; docs/embeddings.md found it equal to sentence-transformers).
- `logreg-minilm`: scikit-learn `LogisticRegression()` (defaults: L2, C = 1, lbfgs) per expert on the same
  embeddings, the score ≥ 0.5 as the label, `predict_proba` as the estimate.

Then, per column (LOTO, task-balanced, random and means of columns), how well it reproduces the held-out set:
the order of the three routers (concordant pairs of 3) and the gaps (after one additive offset per column:
the RMS residual of best quality, and of log USD/Mtok). Three routers are three points: evidence, not proof.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from router_quality import embeddings
from switchboard.router.data import load_shipped
from switchboard.router.features import cheap_feature_matrix
from switchboard.router.nested import CalibrationKind, Candidate
from switchboard.router.protocol import SPLIT_ORDER, SplitKind
from switchboard.router.report import run_splits
from switchboard.router.strategies import StrategyName
from switchboard.router.training import fit_calibrated

TARGET_QUALITY = 0.563
HELD_OUT: dict[str, tuple[float, float]] = {
    "old-mlp-static": (0.568, 0.642),
    "knn100-minilm": (0.611, 0.147),
    "logreg-minilm": (0.586, 0.22),
}
"""Issue 13, the owners' held-out set: best quality over the λ sweep, USD/Mtok to reach 0.563."""

MIXES: dict[str, tuple[SplitKind, ...]] = {
    "mean(LOTO, task-balanced)": (SplitKind.LEAVE_ONE_TASK_OUT, SplitKind.TASK_BALANCED),
    "mean(all three)": SPLIT_ORDER,
}


@dataclass(frozen=True)
class _Fitted:
    predict: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ReferenceCandidate(Candidate):
    """A fixed router with its own fit (`fit_fn(x, y, rng)` → an object with `predict`)."""

    fit_fn: Callable[..., object] | None = None

    def fit(self, x, y, rng, tasks=None):
        return self.fit_fn(x, y, rng)


def fit_old_mlp(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Fitted:
    model, calibration = fit_calibrated(StrategyName.MLP, x, y, rng, calibration_folds=3)
    return _Fitted(lambda rows: calibration.apply(model.predict(rows)))


def fit_logreg(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> _Fitted:
    from sklearn.linear_model import LogisticRegression

    labels = y >= 0.5
    models = [LogisticRegression(max_iter=1000).fit(x, labels[:, j]) if 0 < labels[:, j].sum() < len(y)
              else float(labels[:, j].mean()) for j in range(y.shape[1])]
    return _Fitted(lambda rows: np.stack([m.predict_proba(rows)[:, 1] if not isinstance(m, float)
                                          else np.full(len(rows), m) for m in models], axis=1).astype(np.float32))


def references() -> dict[str, Candidate]:
    fixed = {"calibrations": (CalibrationKind.NONE,)}
    return {
        "old-mlp-static": ReferenceCandidate("old-mlp-static", StrategyName.MLP, fit_fn=fit_old_mlp, **fixed),
        "knn100-minilm": Candidate("knn100-minilm", StrategyName.KNN,
                                   {"num_neighbours": 100, "prior_weight": 0.0, "temperature": 0.0}, **fixed),
        "logreg-minilm": ReferenceCandidate("logreg-minilm", StrategyName.LINEAR, fit_fn=fit_logreg, **fixed),
    }


def _concordant(a: list[float], b: list[float]) -> int:
    return sum((a[i] - a[j]) * (b[i] - b[j]) > 0 for i, j in itertools.combinations(range(len(a)), 2))


def agreement(column: dict[str, tuple[float, float | None]]) -> str:
    """One line: how `column` (router → (best q, $@0.563)) reproduces `HELD_OUT`'s order and gaps."""
    names = list(HELD_OUT)
    held_q = np.array([HELD_OUT[n][0] for n in names])
    q = np.array([column[n][0] for n in names])
    offset_q = float(np.mean(held_q - q))
    rms_q = float(np.sqrt(np.mean((held_q - q - offset_q) ** 2)))
    line = (f"best q {' '.join(f'{v:.4f}' for v in q)}; order {_concordant(list(q), list(held_q))}/3, "
            f"offset {offset_q:+.4f}, gap residual {rms_q:.4f}")
    usd = [column[n][1] for n in names]
    if any(u is None for u in usd):
        return line + f"; $@{TARGET_QUALITY} " + " ".join("—" if u is None else f"{u:.3f}" for u in usd)
    held_log, log = np.log([HELD_OUT[n][1] for n in names]), np.log(usd)
    offset_log = float(np.mean(held_log - log))
    rms_log = float(np.sqrt(np.mean((held_log - log - offset_log) ** 2)))
    return line + (f" | $@{TARGET_QUALITY} {' '.join(f'{u:.3f}' for u in usd)}; order "
                   f"{_concordant(list(usd), [HELD_OUT[n][1] for n in names])}/3, ×{np.exp(offset_log):.2f}, "
                   f"log residual {rms_log:.3f}")


def columns(results: dict) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Per column (each split, then `MIXES`): router → (best q, $@0.563), means over the seeds in `results`
    (results[seed][split][router] = [best q, $ or None]); a $ is None if any seed's is."""
    seeds = list(results)
    out = {}
    for kind in SPLIT_ORDER:
        out[kind.value] = {}
        for name in HELD_OUT:
            cells = [results[s][kind.value][name] for s in seeds]
            usd = None if any(c[1] is None for c in cells) else float(np.mean([c[1] for c in cells]))
            out[kind.value][name] = (float(np.mean([c[0] for c in cells])), usd)
    for label, kinds in MIXES.items():
        out[label] = {}
        for name in HELD_OUT:
            cells = [out[k.value][name] for k in kinds]
            usd = None if any(c[1] is None for c in cells) else float(np.exp(np.mean(np.log([c[1] for c in cells]))))
            out[label][name] = (float(np.mean([c[0] for c in cells])), usd)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Issue 13's reference routers under the three CV splits.")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="Also write the per-seed numbers as JSON here.")
    args = parser.parse_args()
    started = time.perf_counter()
    shipped = load_shipped()
    y, price, experts, texts, tasks = shipped.scores, shipped.usd_per_mtok, shipped.experts, shipped.texts, shipped.tasks
    cheap = cheap_feature_matrix(texts)
    features = {"old-mlp-static": np.concatenate([embeddings("static", texts), cheap], axis=1)}
    features["knn100-minilm"] = features["logreg-minilm"] = embeddings("onnx-fp32", texts)
    results: dict = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        results[seed] = {k.value: {} for k in SPLIT_ORDER}
        for name, candidate in references().items():
            # One BLAS thread, as router_quality.py: threads fighting over two shared cores were the cost.
            with threadpool_limits(limits=1):
                reports = run_splits([candidate], features[name], y, texts, tasks, price, experts, seed,
                                     num_folds=args.folds, clock=time.perf_counter)
            for rep in reports:
                row = next(r for r in rep.evaluation.rows if r.name == name)
                results[seed][rep.kind.value][name] = [row.best_quality, row.usd_at_target]
                print(f"seed {seed} {rep.kind.value:18s} {name:15s} best q {row.best_quality:.4f} "
                      f"$@{TARGET_QUALITY} {row.usd_at_target if row.usd_at_target is None else round(row.usd_at_target, 3)} "
                      f"({rep.seconds:.0f} s)", flush=True)
        if args.out is not None:
            args.out.write_text(json.dumps(results, indent=1))
    print()
    print("held-out (issue 13): " + "; ".join(f"{n} {q:.3f} / ${u:.3f}" for n, (q, u) in HELD_OUT.items()))
    for label, column in columns(results).items():
        print(f"{label:26s} {agreement(column)}")
    print(f"seeds {args.seeds}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
