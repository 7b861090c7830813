"""Routing-decision latency per embedding path, with each path's routing quality beside it.

    .venv/bin/python benchmarks/router_latency.py [--iterations 300] [--static-only]
    .venv/bin/python benchmarks/router_latency.py --caution-ab [--rounds 10]
    .venv/bin/python benchmarks/router_latency.py --format-ab ensemble-format|ensemble-format3 [--rounds 10]
    .venv/bin/python benchmarks/router_latency.py --task-ab [--rounds 10]

For every path (sentence-transformers on torch = the baseline, ONNX fp32, ONNX int8, the distilled static table)
it times `Router.route` on 200-token prompts (embedding + features + prediction + selection, one request at a
time, as the gateway calls it) and reports p50/p99 and their ratio to the baseline. Quality: 5-fold CV (seed 0)
of the same strategy (`linear` and `knn`, the fast ones) on that path's embeddings of the shipped 5,608 prompts.
The last row is the packaged default router. The first run embeds the corpus once per full-model path (minutes
on 2 cores) and caches it under ~/.cache/switchboard/embeddings; ONNX files are exported to
~/.cache/switchboard/onnx if missing (needs torch).

`--caution-ab` times only the packaged router with the plain rule (A) against the packaged router itself, with its
conservative rule gated by the task stage's confidence (B, `selection.Caution`, κ · (1 − c)), alternating A B B A in
rounds of 50 requests in one process, and prints each round's p50/p99 and the B/A ratios with their spread.
`--format-ab V` does the same for the kNN + MLP ensemble (A, the packaged router's own members) against V (B):
`ensemble-format` (the same kNN, an MLP on the 7 cheap features only) or `ensemble-format3` (the same kNN and MLP,
and that third MLP). `--task-ab`: the packaged router without its task stage (A) against the packaged router (B).
`--under-expert-load` times the packaged router while the embedded default expert (SmolLM2-135M on llama.cpp, in a
child process with the embedded worker's default threads, half the cores for decode and prompt alike, as
`make run` starts it, or `--load-threads N`, generating without pause) is stopped (A, SIGSTOP) and while it runs
(B, SIGCONT), the same A B B A rounds: what routing costs on the one machine `make run` serves from, under load.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from switchboard.router import RoutingConstraints, load_default_router  # noqa: E402
from switchboard.router.cache import DEFAULT_CACHE_DIR  # noqa: E402
from switchboard.router.data import load_shipped  # noqa: E402
from switchboard.router.embed import OnnxEmbedder, SentenceTransformerEmbedder, StaticEmbedder, minilm_model_dir  # noqa: E402
from switchboard.router.evaluate import evaluate  # noqa: E402
from switchboard.router.persist import builtin_static_dir, read_report, default_router_dir  # noqa: E402
from switchboard.router.pipeline import embed_cached  # noqa: E402
from switchboard.router.router import Router, build_features  # noqa: E402
from switchboard.router.strategies import STRATEGIES, StrategyName  # noqa: E402
from switchboard.router.training import cross_validated_quality, fit_calibrated  # noqa: E402

ONNX_DIR = Path("~/.cache/switchboard/onnx").expanduser()
TARGET_QUALITY = 0.563


def prompts_of_200_tokens(texts: list[str], count: int) -> list[str]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_model_dir() / "tokenizer.json"))
    tok.no_truncation()
    out = []
    for text in texts:
        enc = tok.encode(text, add_special_tokens=False)
        if len(enc.ids) >= 200:
            out.append(text[: enc.offsets[199][1]])
        if len(out) == count:
            break
    return out


def embedders(static_only: bool = False):
    if static_only:  # the serving path alone: its baseline is then the static table with `linear`
        yield "static table (numpy)", lambda: StaticEmbedder(builtin_static_dir())
        return
    yield "sentence-transformers (torch)", lambda: SentenceTransformerEmbedder()
    for kind in ("fp32", "int8"):
        path = ONNX_DIR / f"minilm-{kind}.onnx"
        if not path.exists():
            from switchboard.router.distill import export_onnx

            export_onnx(ONNX_DIR)
        yield f"onnxruntime {kind}", lambda path=path: OnnxEmbedder(path)
    yield "static table (numpy)", lambda: StaticEmbedder(builtin_static_dir())


def time_route(router: Router, prompts: list[str], iterations: int) -> tuple[float, float]:
    for p in prompts[:5]:
        router.route(p, RoutingConstraints(cost_weight=0.1))
    samples = []
    for i in range(iterations):
        start = time.perf_counter()
        router.route(prompts[i % len(prompts)], RoutingConstraints(cost_weight=0.1))
        samples.append((time.perf_counter() - start) * 1000.0)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))


GATEWAY_CONFIG = """
experts:
  - id: gemma-2-9b-it
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.1
    usd_per_mtok_output: 0.1
  - id: llama-3.1-8b-instruct
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.2
    usd_per_mtok_output: 0.2
  - id: llama-3.1-nemotron-51b-instruct
    backend: {kind: simulated, time_scale: 0}
    usd_per_mtok_input: 0.9
    usd_per_mtok_output: 0.9
