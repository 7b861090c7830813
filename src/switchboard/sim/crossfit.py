"""Cross-fitted router predictions for the simulator: every prompt predicted by a router that never saw it.

The simulator draws its prompts from the routing data the packaged router was trained on, so that router's
predictions there are in-sample (issue 13, item 5). Here the prompts are split into `num_folds` seeded folds;
the rows of each fold are predicted by a router trained, with the packaged router's recipe (its strategy and fit
parameters, the static table plus cheap features, isotonic calibration on an inner split), on the other folds — the
cross-fitting of double machine learning, and the same out-of-fold estimate `switchboard router eval` reports.

With the predictions go the packaged router's conservative rule's inputs, each prompt's as its cross-fitted router
sees it: the prior (its training part's mean scores) and the margin (gated by that router's confidence where the
packaged router's rule is; zero where it has none), so the simulator chooses as the live router would
(`RoutingInputs.judged`).

Fitting takes some tens of seconds on two cores, so the predictions are cached on disk, keyed by the data's
content, the recipe and the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from switchboard.router.cache import DEFAULT_CACHE_DIR
from switchboard.sim.workload import RoutingData

CACHE_VERSION = 4
"""2: the recipe includes the model's fit parameters (an ensemble's format member). 3: a task stage's labels are in
the key; and caches written by code before the retraining helper of 2026-12-06 23:06 are dropped (the key does
not carry the code: such a cache is the likely reason the README's simulator table of 6 December did not
reproduce on a fresh machine; not traced). 4: the conservative rule's prior and margin are cached beside the
predictions (`.npz`), and the rule is in the key."""


@dataclasses.dataclass(frozen=True)
class CrossFit:
    """Per prompt of the data (rows), in `data.model_names` order."""

    quality: np.ndarray  # (n, m) calibrated predicted quality, out of fold
    prior: np.ndarray  # (n, m) the mean scores of the training part of the prompt's router
    margin: np.ndarray  # (n, 1) the conservative rule's margin there (0: the plain rule)

    @property
    def caution(self) -> tuple[np.ndarray, np.ndarray]:
        """(prior, margin), as `sim.quality.routing_inputs(caution_by_prompt=...)` takes them."""
        return self.prior, self.margin


def cross_fitted(data: RoutingData, *, num_folds: int = 5, seed: int = 0,
                 cache_dir: Path | str = DEFAULT_CACHE_DIR) -> CrossFit:
    """Each prompt's prediction and conservative rule by a router of the packaged recipe that never saw it.

    Raises ValueError for fewer than 2 folds or more folds than prompts.
    """
    from switchboard.router.persist import load_default_router
    from switchboard.router.pipeline import embed_cached
    from switchboard.router.router import build_features
    from switchboard.router.training import fit_calibrated_like, kfold_indices

    packaged = load_default_router()  # the recipe: its strategy and fit parameters, embedder and features
    key = hashlib.sha256()
    recipe = repr(sorted(packaged.model.fit_params().items()))
    rule = f"{packaged.caution_margin:g}/{packaged.caution_by_confidence}/{packaged.prior_quality is not None}"
    for part in (str(CACHE_VERSION), packaged.strategy, recipe, rule, packaged.embedder.name,
                 str(packaged.use_cheap_features), str(num_folds), str(seed), *data.model_names):
        key.update(part.encode() + b"\0")
    key.update(np.ascontiguousarray(data.scores, np.float64).tobytes())
    for prompt in data.prompts:
        key.update(prompt.encode() + b"\0")
    if packaged.model.uses_tasks:  # a task stage trains on the labels too
        for task in data.tasks:
            key.update(task.encode() + b"\0")
    path = Path(cache_dir).expanduser() / f"crossfit-{key.hexdigest()[:24]}.npz"
    if path.exists():
        with np.load(path) as cached:
            return CrossFit(cached["quality"], cached["prior"], cached["margin"])
    x = build_features(packaged.embedder, data.prompts, packaged.use_cheap_features,
                       embed_cached(packaged.embedder, data.prompts, Path(cache_dir).expanduser()))
    y = data.scores.astype(np.float32)
    out = CrossFit(np.zeros_like(y), np.zeros(y.shape), np.zeros((len(y), 1)))
    rng = np.random.default_rng([seed, 5])
    for fold in kfold_indices(len(x), num_folds, np.random.default_rng(seed)):
        train = np.setdiff1d(np.arange(len(x)), fold)
        model, calibration = fit_calibrated_like(packaged.model, x[train], y[train], rng,
                                                 tasks=[data.tasks[i] for i in train] if data.tasks else None)
        raw, confidence = model.predict_with_confidence(x[fold])
        out.quality[fold] = calibration.apply(raw)
        out.prior[fold] = y[train].mean(axis=0)
        margin = packaged.margins(confidence, len(fold))  # the packaged rule, on this fold's router's confidence
        if margin is not None:
            out.margin[fold] = margin
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, quality=out.quality, prior=out.prior, margin=out.margin)
    os.replace(tmp, path)  # a crash never leaves a torn cache file
    return out
