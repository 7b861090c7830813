"""Cross-validated routing quality per strategy on the shipped data, against the single-expert baselines.

    .venv/bin/python benchmarks/router_quality.py [--seed 0] [--folds 5] [--path static|st] [--strategies mlp,knn] [--plot curves.png]

5-fold CV (seeded; every strategy scored on the same folds, each fold's model calibrated on an inner 3-fold
split of its training part). For each strategy: best mean score over the cost-weight sweep, the mean USD/Mtok
needed to match the best single expert and the issue's 0.563 target, AUC over the experts' price range and
APGR; ratios are against the best single expert (quality) and its price (cost). `--path st` uses the full
model on torch instead of the serving path's static table (cached embeddings; the first run is slow).
"""

from __future__ import annotations

import argparse
import os
import time
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from switchboard.router.cache import DEFAULT_CACHE_DIR  # noqa: E402
from switchboard.router.data import common_experts, load_examples, load_models, score_matrix  # noqa: E402
from switchboard.router.embed import StaticEmbedder  # noqa: E402
from switchboard.router.evaluate import evaluate, format_table  # noqa: E402
from switchboard.router.persist import builtin_static_dir  # noqa: E402
from switchboard.router.pipeline import embed_cached  # noqa: E402
from switchboard.router.router import build_features  # noqa: E402
from switchboard.router.strategies import STRATEGIES, StrategyName  # noqa: E402
from switchboard.router.training import cross_validated_quality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="CV routing quality per strategy.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--path", choices=["static", "st"], default="static")
    parser.add_argument("--plot", type=Path, default=None, help="Also write the curves as a PNG here.")
    parser.add_argument("--strategies", default=",".join(n.value for n in StrategyName), help="Comma-separated subset.")
    args = parser.parse_args()
    data = resources.files("switchboard.data").joinpath("routing")
    examples = load_examples(Path(str(data.joinpath("train.jsonl"))))
    prices = load_models(Path(str(data.joinpath("models.json"))))
    experts = common_experts(examples, prices)
    y = score_matrix(examples, experts)
    price = np.asarray([prices[e].blended_usd_per_mtok for e in experts])
    texts = [e.prompt for e in examples]
    if args.path == "static":
        embedder = StaticEmbedder(builtin_static_dir())
    else:
        from switchboard.router.embed import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
    x = build_features(embedder, texts, True, embed_cached(embedder, texts, DEFAULT_CACHE_DIR.expanduser()))
    preds, seconds = {}, {}
    for name in [StrategyName(v) for v in args.strategies.split(",")]:
        start = time.perf_counter()
        preds[name.value] = (cross_validated_quality(name, x, y, args.seed, args.folds), STRATEGIES[name].selection_rule)
        seconds[name.value] = time.perf_counter() - start
    ev = evaluate(preds, y, price, experts, np.random.default_rng(args.seed))
    print(f"{args.folds}-fold CV, seed {args.seed}, {len(examples)} prompts, {len(experts)} experts, embeddings: {embedder.name}")
    print(format_table(ev))
    best = ev.single[ev.best_single]
    print()
    print(f"ratios against the best single expert ({ev.best_single}: q={best.quality:.4f} at ${best.usd_per_mtok:.2f}/Mtok)")
    head = f"{'strategy':10s} {'best q ×base':>12s} {'cost to match base ×base':>25s} {'cost to reach 0.563 ×base':>26s} {'CV s':>6s}"
    print(head)
    for r in ev.rows:
        if r.name not in seconds:
            continue
        match = "—" if r.usd_at_best_single is None else f"{r.usd_at_best_single / best.usd_per_mtok:.3f}"
        target = "—" if r.usd_at_target is None else f"{r.usd_at_target / best.usd_per_mtok:.3f}"
        print(f"{r.name:10s} {r.best_quality / best.quality:12.3f} {match:>25s} {target:>26s} {seconds[r.name]:6.1f}")
    print("targets: best q ≥ 0.63; cost to reach 0.563 ≤ 0.12 USD/Mtok")
    if args.plot is not None:
        from switchboard.router.evaluate import plot_curves

        print(f"plot written to {plot_curves(ev, args.plot)}")


if __name__ == "__main__":
    main()
