"""What online learning adds to a routing decision: `Router.route` with and without a tenant's corrections.

    .venv/bin/python benchmarks/online_latency.py [--events 0,512,1024,2048] [--rounds 4] [--decisions 300]
                                                  [--settings '{"neighbor_weight": "uniform"}']
                                                  [--settings '{"expert_correlation": 0.5}']

A 200-token prompt through the packaged router (embedding included), alternating in the same process between
the router alone (the baseline) and the router with `OnlineLearner` corrections from a tenant holding N
feedback events (random ones near the prompt, spread over the 9 experts: every event is a candidate neighbour,
the worst case), exploring within the default budget (`--settings` overrides `router.online`). Reports p50/p99
per round and the added p50; the order within a round alternates (ABBA) so load drifts hit both. `--cpu-versus`
instead compares the correction step alone (`Adjustment.__call__`, where the options differ) in CPU time per
call, against the defaults in the same process, ABBA: steadier than wall-clock percentiles on busy shared cores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import numpy as np

from switchboard.config.schema import OnlineLearningConfig
from switchboard.online import OnlineLearner
from switchboard.router import load_default_router
from switchboard.router.selection import RoutingConstraints

WORDS = "the of a to in is you that it he was for on are as with his they at be this from have or by one had not".split()


def percentiles_ms(fn, num: int) -> tuple[float, float]:
    times = []
    for _ in range(num):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="0,512,1024,2048")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--decisions", type=int, default=300)
    parser.add_argument("--settings", default="{}", help="router.online overrides as a JSON object (default: the config's defaults).")
    parser.add_argument("--cpu-versus", action="store_true", help="CPU ms per correction step, --settings against the defaults.")
    args = parser.parse_args()
    router = load_default_router()
    if router.residual_correlation is None and json.loads(args.settings).get("expert_correlation", 0) > 0:
        # The packaged router ships no correlation yet; the linked solve's cost depends on its shape, not its values.
        m = len(router.experts)
        router = replace(router, residual_correlation=0.7 * np.eye(m) + 0.3)
    rng = np.random.default_rng(0)
    prompt = " ".join(rng.choice(WORDS, 200))
    x = router.features([prompt])[0]
    learners, defaults = {}, {}
    for num_events in [int(n) for n in args.events.split(",")]:
        bound = {"max_events_per_tenant": max(num_events, 1)}
        learner = OnlineLearner(router, OnlineLearningConfig(**{**json.loads(args.settings), **bound}), np.random.default_rng(1))
        default = OnlineLearner(router, OnlineLearningConfig(**bound), np.random.default_rng(1))  # for --cpu-versus
        for k in range(num_events):
            event = (x + rng.normal(0, 0.05, x.shape), k % len(router.experts), np.full(len(router.experts), 0.5), float(k % 2))
            learner.add_event("t", *event)
            default.add_event("t", *event)
        learners[num_events], defaults[num_events] = learner, default
    if args.cpu_versus:
        cpu_versus(router, x, learners, defaults, args.rounds, args.decisions)
        return
    print("| round | events | p50 ms (router alone) | p50 ms (with corrections) | added p50 ms | p99 ms (alone / with) |")
    print("|---|---|---|---|---|---|")
    constraints = RoutingConstraints()

    def decide(learner: OnlineLearner) -> None:  # as RouterChooser does: route with the adjustment, then settle it
        adjust = learner.adjuster("t")
        decision = router.route(prompt, constraints, adjust=adjust)
        if adjust is not None:
            adjust.settle(decision.expert)

    for r in range(args.rounds):
        for num_events, learner in learners.items():
            alone = lambda: percentiles_ms(lambda: router.route(prompt, constraints), args.decisions)  # noqa: E731
            corrected = lambda: percentiles_ms(lambda: decide(learner), args.decisions)  # noqa: E731
            if r % 2 == 0:  # ABBA: which side goes first alternates, so a load drift within a round hits both
                base, online = alone(), corrected()
            else:
                online, base = corrected(), alone()
            print(f"| {r} | {num_events} | {base[0]:.2f} | {online[0]:.2f} | {online[0] - base[0]:+.2f} | {base[1]:.1f} / {online[1]:.1f} |")


def cpu_versus(router, x, learners, defaults, rounds: int, decisions: int) -> None:
    """CPU ms per correction step (one `Adjustment` call) of each learner and of one with the defaults holding
    the same events, alternating ABBA."""
    quality = router.predict_quality_from_features(x[None])[0]

    def cpu_ms(online: OnlineLearner) -> float:
        start = time.process_time()
        for _ in range(decisions):
            adjust = online.adjuster("t")
            if adjust is not None:
                adjust(x, router.experts, quality)
        return (time.process_time() - start) / decisions * 1e3

    print("| round | events | defaults CPU ms | with --settings CPU ms | added |")
    print("|---|---|---|---|---|")
    for r in range(rounds):
        for num_events, learner in learners.items():
            if r % 2 == 0:
                a, b = cpu_ms(defaults[num_events]), cpu_ms(learner)
            else:
                b, a = cpu_ms(learner), cpu_ms(defaults[num_events])
            print(f"| {r} | {num_events} | {a:.3f} | {b:.3f} | {b - a:+.3f} |")


if __name__ == "__main__":
    main()
