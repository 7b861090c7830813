"""Predicted and true quality per request, in the cluster's expert order.

The true quality of expert j on a request is the routing data's graded score of j's real answer to the request's
prompt. The prediction comes from a router (`switchboard.router.Router.predict_quality`) when one is given, from
a table of per-prompt predictions (the cross-fitted routers of `sim/crossfit.py`, each prompt predicted by a
router that never saw it), or otherwise from a leave-one-out per-task mean (what a router that only recognises
the task would predict) — a transparent stand-in that never sees the prompt's own scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from switchboard.sim.runner import RoutingInputs
from switchboard.sim.workload import NO_PROMPT, RoutingData, Workload


def task_prior_predictions(data: RoutingData) -> np.ndarray:
    """(n_prompts, n_models): for each prompt, the mean score of each model over the *other* prompts of its task
    (the global mean for a task with a single prompt)."""
    tasks = np.array(data.tasks)
    out = np.empty_like(data.scores)
    global_mean = data.scores.mean(axis=0)
    for task in np.unique(tasks):
        rows = np.nonzero(tasks == task)[0]
        if len(rows) < 2:
            out[rows] = global_mean
            continue
        total = data.scores[rows].sum(axis=0)
        out[rows] = (total[None, :] - data.scores[rows]) / (len(rows) - 1)
    return out


def router_by_prompt(router, data: RoutingData) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A loaded `Router`'s predictions for every prompt of `data`, columns in `data.model_names` order (0 for a
    model the router does not know), and its conservative rule's (prior, margin) per prompt, or None without
    one: what `routing_inputs(predicted_by_prompt=..., caution_by_prompt=...)` takes."""
    quality, _, caution = router.as_served(router.features(list(data.prompts)))
    known = np.array([m in router.experts for m in data.model_names])
    columns = np.array([router.experts.index(m) if m in router.experts else 0 for m in data.model_names])
    out = np.where(known, np.asarray(quality, np.float64)[:, columns], 0.0)
    if caution is None:
        return out, None
    prior = np.broadcast_to(np.where(known, np.asarray(caution.prior, np.float64)[columns], 0.0), out.shape).copy()
    return out, (prior, np.broadcast_to(caution.margin, (len(data), 1)).copy())


def routing_inputs(
    workload: Workload,
    data: RoutingData,
    expert_ids: Sequence[str],
    predict: Callable[[Sequence[str]], np.ndarray] | None = None,
    predict_experts: Sequence[str] | None = None,
    predicted_by_prompt: np.ndarray | None = None,
    caution_by_prompt: tuple[np.ndarray, np.ndarray] | None = None,
) -> RoutingInputs:
    """Per-request predicted and true quality (columns = `expert_ids`). Requests without a prompt get the data's
    mean scores. `predict(prompts)` returns (n, len(predict_experts)); it is called once per distinct prompt.

    `predicted_by_prompt` (len(data), len(data.model_names)) instead gives every prompt's prediction directly, and
    `caution_by_prompt` (prior (len(data), len(data.model_names)), margin (len(data), 1)) the router's
    conservative rule for it (`RoutingInputs.judged` applies it; requests without a prompt get no margin).

    Experts that are not models of the routing data (e.g. the synthetic experts of a keep-alive experiment, whose
    requests name their expert) get NaN true quality and a predicted quality of 0.
    """
    known = [e in data.model_names for e in expert_ids]
    true_by_prompt = np.full((len(data), len(expert_ids)), np.nan)
    for j, e in enumerate(expert_ids):
        if known[j]:
            true_by_prompt[:, j] = data.scores[:, data.model_index(e)]
    cols = [data.model_index(e) if known[j] else 0 for j, e in enumerate(expert_ids)]
    if predicted_by_prompt is not None:
        pred_by_prompt = np.asarray(predicted_by_prompt, np.float64)[:, cols]
        pred_by_prompt[:, ~np.array(known, dtype=bool)] = 0.0
    elif predict is None:
        pred_by_prompt = task_prior_predictions(data)[:, cols]
        pred_by_prompt[:, ~np.array(known, dtype=bool)] = 0.0
    else:
        used = np.unique(workload.prompt_index[workload.prompt_index != NO_PROMPT])
        raw = np.asarray(predict([data.prompts[k] for k in used]), dtype=np.float64)
        pred_by_prompt = np.zeros_like(true_by_prompt)
        for j, e in enumerate(expert_ids):
            if e in predict_experts:
                pred_by_prompt[used, j] = raw[:, list(predict_experts).index(e)]
    has_prompt = workload.prompt_index != NO_PROMPT
    idx = np.where(has_prompt, workload.prompt_index, 0)
    predicted = pred_by_prompt[idx]
    true = true_by_prompt[idx]
    predicted[~has_prompt] = np.nan_to_num(true_by_prompt.mean(axis=0))
    true[~has_prompt] = true_by_prompt.mean(axis=0)
    if caution_by_prompt is None:
        return RoutingInputs(predicted=predicted, true=true)
    prior_by_prompt, margin_by_prompt = (np.asarray(a, np.float64) for a in caution_by_prompt)
    prior = prior_by_prompt[:, cols][idx]
    prior[:, ~np.array(known, dtype=bool)] = 0.0
    margin = np.where(has_prompt[:, None], margin_by_prompt[idx], 0.0)
    return RoutingInputs(predicted=predicted, true=true, caution_prior=prior, caution_margin=margin)
