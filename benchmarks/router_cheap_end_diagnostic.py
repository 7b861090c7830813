"""Diagnostic, not a result: where the packaged estimator's traffic goes under leave-one-task-out, per λ.

    .venv/bin/python benchmarks/router_cheap_end_diagnostic.py [--seed 0]

Raw outer-fold estimates of the packaged estimator (`_explore.fit_packaged`), chosen with the plain rule and with the
packaged gated rule (κ = 0.32) at λ = 0, 0.025, 0.05, 0.1; per chosen expert (≥ 1% of the task-weighted traffic):
its share, its mean predicted and realised score on the rows sent to it, and nemotron-51b's realised score on the
same rows (the best single expert). Behind docs/router.md, "The cheap end under LOTO".
"""

from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import threadpool_limits

from _explore import fit_packaged, shipped_features
from switchboard.router.protocol import SplitKind, make_folds, row_weights
from switchboard.router.selection import Caution, RoutingConstraints, choose
from switchboard.router.strategies.robust import task_ids

GENERALIST = "llama-3.1-nemotron-51b-instruct"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    seed = parser.parse_args().seed
    d = shipped_features()
    kind = SplitKind.LEAVE_ONE_TASK_OUT
    folds = make_folds(kind, d.texts, d.tasks, 5, np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 1])
    pred, prior = np.zeros(d.y.shape), np.zeros(d.y.shape)
    confidence = np.zeros(len(d.y))
    with threadpool_limits(limits=1):
        for fold in folds:
            fitted = fit_packaged(d.x[fold.train], d.y[fold.train], task_ids([d.tasks[i] for i in fold.train]), rng)
            p = fitted(d.x[fold.test])
            pred[fold.test], confidence[fold.test] = p.task4, p.confidence
            prior[fold.test] = d.y[fold.train].mean(axis=0)
    w = row_weights(kind, d.tasks, len(d.y))
    g = d.experts.index(GENERALIST)
    for lam in (0.0, 0.025, 0.05, 0.1):
        for label, caution in (("plain", None), ("gated κ0.32", Caution(prior, 0.32 * (1 - confidence[:, None])))):
            index, _ = choose(pred, d.price, d.experts, RoutingConstraints(cost_weight=lam), caution=caution)
            got = d.y[np.arange(len(index)), index]
            print(f"λ = {lam:g}, {label}: quality {w @ got:.4f} at ${w @ d.price[index]:.3f}/Mtok")
            for j, name in enumerate(d.experts):
                sent = index == j
                if w[sent].sum() < 0.01:
                    continue
                print(f"    {name:32s} share {w[sent].sum():.3f}  predicted {np.average(pred[sent, j], weights=w[sent]):.3f}"
                      f"  realised {np.average(got[sent], weights=w[sent]):.3f}"
                      f"  {GENERALIST} there {np.average(d.y[sent, g], weights=w[sent]):.3f}")


if __name__ == "__main__":
    main()
