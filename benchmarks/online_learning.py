"""Learning curve of online learning from feedback, leave-one-task-out (issue 13, item 4).

    .venv/bin/python benchmarks/online_learning.py [--seeds 0,1,2] [--events 300] [--cost-weights 0,0.05,0.1]
                                                   [--tasks gpqa,mbpp] [--plot docs/online-learning.png]
                                                   [--settings '[{...}, {...}]' [--select]] [--familiar | --mixed]

For each task T of the shipped routing data: a router is trained without T (the shipped router's recipe — its strategy
and fit parameters, `ensemble-format3-task` since 2026-12-07 (its task stage trained on the other tasks' labels),
`ensemble-format3` from 2026-12-06, on the static table plus cheap features — calibrated on an inner 3-fold split). T's prompts, shuffled (seed), are
split into a stream of `--events` prompts (at most half of T) and the rest, the test part. The stream is routed
one prompt at a time by that router through `OnlineLearner` — the gateway's code: its correction, its
exploration within the budget — and each routed prompt's true score for the chosen expert comes back as
feedback. Every pick is `Router.route`'s: with the packaged router's conservative rule (`ensemble-format3-task-gated`
since 2026-12-07: margin 0.32 · (1 − c) per prompt, the prior from the router's own training part), each expert's
margin scaled by the router's share of the online posterior, none on an exploring decision. After 0, 25, 50, 100, 200 and 300 events the test part is routed with the posterior mean (no
exploration, no learning) and its mean score and mean USD/Mtok recorded.

Reported, per cost weight λ (quality per USD/Mtok, blended price: the router's current units) and averaged over
tasks and seeds: test quality and cost vs events, the same for the router without learning (the baseline, side
by side), and the cumulative regret of the stream against the task's best fixed expert in hindsight under the
same objective (quality − λ·price). The target (issue 13): after 300 events, on each task, test quality ≥ the best
single expert's at no more than its price. A task with fewer than 450 prompts streams two thirds of them.

The online settings are `router.online`'s defaults. They were chosen on five tasks (TUNING_TASKS, marked * in
the tables; seeds 0–5, λ = 0 and 0.05), by the number of runs meeting the target, then the mean gap to the
best single expert; the summary reports the other nine tasks alone: the honest number.

`--settings` with a list compares settings variants on the same routers and splits; `--select` adds the nested
result: each task routed with the variant that did best on the *other* tasks (runs meeting the target summed
over λ and seeds, then the mean gap), so no task's own runs choose its settings. `--familiar` checks the other
side: each router is trained on half of the task as well, and the other half is streamed — traffic the router
was trained for, where learning should not make routing worse. `--mixed` checks a tenant whose traffic is not one
task: each router is trained without the task and without half of every other task, and the task's prompts are
streamed mixed with as many from the other tasks' held-back halves (kinds the router knows, prompts it never saw),
where sending everything to one expert would be wrong.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import OnlineLearner
from switchboard.router.cache import DEFAULT_CACHE_DIR
from switchboard.router.data import common_experts, load_examples, load_models, score_matrix
from switchboard.router.embed import StaticEmbedder
from switchboard.router.persist import builtin_static_dir, load_default_router
from switchboard.router.pipeline import embed_cached
from switchboard.router.router import Router, after_feedback, build_features
from switchboard.router.selection import Caution, RoutingConstraints, choose
from switchboard.router.training import fit_calibrated_like, residual_correlation

CHECKPOINTS = (0, 25, 50, 100, 200, 300)
TUNING_TASKS = frozenset({"gpqa", "mbpp", "math", "natural_qa", "arc_challenge"})
"""The tasks `router.online`'s defaults were chosen on (docs/router.md); the others never informed them."""


@dataclass
class TaskRun:
    task: str
    cost_weight: float
    seed: int
    num_stream: int
    num_test: int
    checkpoints: list[int]
    quality: list[float]  # test mean score at each checkpoint, learning
    usd: list[float]  # test mean USD/Mtok at each checkpoint, learning
    base_quality: float  # the router without learning, on the same test part
    base_usd: float
    best_single: str
    best_single_quality: float
    best_single_usd: float
    regret: list[float]  # cumulative regret vs the best fixed expert (quality − λ·price), at each checkpoint
    base_regret: list[float]
    num_sampled: int
    is_reachable: bool  # the λ-best single expert on the test part meets the target (else no context-free rule can)

    def meets_target(self) -> bool:
        return self.quality[-1] >= self.best_single_quality - 1e-9 and self.usd[-1] <= self.best_single_usd + 1e-9


