"""How many near-duplicate prompts straddle the evaluation's folds, before and after grouping them.

    .venv/bin/python benchmarks/router_near_duplicates.py [--seed 0] [--folds 5]

Two notions of "near": word 5-gram Jaccard (`protocol.near_duplicate_pairs`, what the folds now group), and
static-table cosine similarity (the router's own embedding, which also joins prompts sharing a template). For
each, the pairs found (and how many join two tasks), then, per split, the pairs with one row in a fold's training
part and the other in its test part, and the test rows with such a partner, under the grouping before
(`near_duplicates=False`: exact duplicates only) and now; and whether the leave-one-task-out folds are the same
under both (they are when no near-duplicate pair joins two tasks).
"""

from __future__ import annotations

import argparse

import numpy as np

from switchboard.router.cache import DEFAULT_CACHE_DIR
from switchboard.router.data import load_shipped
from switchboard.router.embed import StaticEmbedder
from switchboard.router.persist import builtin_static_dir
from switchboard.router.pipeline import embed_cached
from switchboard.router.protocol import SPLIT_ORDER, SplitKind, make_folds, near_duplicate_pairs


def cosine_pairs(vectors: np.ndarray, min_cosine: float, chunk_rows: int = 1024) -> np.ndarray:
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    pairs = []
    for start in range(0, len(unit), chunk_rows):
        sims = unit[start : start + chunk_rows] @ unit.T
        i, j = np.nonzero(sims >= min_cosine)
        keep = start + i < j
        pairs.append(np.stack([start + i[keep], j[keep]], axis=1))
    return np.concatenate(pairs)


def crossings(folds, pairs: np.ndarray, num_rows: int) -> tuple[int, int]:
    """(pairs split between a fold's train and test parts, summed over folds; test rows with such a partner)."""
    num_pairs, rows = 0, set()
    for fold in folds:
        train, test = np.zeros(num_rows, bool), np.zeros(num_rows, bool)
        train[fold.train], test[fold.test] = True, True
        a = test[pairs[:, 0]] & train[pairs[:, 1]]
        b = test[pairs[:, 1]] & train[pairs[:, 0]]
        num_pairs += int((a | b).sum())
        rows |= set(pairs[a, 0].tolist()) | set(pairs[b, 1].tolist())
    return num_pairs, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    shipped = load_shipped()
    texts, tasks = shipped.texts, np.asarray(shipped.tasks, dtype=object)
    vectors = embed_cached(StaticEmbedder(builtin_static_dir()), texts, DEFAULT_CACHE_DIR.expanduser()).astype(np.float32)
    notions = {f"5-gram Jaccard ≥ {j}": np.asarray(near_duplicate_pairs(texts, j), np.int64).reshape(-1, 2)
               for j in (0.5, 0.8)}
    notions.update({f"static cosine ≥ {c}": cosine_pairs(vectors, c) for c in (0.95, 0.98)})
    print(f"{len(texts)} prompts, {len(set(tasks.tolist()))} tasks; seed {args.seed}, {args.folds} folds")
    for name, pairs in notions.items():
        rows = np.unique(pairs)
        across = int((tasks[pairs[:, 0]] != tasks[pairs[:, 1]]).sum()) if len(pairs) else 0
        print(f"{name}: {len(pairs)} pairs in {len(rows)} rows, {across} joining two tasks")
    loto = [make_folds(SplitKind.LEAVE_ONE_TASK_OUT, texts, list(tasks), args.folds, np.random.default_rng(0), near)
            for near in (False, True)]
    same = all(np.array_equal(a.train, b.train) and np.array_equal(a.test, b.test) for a, b in zip(*loto))
    print(f"leave-one-task-out folds identical under both groupings: {same}")
    print()
    print(f"{'split':20s} {'grouping':12s}" + "".join(f" | {name:>22s} pairs / test rows" for name in notions))
    for kind in SPLIT_ORDER:
        for near in (False, True):
            folds = make_folds(kind, texts, list(tasks), args.folds, np.random.default_rng([args.seed, 0]), near)
            cells = "".join(f" | {'':22s} {p:5d} / {r:4d}    " for p, r in
                            (crossings(folds, pairs, len(texts)) for pairs in notions.values()))
            print(f"{kind.value:20s} {'near+exact' if near else 'exact only':12s}" + cells)


if __name__ == "__main__":
    main()