"""


def gateway_latency(prompts: list[str], iterations: int) -> dict[str, tuple[float, float]]:
    """p50/p99 ms of one request at a time through a real gateway (uvicorn in a thread, instant simulated
    experts): to a fixed expert, and to `auto` with the packaged router."""
    import httpx

    from switchboard.config import parse_config
    from switchboard.gateway.app import build_app
    from switchboard.router.chooser import RouterChooser
    from switchboard.testing.servers import serve_in_thread

    config = parse_config(GATEWAY_CONFIG)
    app = build_app(config, chooser=RouterChooser(load_default_router(), config.default_expert_id))
    out = {}
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as client:
        for label, model in (("gateway → fixed expert", "llama-3.1-8b-instruct"), ("gateway → auto (router)", "auto")):
            samples = []
            for i in range(iterations + 10):
                body = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}], "max_tokens": 4}
                start = time.perf_counter()
                response = client.post("/v1/chat/completions", json=body)
                elapsed = (time.perf_counter() - start) * 1000.0
                response.raise_for_status()
                if i >= 10:
                    samples.append(elapsed)
            out[label] = (float(np.percentile(samples, 50)), float(np.percentile(samples, 99)))
    return out


def caution_ab(prompts: list[str], rounds: int, per_round: int = 50) -> None:
    import dataclasses

    packaged = load_default_router()  # its conservative rule gated by the task stage's confidence (κ 0.32)
    plain = dataclasses.replace(packaged, caution_margin=0.0)
    ab_rounds("packaged router, plain vs its gated conservative rule", {"plain": plain, "cautious": packaged}, prompts,
              rounds, per_round)


def format_ab(prompts: list[str], rounds: int, variant: str, per_round: int = 50) -> None:
    """The packaged ensemble (A) against the same kNN with an MLP on the 7 cheap features only (B): instead of its
    MLP (`ensemble-format`) or beside it (`ensemble-format3`). The new MLP is fitted here on the shipped data:
    latency depends on the shapes, not the weights."""
    import dataclasses

    from switchboard.router.features import FEATURE_NAMES, cheap_feature_matrix
    from switchboard.router.strategies.ensemble import EnsembleModel
    from switchboard.router.strategies.neural import MlpModel

    packaged = load_default_router()
    # The kNN + MLP ensemble of the packaged router's own members (the packaged default until 2026-12-06).
    plain = dataclasses.replace(packaged, model=EnsembleModel(packaged.model.knn, packaged.model.mlp, packaged.model.knn_share))
    shipped = load_shipped()
    y = shipped.scores[:, [shipped.experts.index(e) for e in plain.experts]]
    cheap_mlp = MlpModel.fit(cheap_feature_matrix(shipped.texts), y, np.random.default_rng(0))
    columns = len(FEATURE_NAMES)
    if variant == "ensemble-format":
        model = EnsembleModel(plain.model.knn, cheap_mlp, plain.model.knn_share, columns)
    else:
        model = EnsembleModel(plain.model.knn, plain.model.mlp, plain.model.knn_share, 0, cheap_mlp, columns)
    ab_rounds(f"ensemble vs {variant}", {"ensemble": plain,
              variant: dataclasses.replace(plain, model=model)}, prompts, rounds, per_round)


def task_ab(prompts: list[str], rounds: int, per_round: int = 50) -> None:
    """The packaged router without its task stage (A: `ensemble-format3`, the default until 2026-12-07) against the
    packaged router (B: `ensemble-format3-task`): the same members, plus the stage's two small matrix products."""
    import dataclasses

    packaged = load_default_router()
    ab_rounds("ensemble-format3 vs the packaged ensemble-format3-task",
              {"ensemble-format3": dataclasses.replace(
                  packaged, model=dataclasses.replace(packaged.model, task_stage=None, task_gate_power=0.0)),
               "format3-task": packaged}, prompts, rounds, per_round)