def load_routing_data():
    """The shipped routing data: features x (n, d) as the packaged router computes them, scores y (n, m), blended
    USD/Mtok per expert (m,), task per row (n,), the expert names, and the static embedder."""
    data = resources.files("switchboard.data").joinpath("routing")
    examples = load_examples(Path(str(data.joinpath("train.jsonl"))))
    prices = load_models(Path(str(data.joinpath("models.json"))))
    experts = common_experts(examples, prices)
    y = score_matrix(examples, experts).astype(np.float64)
    price = np.asarray([prices[e].blended_usd_per_mtok for e in experts])
    tasks = np.asarray([e.task for e in examples])
    embedder = StaticEmbedder(builtin_static_dir())
    texts = [e.prompt for e in examples]
    x = build_features(embedder, texts, True, embed_cached(embedder, texts, DEFAULT_CACHE_DIR.expanduser()))
    return x, y, price, tasks, experts, embedder


def split_task(rows: np.ndarray, seed: int, num_events: int) -> tuple[np.ndarray, np.ndarray]:
    """A task's rows shuffled (seed) into the stream (`num_events`, at most two thirds) and the test part."""
    order = np.random.default_rng([seed, 17]).permutation(rows)
    num_stream = min(num_events, len(order) - len(order) // 3)  # at least a third of the task stays for the test
    return order[:num_stream], order[num_stream:]


def loto_routers(x, y, tasks, wanted, price, experts, embedder, familiar: bool = False,
                 mixed: bool = False) -> tuple[dict[str, Router], dict[str, np.ndarray]]:
    """One router per wanted task, and the task's rows that router never saw (the stream and test rows). Trained on
    every other task; with `familiar`, on every other task and a fixed random half of this one (the traffic the
    router was trained for: online learning must not make it worse), the other half being the rows returned; with
    `mixed`, on a fixed random half of every other task, and the rows returned are the task's and as many again
    drawn from the other tasks' held-back halves — a tenant whose traffic mixes an unseen task with kinds the
    router knows (prompts it never saw), where one expert for everything would be wrong."""
    out: dict[str, Router] = {}
    unseen: dict[str, np.ndarray] = {}
    packaged = load_default_router()
    recipe = packaged.model  # the packaged router's recipe: its strategy and fit parameters, and its selection rule
    for task in wanted:
        rows = np.nonzero(tasks == task)[0]
        unseen[task] = np.sort(np.random.default_rng([0, 29]).permutation(rows)[: len(rows) // 2]) if familiar else rows
        if mixed:
            halves = [np.random.default_rng([0, 31, i]).permutation(np.nonzero(tasks == other)[0])
                      for i, other in enumerate(sorted(set(tasks))) if other != task]
            held_back = np.concatenate([h[: len(h) // 2] for h in halves])
            drawn = np.random.default_rng([0, 37]).choice(held_back, size=min(len(rows), len(held_back)), replace=False)
            unseen[task] = np.sort(np.concatenate([rows, drawn]))
            train = np.setdiff1d(np.arange(len(tasks)), np.concatenate([rows, held_back]))
        else:
            train = np.setdiff1d(np.arange(len(tasks)), unseen[task])
        rng = np.random.default_rng([0, 3])
        t0 = time.perf_counter()
        model, calibration = fit_calibrated_like(recipe, x[train], y[train], rng, tasks=list(tasks[train]))
        router = Router(tuple(experts), price, model, calibration, embedder, True, prior_quality=y[train].mean(axis=0),
                        caution_margin=packaged.caution_margin, caution_by_confidence=packaged.caution_by_confidence)
        # What `router train` ships for the correlated prior (`expert_correlation`): residuals on its training rows.
        out[task] = replace(router, residual_correlation=residual_correlation(router.predict_quality_from_features(x[train]), y[train]))
        print(f"  router without {'half of ' if familiar else ''}{task}{' (and half of the rest)' if mixed else ''}: "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return out, unseen


def run_task(router: Router, x: np.ndarray, y: np.ndarray, rows: np.ndarray, task: str, cost_weight: float,
             seed: int, num_events: int, settings: OnlineLearningConfig) -> TaskRun:
    stream, test = split_task(rows, seed, num_events)
    num_stream = len(stream)
    price = router.usd_per_mtok
    names = router.experts
    constraints = RoutingConstraints(cost_weight=cost_weight)
    rule = router.model.selection_rule
    base = np.zeros((len(x), len(router.experts)))  # (n, m); only T's rows are predicted (and used)
    confidence = np.ones(len(x))
    base[rows], rows_confidence = router.predict_with_confidence(x[rows])
    if rows_confidence is not None:
        confidence[rows] = rows_confidence

    def row_confidence(i: int) -> float | None:
        """What `Router.route` hands the online correction: the router's confidence in the prompt's task."""
        return None if rows_confidence is None else float(confidence[i])

    def pick(q: np.ndarray, at: np.ndarray, share: np.ndarray | None = None, is_exploring: bool = False,
             anchor: Caution | None = None) -> np.ndarray:
        """Router.route's choice for rows `at` with (adjusted) quality `q`: its conservative rule included, after
        feedback as `Router.route` applies it (`share` (n, m): the router's share of the online posterior; `anchor`:
        the tenant's anchored rule for one row, which replaces it)."""
        caution = router.caution(None, confidence[at] if rows_confidence is not None else None, len(at))
        return choose(q, price, names, constraints, rule, caution=after_feedback(caution, share, is_exploring, anchor))[0]

    def test_point(learner: OnlineLearner | None) -> tuple[float, float]:
        if learner is None:
            j = pick(base[test].astype(np.float64), test)
            return float(y[test, j].mean()), float(price[j].mean())
        j = np.zeros(len(test), np.int64)
        for k, i in enumerate(test):  # row by row: each row's anchor is its own
            post = learner.posterior("t", x[i], base[i], row_confidence(i))
            j[k] = pick(post.mean[None, :], test[k:k + 1], post.router_share[None, :], anchor=post.anchor)[0]
        return float(y[test, j].mean()), float(price[j].mean())

    best_fixed = int(np.argmax(y[np.concatenate([stream, test])].mean(axis=0) - cost_weight * price))  # in hindsight, on the whole task
    single_quality = y[test].mean(axis=0)
    best_single = int(np.argmax(single_quality))  # the target's comparison: best quality, at its price
    lam_best = int(np.argmax(single_quality - cost_weight * price))  # what the objective asks for, in hindsight
    is_reachable = bool(single_quality[lam_best] >= single_quality[best_single] - 1e-9 and price[lam_best] <= price[best_single] + 1e-9)
    learner = OnlineLearner(router, settings, np.random.default_rng([seed, 23]))
    quality, usd, regret, base_regret, points = [], [], [], [], []
    cum, cum_base = 0.0, 0.0
    base_choice = pick(base[stream], stream)
    for t in range(num_stream + 1):
        if t in CHECKPOINTS or t == num_stream:
            if not points or points[-1] != t:
                q, c = test_point(learner)
                quality.append(q), usd.append(c), regret.append(cum), base_regret.append(cum_base), points.append(t)
        if t == num_stream:
            break
        i = stream[t]
        adjust = learner.adjuster("t")
        q = base[i] if adjust is None else adjust(x[i], names, base[i], row_confidence(i))
        share = None if adjust is None else adjust.router_share
        j = int(pick(q[None, :], stream[t:t + 1], share, adjust is not None and adjust.is_sampled,
                     None if adjust is None else adjust.anchor)[0])
        if adjust is not None:
            adjust.settle(names[j])  # as RouterChooser does
        learner.add_event("t", x[i], j, base[i], float(y[i, j]))  # what POST /v1/feedback does, minus the lookup
        value = lambda k: float(y[i, k] - cost_weight * price[k])  # noqa: E731
        cum += value(best_fixed) - value(j)
        cum_base += value(best_fixed) - value(int(base_choice[t]))
    bq, bc = test_point(None)
    return TaskRun(task, cost_weight, seed, num_stream, len(test), points, quality, usd, bq, bc, names[best_single],
                   float(single_quality[best_single]), float(price[best_single]), regret, base_regret,
                   learner.budget("t").num_sampled, is_reachable)


def summarise(runs: list[TaskRun], tuning_tasks: frozenset[str]) -> None:
    by_weight: dict[float, list[TaskRun]] = {}
    for r in runs:
        by_weight.setdefault(r.cost_weight, []).append(r)
    for weight, group in sorted(by_weight.items()):
        full = [r for r in group if r.num_stream >= CHECKPOINTS[-1]]
        print(f"\nλ = {weight:g} (quality per USD/Mtok): mean over the {len(full)} task×seed runs whose stream reaches {CHECKPOINTS[-1]}")
        print("| events | test quality (learning) | USD/Mtok | no learning | USD/Mtok | best single | cum. regret vs best fixed (learning / none) |")
        print("|---|---|---|---|---|---|---|")
        for k, point in enumerate(CHECKPOINTS if full else ()):
            print(f"| {point} | {np.mean([r.quality[k] for r in full]):.3f} | {np.mean([r.usd[k] for r in full]):.3f} | "
                  f"{np.mean([r.base_quality for r in full]):.3f} | {np.mean([r.base_usd for r in full]):.3f} | "
                  f"{np.mean([r.best_single_quality for r in full]):.3f} | "
                  f"{np.mean([r.regret[k] for r in full]):.1f} / {np.mean([r.base_regret[k] for r in full]):.1f} |")
        print("\nper task after the whole stream (mean over seeds; target: quality ≥ best single at ≤ its price; * tuning task)")
        print("| task | events | test quality | USD/Mtok | no learning | best single (quality, USD/Mtok) | met (seeds) |")
        print("|---|---|---|---|---|---|---|")
        for task in sorted({r.task for r in group}):
            rs = [r for r in group if r.task == task]
            print(f"| {task}{'*' if task in tuning_tasks else ''} | {rs[0].num_stream} | {np.mean([r.quality[-1] for r in rs]):.3f} | "
                  f"{np.mean([r.usd[-1] for r in rs]):.3f} | {np.mean([r.base_quality for r in rs]):.3f} | {rs[0].best_single} "
                  f"({np.mean([r.best_single_quality for r in rs]):.3f}, {rs[0].best_single_usd:.2f}) | {sum(r.meets_target() for r in rs)}/{len(rs)} |")
        parts = (("all tasks", group), ("tuning tasks (*)", [r for r in group if r.task in tuning_tasks]),
                 ("tasks not used for tuning", [r for r in group if r.task not in tuning_tasks]))
        for label, part in parts:
            if part:
                print(f"{label}: target met in {sum(r.meets_target() for r in part)}/{len(part)} runs (met by the λ-best single expert "
                      f"itself: {sum(r.is_reachable for r in part)}); mean test quality − best single "
                      f"{np.mean([r.quality[-1] - r.best_single_quality for r in part]):+.3f} (no learning "
                      f"{np.mean([r.base_quality - r.best_single_quality for r in part]):+.3f}); cumulative regret "
                      f"{np.mean([r.regret[-1] for r in part]):.1f} (none {np.mean([r.base_regret[-1] for r in part]):.1f}); "
                      f"explored decisions {np.mean([r.num_sampled for r in part]):.1f} per stream")
    tasks = sorted({str(r.task) for r in runs})
    met_any = {t: sum(any(r.meets_target() for r in runs if r.task == t and r.seed == s) for s in {r.seed for r in runs}) for t in tasks}
    print(f"\nmet at some λ of the grid (per seed): {met_any}")


def select_nested(runs_by_variant: list[list[TaskRun]]) -> tuple[list[TaskRun], dict[str, int]]:
    """Leave-one-task-out selection among settings variants: each task gets the variant that did best on every
    *other* task (runs meeting the target, summed over λ and seeds; then the mean gap to the best single
    expert), and its runs are that variant's. No task's own runs inform its choice."""
    tasks = sorted({r.task for r in runs_by_variant[0]})

    def score(runs: list[TaskRun], held_out: str) -> tuple[int, float]:
        rest = [r for r in runs if r.task != held_out]
        return sum(r.meets_target() for r in rest), float(np.mean([r.quality[-1] - r.best_single_quality for r in rest]))

    chosen = {t: max(range(len(runs_by_variant)), key=lambda v: score(runs_by_variant[v], t)) for t in tasks}
    return [r for t in tasks for r in runs_by_variant[chosen[t]] if r.task == t], chosen


def plot(runs: list[TaskRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = sorted({r.cost_weight for r in runs})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for weight in weights:
        group = [r for r in runs if r.cost_weight == weight and r.num_stream >= CHECKPOINTS[-1]]
        if not group:
            continue
        k = len(group[0].checkpoints)
        xs = group[0].checkpoints
        gap = np.mean([[r.quality[i] - r.best_single_quality for i in range(k)] for r in group], axis=0)
        base_gap = np.mean([r.base_quality - r.best_single_quality for r in group])
        line, = axes[0].plot(xs, gap, marker="o", label=f"learning, λ={weight:g}")
        axes[0].axhline(base_gap, color=line.get_color(), linestyle=":", label=f"no learning, λ={weight:g}")
        axes[1].plot(xs, np.mean([r.regret for r in group], axis=0), marker="o", color=line.get_color(), label=f"learning, λ={weight:g}")
        axes[1].plot(xs, np.mean([r.base_regret for r in group], axis=0), linestyle=":", color=line.get_color(), label=f"no learning, λ={weight:g}")
    axes[0].axhline(0.0, color="black", linewidth=0.8)
    axes[0].set(xlabel="feedback events from the held-out task", ylabel="test quality − best single expert",
                title="Quality on the rest of the held-out task")
    axes[1].set(xlabel="feedback events from the held-out task", ylabel="cumulative regret (quality − λ·USD/Mtok)",
                title="Regret vs the best fixed expert in hindsight")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Online learning, leave-one-task-out (tasks with ≥ 450 prompts; mean over tasks and seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--cost-weights", default="0,0.05,0.1")
    parser.add_argument("--tasks", default=None, help="Comma-separated subset (default: every task).")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--settings", default="{}", help="router.online overrides as a JSON object, or a list of them to compare (default: the config's defaults).")
    parser.add_argument("--json", type=Path, default=None, help="Write every run's numbers here.")
    parser.add_argument("--familiar", action="store_true",
                        help="Familiar traffic instead: each router is trained on half of the task too, and the other half is streamed.")
    parser.add_argument("--mixed", action="store_true",
                        help="Mixed traffic instead: each router is trained without the task and without half of every other task; "
                             "the task's prompts are streamed mixed with as many from the other tasks' held-back halves.")
    parser.add_argument("--select", action="store_true",
                        help="With a list of --settings: also report the nested result, each task routed with the variant best on the other tasks.")
    args = parser.parse_args()
    x, y, price, tasks, experts, embedder = load_routing_data()
    wanted = sorted(set(tasks)) if args.tasks is None else args.tasks.split(",")
    variants = json.loads(args.settings)
    if args.familiar and args.mixed:
        parser.error("--familiar and --mixed are two different checks: pick one")
    routers, unseen = loto_routers(x, y, tasks, wanted, price, experts, embedder, args.familiar, args.mixed)
    runs_by_variant = []
    for overrides in variants if isinstance(variants, list) else [variants]:
        settings = OnlineLearningConfig(**overrides)
        print(f"\n## online settings: {settings.model_dump()}")
        runs = []
        for task in wanted:
            rows = unseen[task]
            for weight in [float(w) for w in args.cost_weights.split(",")]:
                for seed in [int(s) for s in args.seeds.split(",")]:
                    runs.append(run_task(routers[task], x, y, rows, task, weight, seed, args.events, settings))
        summarise(runs, TUNING_TASKS)
        runs_by_variant.append(runs)
    if args.select and len(runs_by_variant) > 1:
        runs, chosen = select_nested(runs_by_variant)
        print(f"\n## nested: each task routed with the variant best on the other tasks (variant index per task: {chosen})")
        summarise(runs, TUNING_TASKS)
    if args.plot:
        plot(runs, args.plot)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in runs], indent=1))


if __name__ == "__main__":
    main()
