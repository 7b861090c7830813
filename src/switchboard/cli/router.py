"""`switchboard router train | route | eval`: train a router directory, route prompts with it, evaluate it.

Heavy imports (numpy, the router package) stay inside the commands so `switchboard --help` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

router_app = typer.Typer(help="Learned routing: train, apply and evaluate routers.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(router_app, name="router")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@router_app.command("train")
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Training JSONL: {prompt, scores: {expert: 0..1}}."),
    from_log: Optional[str] = typer.Option(None, "--from-log", help="A request-log database URL: trains on logged requests with feedback (docs/storage.md); with --data, on both."),
    impute_from: Optional[str] = typer.Option(None, "--impute-from", help="With --from-log: fill the scores no feedback gave with this router's predictions ('default' = the packaged one, or a router directory), so every scored request counts."),
    models: Path = typer.Option(..., "--models", help="Models file: expert → prices per Mtok."),
    out: Path = typer.Option(..., "--out", help="Router directory to write."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="knn, linear, mlp, mf, cascade or ensemble, with its default parameters; default: --candidates."),
    candidates: str = typer.Option("packaged", "--candidates", help="Without --strategy, the candidates nested CV chooses among (on whole-task inner folds when every row has a task): 'packaged' (ensemble-format3, the packaged router's recipe, chosen by leave-one-task-out CV), 'default' (knn, knn-100-soft, linear, mlp, ensemble), or comma-separated labels, e.g. 'default,ensemble-format3' (docs/router.md)."),
    folds: int = typer.Option(5, "--folds", min=2, help="Outer folds of the reported CV when rows carry no task (with a task on every row: one fold per task)."),
    seed: int = typer.Option(0, "--seed", help="Seed for splits and initialisation."),
    cache_dir: Path = typer.Option(Path("~/.cache/switchboard/embeddings"), "--cache-dir", help="Embedding cache."),
) -> None:
    """Train a router and write a self-contained router directory."""
    from rich.progress import Progress

    from switchboard.router.data import RoutingDataError, load_examples, load_models
    from switchboard.router.evaluate import format_table
    from switchboard.router.persist import builtin_static_dir
    from switchboard.router.pipeline import TrainSettings, candidate_pool, total_fits, train_router, write_router
    from switchboard.router.strategies import StrategyName

    try:
        chosen = None if strategy is None else StrategyName(strategy)
    except ValueError:
        _fail(f"--strategy must be one of {', '.join(s.value for s in StrategyName)}, got {strategy!r}")
    try:
        pool = candidate_pool(candidates)
    except ValueError as exc:
        _fail(f"--candidates: {exc}")
    if data is None and from_log is None:
        _fail("give --data, --from-log, or both")
    if impute_from is not None and from_log is None:
        _fail("--impute-from fills the gaps of --from-log's feedback; give --from-log too")
    try:
        examples = load_examples(data) if data is not None else []
        if from_log is not None:
            examples = examples + load_examples(_data_from_log(from_log, models, out, impute_from))
        prices = load_models(models)
    except (RoutingDataError, OSError) as exc:
        _fail(str(exc))
    settings = TrainSettings(strategy=chosen, candidates=pool, folds=folds, seed=seed, cache_dir=cache_dir.expanduser())
    with Progress(transient=False) as progress:
        task = progress.add_task("training", total=total_fits(settings, [ex.task for ex in examples]))
        result = train_router(examples, prices, settings, progress=lambda n: progress.advance(task, n))
    write_router(result, out, settings, len(examples), builtin_static_dir())
    if result.evaluation is not None:
        typer.echo(format_table(result.evaluation))
    typer.echo(f"strategy: {result.chosen.value}; router written to {out}")


def _data_from_log(url: str, models: Path, out: Path, impute_from: str | None = None) -> Path:
    """Writes <out>/training-from-log.jsonl from the request log (it holds users' prompts: see docs/storage.md)."""
    from switchboard.router.data import RoutingDataError, load_models
    from switchboard.router.persist import RouterLoadError, load_default_router, load_router
    from switchboard.storage.export import LogExportError, write_training_jsonl

    try:
        impute = None
        if impute_from is not None:
            known = load_default_router() if impute_from == "default" else load_router(impute_from)

            def impute(prompts, experts):
                missing = [e for e in experts if e not in known.experts]
                if missing:
                    raise LogExportError(f"--impute-from router does not know {', '.join(missing)}; narrow the models file")
                return known.predict_quality(prompts)[:, [known.experts.index(e) for e in experts]]

        path, num_lines, experts, num_imputed = write_training_jsonl(
            url, list(load_models(models)), Path(out) / "training-from-log.jsonl", impute=impute)
    except (LogExportError, RoutingDataError, RouterLoadError, OSError) as exc:
        _fail(str(exc))
    if impute_from is None:
        typer.echo(f"{num_lines} logged prompts with feedback for every one of {', '.join(experts)}; written to {path}")
    else:
        typer.echo(f"{num_lines} logged prompts with feedback; {num_imputed} of {num_lines * len(experts)} scores "
                   f"for {', '.join(experts)} imputed from {impute_from}; written to {path}")
    return path


@router_app.command("route")
def route(
    router: Path = typer.Option(..., "--router", help="Router directory."),
    prompts: Path = typer.Option(..., "--prompts", help="JSONL with a \"prompt\" field per line."),
    cost_weight: float = typer.Option(0.0, "--cost-weight", min=0.0, help="λ in quality − λ·USD per Mtok."),
    max_usd_per_mtok: Optional[float] = typer.Option(None, "--max-usd-per-mtok", min=0.0),
    min_quality: Optional[float] = typer.Option(None, "--min-quality", min=0.0, max=1.0),
) -> None:
    """Print {"index": i, "model": "<expert id>"} per input line, in order (model null if none is feasible)."""
    from switchboard.router.data import RoutingDataError, read_prompts
    from switchboard.router.persist import RouterLoadError, load_router
    from switchboard.router.selection import RoutingConstraints

    try:
        texts = read_prompts(prompts)
        loaded = load_router(router)
    except (RoutingDataError, RouterLoadError, OSError) as exc:
        _fail(str(exc))
    constraints = RoutingConstraints(cost_weight, max_usd_per_mtok, min_quality)
    for i, expert in enumerate(loaded.route_batch(texts, constraints)):
        typer.echo(json.dumps({"index": i, "model": expert}))


@router_app.command("eval")
def evaluate_cmd(
    router: Path = typer.Option(..., "--router", help="Router directory."),
    data: Path = typer.Option(..., "--data", help="Labelled JSONL to evaluate on."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG path; default <router>/eval.png."),
    folds: int = typer.Option(5, "--folds", min=2, help="Outer folds of the random and task-balanced splits."),
    seed: int = typer.Option(0, "--seed"),
    compare: bool = typer.Option(True, "--compare/--no-compare", help="Also run the nested CV of the candidate strategies on --data."),
    splits: str = typer.Option("leave-one-task-out,task-balanced,random", "--splits",
                               help="CV splits to report side by side (task splits need a task on every row)."),
) -> None:
    """Quality/cost curve of the router over the fixed λ grid, against baselines; then (with --compare) the
    nested cross-validation of every candidate strategy under each split (docs/router.md)."""
    import time

    import numpy as np

    from switchboard.router.data import RoutingDataError, load_examples, score_matrix
    from switchboard.router.evaluate import evaluate, format_table, plot_curves
    from switchboard.router.persist import RouterLoadError, load_router
    from switchboard.router.pipeline import DEFAULT_CANDIDATES, embed_cached
    from switchboard.router.protocol import SplitKind, task_balanced_weights
    from switchboard.router.report import format_summary, run_splits
    from switchboard.router.router import build_features

    try:
        examples = load_examples(data)
        loaded = load_router(router)
        y = score_matrix(examples, loaded.experts)
        kinds = [SplitKind(s) for s in splits.split(",")]
    except (RoutingDataError, RouterLoadError, OSError) as exc:
        _fail(str(exc))
    except ValueError:
        _fail(f"--splits must be a comma-separated subset of {', '.join(k.value for k in SplitKind)}, got {splits!r}")
    texts = [ex.prompt for ex in examples]
    tasks = [ex.task for ex in examples]
    tasks = tasks if all(t is not None for t in tasks) and len(set(tasks)) > 1 else None
    emb = embed_cached(loaded.embedder, texts, Path("~/.cache/switchboard/embeddings").expanduser())
    x = build_features(loaded.embedder, texts, loaded.use_cheap_features, emb)
    # As served: its selection rule, and its conservative rule if it has one (gated per prompt where it is).
    predictions = {f"router ({loaded.strategy})": loaded.as_served(x)}
    weights = None if tasks is None else task_balanced_weights(tasks)
    evaluation = evaluate(predictions, y, loaded.usd_per_mtok, loaded.experts, np.random.default_rng(seed), weights=weights)
    typer.echo(format_table(evaluation))
    typer.echo(
        "note: the router row scores the loaded router as is (in-sample if --data is its training data)"
        + ("; every task weighs the same" if tasks is not None else "")
    )
    if compare:
        reports = run_splits(DEFAULT_CANDIDATES, x, y, texts, tasks, loaded.usd_per_mtok, loaded.experts, seed, kinds,
                             folds, clock=time.perf_counter)
        if not reports:
            _fail("no split can run: task splits need a task label on every row of --data")
        typer.echo("\nnested cross-validation of the candidate strategies on --data (out of sample):")
        typer.echo(format_summary(reports))
    path = plot_curves(evaluation, plot or Path(router) / "eval.png")
    typer.echo(f"plot written to {path}")