def _generate_forever(model_path: str, prompt: str, ready, threads: int | None) -> None:
    """The load: the embedded expert generating, one completion after another (a child process's target);
    `threads` None: the embedded worker's default (`worker.default_num_threads`, for decode and prompt alike)."""
    from llama_cpp import Llama

    from switchboard.engines.llamacpp.worker import default_num_threads

    threads = threads or default_num_threads()
    llm = Llama(model_path=model_path, n_ctx=2048, verbose=False, n_threads=threads, n_threads_batch=threads)
    llm.create_completion(prompt, max_tokens=8)
    ready.set()
    while True:
        llm.create_completion(prompt, max_tokens=256, temperature=0.8)


def under_expert_load(prompts: list[str], rounds: int, threads: int | None, per_round: int = 50) -> None:
    """The packaged router with the embedded expert's generation stopped (A) and running (B)."""
    import multiprocessing
    import signal

    from switchboard.engines.llamacpp.paths import default_model_path

    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    load = context.Process(target=_generate_forever, args=(str(default_model_path()), prompts[0], ready, threads),
                           daemon=True)
    load.start()
    try:
        if not ready.wait(300):
            raise RuntimeError("the llama.cpp load process did not start within 300 s")
        router = load_default_router()

        def switch(name: str) -> None:
            os.kill(load.pid, signal.SIGSTOP if name == "expert stopped" else signal.SIGCONT)
            time.sleep(0.2)  # let the scheduler and caches settle into the new state

        ab_rounds(f"packaged router, embedded expert (SmolLM2-135M, llama.cpp, threads "
                  f"{'default' if threads is None else threads}) stopped vs generating",
                  {"expert stopped": router, "expert generating": router}, prompts, rounds, per_round, switch)
        fields = open(f"/proc/{load.pid}/stat").read().rsplit(")", 1)[1].split()
        busy_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime since its start
        print(f"the load process used {busy_s:.1f} CPU seconds in all (its model load and warm-up included)")
    finally:
        os.kill(load.pid, signal.SIGCONT)
        load.terminate()
        load.join(10)


def ab_rounds(title: str, arms: dict[str, Router], prompts: list[str], rounds: int, per_round: int,
              before_arm=lambda name: None) -> None:
    """Times two routers alternating A B B A (B A A B on odd rounds) and prints per-round p50/p99 and B/A ratios;
    `before_arm(name)` runs before each arm's turn (e.g. to switch a background load on or off)."""
    a_name, b_name = arms
    samples: dict[str, list[list[float]]] = {k: [] for k in arms}
    for arm in arms.values():  # warm both
        for p in prompts[:5]:
            arm.route(p, RoutingConstraints(cost_weight=0.025))
    for r in range(rounds):
        for name in ((a_name, b_name, b_name, a_name) if r % 2 == 0 else (b_name, a_name, a_name, b_name)):
            before_arm(name)
            times = []
            for i in range(per_round):
                start = time.perf_counter()
                arms[name].route(prompts[i % len(prompts)], RoutingConstraints(cost_weight=0.025))
                times.append((time.perf_counter() - start) * 1000.0)
            samples[name].append(times)
    print(f"{title}, {rounds} rounds × (A B B A) × {per_round} requests; load average {os.getloadavg()[0]:.1f}")
    ratios50, ratios99 = [], []
    for r in range(rounds):
        a, b = np.concatenate(samples[a_name][2 * r : 2 * r + 2]), np.concatenate(samples[b_name][2 * r : 2 * r + 2])
        ratios50.append(np.percentile(b, 50) / np.percentile(a, 50))
        ratios99.append(np.percentile(b, 99) / np.percentile(a, 99))
        print(f"round {r}: {a_name} p50 {np.percentile(a, 50):6.2f} p99 {np.percentile(a, 99):6.2f} ms | "
              f"{b_name} p50 {np.percentile(b, 50):6.2f} p99 {np.percentile(b, 99):6.2f} ms")
    every = {k: np.concatenate([t for t in v]) for k, v in samples.items()}
    for k, v in every.items():
        print(f"{k:15s} all rounds: p50 {np.percentile(v, 50):.2f} ms, p99 {np.percentile(v, 99):.2f} ms")
    print(f"{b_name} / {a_name} per round: p50 median {np.median(ratios50):.3f} [{min(ratios50):.3f}–{max(ratios50):.3f}], "
          f"p99 median {np.median(ratios99):.3f} [{min(ratios99):.3f}–{max(ratios99):.3f}]; targets p50 ≤ 5 ms, p99 ≤ 15 ms; "
          f"load average {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Routing-decision latency and quality per embedding path.")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--static-only", action="store_true", help="Skip the full-model paths (minutes on 2 cores).")
    parser.add_argument("--caution-ab", action="store_true", help="Only the packaged router, plain vs conservative rule.")
    parser.add_argument("--format-ab", choices=("ensemble-format", "ensemble-format3"), default=None,
                        help="Only the packaged ensemble vs this variant with an MLP on the cheap features.")
    parser.add_argument("--task-ab", action="store_true",
                        help="Only the packaged router without its task stage vs with it.")
    parser.add_argument("--under-expert-load", action="store_true",
                        help="Only the packaged router, the embedded llama.cpp expert stopped vs generating.")
    parser.add_argument("--load-threads", type=int, default=None,
                        help="With --under-expert-load: llama.cpp threads of the load (default: the embedded worker's, half the cores).")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if args.under_expert_load:
        under_expert_load(prompts_of_200_tokens(load_shipped().texts, 50), args.rounds, args.load_threads)
        return
    if args.task_ab:
        task_ab(prompts_of_200_tokens(load_shipped().texts, 50), args.rounds)
        return
    if args.caution_ab:
        caution_ab(prompts_of_200_tokens(load_shipped().texts, 50), args.rounds)
        return
    if args.format_ab:
        format_ab(prompts_of_200_tokens(load_shipped().texts, 50), args.rounds, args.format_ab)
        return
    shipped = load_shipped()
    experts, y, price = shipped.experts, shipped.scores, shipped.usd_per_mtok
    texts = shipped.texts
    long_prompts = prompts_of_200_tokens(texts, 50)
    rows = []
    for label, make in embedders(args.static_only):
        embedder = make()
        x = build_features(embedder, texts, True, embed_cached(embedder, texts, DEFAULT_CACHE_DIR.expanduser()))
        preds = {s.value: (cross_validated_quality(s, x, y, seed=0), STRATEGIES[s].selection_rule) for s in (StrategyName.LINEAR, StrategyName.KNN)}
        ev = {r.name: r for r in evaluate(preds, y, price, experts, np.random.default_rng(0)).rows}
        model, calibration = fit_calibrated(StrategyName.LINEAR, x, y, np.random.default_rng(0))
        router = Router(tuple(experts), price, model, calibration, embedder, True)
        p50, p99 = time_route(router, long_prompts, args.iterations)
        rows.append((label, embedder.dims, p50, p99, ev["linear"], ev["knn"]))
    default = load_default_router()
    p50, p99 = time_route(default, long_prompts, args.iterations)
    full_report = read_report(default_router_dir())
    report = full_report.get("cv", {})
    cv = report.get("nested selection", report.get(default.strategy, {}))
    chosen = str(full_report.get("chosen", default.strategy)).split("+")[0]
    split = full_report.get("split", "random")
    base_p50, base_p99 = rows[0][2], rows[0][3]
    print(f"routing decision for a 200-token prompt, {args.iterations} requests one at a time; quality = 5-fold CV")
    head = f"{'path':32s} {'dims':>4s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 ×base':>9s} {'p99 ×base':>9s} | {'linear best q':>13s} {'$@0.563':>7s} {'AUC':>6s} | {'knn best q':>10s} {'AUC':>6s}"
    print(head)
    print("-" * len(head))
    for label, dims, p50_, p99_, lin, knn in rows:
        usd = "—" if lin.usd_at_target is None else f"{lin.usd_at_target:.3f}"
        print(
            f"{label:32s} {dims:4d} {p50_:8.2f} {p99_:8.2f} {p50_ / base_p50:9.3f} {p99_ / base_p99:9.3f} | "
            f"{lin.best_quality:13.4f} {usd:>7s} {lin.auc:6.4f} | {knn.best_quality:10.4f} {knn.auc:6.4f}"
        )
    usd = cv.get("usd_per_mtok_at_target_quality")
    print(
        f"{'default router (' + chosen + ')':32s} {default.embedder.dims:4d} {p50:8.2f} {p99:8.2f} "
        f"{p50 / base_p50:9.3f} {p99 / base_p99:9.3f} | {cv.get('best_quality', float('nan')):13.4f} "
        f"{'—' if usd is None else format(usd, '.3f'):>7s} {cv.get('auc', float('nan')):6.4f} |  (its own {split} CV)"
    )
    print("targets: p50 ≤ 5 ms, p99 ≤ 15 ms; baseline = sentence-transformers on torch")
    print()
    gateway = gateway_latency(long_prompts, args.iterations)
    fixed_p50, fixed_p99 = gateway["gateway → fixed expert"]
    print("the same 200-token requests end to end through the gateway (instant simulated experts); baseline = fixed expert")
    for label, (g50, g99) in gateway.items():
        print(f"{label:32s} p50 {g50:7.2f} ms  p99 {g99:7.2f} ms  p50 ×base {g50 / fixed_p50:6.3f}  p99 ×base {g99 / fixed_p99:6.3f}")


if __name__ == "__main__":
    main()
