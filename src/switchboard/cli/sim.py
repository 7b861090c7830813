"""`switchboard sim`: replay workloads through the control plane's policies in simulated time.

    switchboard sim run     --trace FILE --cluster CLUSTER.yaml [--policy switchboard] [--json]
    switchboard sim compare --trace FILE --cluster CLUSTER.yaml [--policies a,b,c] [--json] [--out DIR]
    switchboard sim plan    --trace FILE --cluster CLUSTER.yaml --quality-floor 0.6 [--ttft-attainment 0.99]

Heavy imports live inside the commands so `switchboard --help` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from switchboard.router.objective import DEFAULT_OBJECTIVE, OBJECTIVE_COST_WEIGHTS

sim_app = typer.Typer(help="Simulate the fleet and its policies on real traces (capacity planning, policy proofs).",
                      no_args_is_help=True)

TRACE_HELP = "Azure LLM trace CSV (TIMESTAMP,ContextTokens,GeneratedTokens); default: the packaged conversation trace."

DEFAULT_COST_WEIGHT = OBJECTIVE_COST_WEIGHTS[DEFAULT_OBJECTIVE]
"""The router's λ when `sim run`/`sim compare` are given none: the `balanced` preset, what the live `auto` routes
with when neither the request nor the config sets one (`router.objective`), so the `switchboard` row is the live
default in its routing too (the blended list price is the request's price for the shipped experts, whose input
and output prices are equal)."""

COST_WEIGHT_HELP = "Router λ per USD/Mtok (default: the balanced preset, as the live `auto` with none set)."


def register(app: typer.Typer) -> None:
    app.add_typer(sim_app, name="sim")


def _load(trace: Optional[Path], cluster: Optional[Path], *, time_scale: float, tenants: int, num_requests: Optional[int],
          workload: str, num_experts: int, rate: float, duration_s: float, zipf: float, seed: int,
          periodic_fraction: float = 0.0):
    """(cluster spec, workload, routing-data loader) from the CLI options; exits with a message on bad input."""
    import numpy as np

    from switchboard.sim import workload as wl
    from switchboard.sim.cluster import ExpertSimSpec, default_cluster_path, load_cluster

    try:
        spec = load_cluster(cluster if cluster is not None else default_cluster_path())
    except (ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    rng = np.random.default_rng(seed)
    data = wl.load_routing_data()
    if workload == "trace":
        try:
            base = wl.load_azure_trace(trace)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if tenants > 1:
            offsets = rng.uniform(0, base.duration_s, size=tenants)
            offsets[0] = 0.0
            base = wl.superpose([base] * tenants, list(offsets), wrap_s=base.duration_s + 1e-9)
        w = wl.scale_time(base, time_scale) if time_scale != 1.0 else base
    elif workload == "many-experts":
        names = [f"expert-{k:02d}" for k in range(num_experts)]
        w = wl.many_experts_workload(rng, names, rate, duration_s, zipf_exponent=zipf, cv=2.0,
                                     periodic_fraction=periodic_fraction)
        if spec.experts is None:
            sizes = [7.0, 8.0, 9.0]
            spec = spec.model_copy(update={"experts": [
                ExpertSimSpec(id=n, params_b=sizes[k % 3], usd_per_mtok=0.2) for k, n in enumerate(names)]})
    else:
        typer.echo(f"error: --workload must be 'trace' or 'many-experts', got {workload!r}", err=True)
        raise typer.Exit(2)
    if num_requests is not None:
        w = w.head(num_requests)
    w = wl.attach_prompts(w, len(data), rng)
    return spec, w, data


def _prepare(trace: Optional[Path], cluster: Optional[Path], *, router: str, cost_weight: float,
             keepalive_s: Optional[float], seed: int, demand_headroom: Optional[float] = None, **load_args):
    """What `sim run` and `sim compare` share: the cluster, the workload, its routing and the policy knobs."""
    from switchboard.sim.scenario import Knobs

    spec, w, data = _load(trace, cluster, seed=seed, **load_args)
    knobs = Knobs(cost_weight=cost_weight, seed=seed, demand_headroom=demand_headroom)
    if keepalive_s is not None:
        knobs = dataclasses.replace(knobs, fixed_idle_timeout_s=keepalive_s, fallback_keepalive_s=keepalive_s)
    return spec, w, _routing_for(w, data, router), knobs


def _routing_for(w, data, router: str = "cross-fitted"):
    """Per-request predicted/true quality. `router`: `cross-fitted` (each prompt predicted by a router of the
    packaged recipe trained on the other 4 of 5 folds: out of sample; cached after the first run),
    `default` (the packaged router itself, trained on these very prompts: in-sample), `task-prior`
    (leave-one-out per-task means; fast), or a router directory."""
    from switchboard.sim.quality import routing_inputs

    if router == "task-prior":
        return lambda ids: routing_inputs(w, data, ids)
    if router == "cross-fitted":
        from switchboard.sim.crossfit import cross_fitted

        fitted = cross_fitted(data)
        cached: dict[tuple[str, ...], object] = {}

        def cross_fitted_routing(ids):
            if ids not in cached:
                cached[ids] = routing_inputs(w, data, ids, predicted_by_prompt=fitted.quality,
                                             caution_by_prompt=fitted.caution)
            return cached[ids]

        return cross_fitted_routing
    from switchboard.router.persist import load_default_router, load_router

    try:
        model = load_default_router() if router == "default" else load_router(router)
    except Exception as exc:  # RouterLoadError and I/O errors: a clean CLI error, not a traceback
        typer.echo(f"error: cannot load router {router!r}: {exc}", err=True)
        raise typer.Exit(2) from None
    from switchboard.sim.quality import router_by_prompt

    predicted, caution = router_by_prompt(model, data)
    cache: dict[tuple[str, ...], object] = {}

    def routing(ids):
        if ids not in cache:
            cache[ids] = routing_inputs(w, data, ids, predicted_by_prompt=predicted, caution_by_prompt=caution)
        return cache[ids]

    return routing


def _progress(label: str, total: int, quiet: bool):
    """A rich progress bar on stderr (none with --json or quiet)."""
    from contextlib import nullcontext

    if quiet:
        return nullcontext(lambda i: None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    class _Bar:
        def __enter__(self):
            self.p = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.p.__enter__()
            self.task = self.p.add_task(label, total=total)
            return lambda i: self.p.update(self.task, completed=i)

        def __exit__(self, *exc):
            self.p.update(self.task, completed=total)
            return self.p.__exit__(*exc)

    return _Bar()


def _print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols = [("policy", "policy", "{}"), ("usd_cost", "USD", "{:.2f}"), ("slo_attainment", "SLO att.", "{:.3f}"),
            ("ttft_slo_attainment", "TTFT att.", "{:.3f}"), ("p50_ttft_s", "p50 TTFT s", "{:.2f}"),
            ("p99_ttft_s", "p99 TTFT s", "{:.2f}"), ("p99_tpot_s", "p99 TPOT s", "{:.3f}"),
            ("quality", "quality", "{:.3f}"), ("cold_starts", "cold starts", "{}"),
            ("prewarm_starts", "of them pre-warms", "{}"), ("requests_behind_cold_start", "requests behind cold", "{}"),
            ("idle_replica_s", "idle rep-s", "{:.0f}"), ("num_rejected", "rejected", "{}")]
    for _, header, _ in cols:
        table.add_column(header, justify="right")
    for r in rows:
        table.add_row(*[("-" if r.get(k) is None else fmt.format(r[k])) for k, _, fmt in cols])
    Console(width=160).print(table)


def _write_outputs(out: Optional[Path], name: str, rows, config: dict) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2))
    (out / f"{name}.config.json").write_text(json.dumps(config, indent=2, default=str))


COMMON = dict(
    trace=typer.Option(None, "--trace", help=TRACE_HELP),
    cluster=typer.Option(None, "--cluster", help="Cluster YAML [default: examples/clusters/hetero-32.yaml of this checkout]."),
)


@sim_app.command("run")
def run(
    trace: Optional[Path] = COMMON["trace"],
    cluster: Optional[Path] = COMMON["cluster"],
    policy: str = typer.Option("switchboard", "--policy", help="static | fixed-keepalive | quality-only-routing | switchboard"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the run's metrics."),
    router: str = typer.Option("cross-fitted", "--router", help="cross-fitted (out of sample) | default (the packaged router, in-sample) | task-prior | ROUTER_DIR"),
    time_scale: float = typer.Option(1.0, "--time-scale", help="Multiply arrival times (0.5 = twice the load)."),
    tenants: int = typer.Option(1, "--tenants", help="Superpose this many copies of the trace at random offsets."),
    num_requests: Optional[int] = typer.Option(None, "--num-requests", help="Replay only the first N requests."),
    workload: str = typer.Option("trace", "--workload", help="trace | many-experts (Zipf-popular pinned experts)."),
    num_experts: int = typer.Option(40, "--num-experts"),
    rate: float = typer.Option(2.0, "--rate", help="many-experts: total requests/s."),
    duration_s: float = typer.Option(3600.0, "--duration-s", help="many-experts: length of the workload."),
    zipf: float = typer.Option(1.2, "--zipf", help="many-experts: popularity exponent."),
    periodic_fraction: float = typer.Option(0.5, "--periodic-fraction",
                                            help="many-experts: share of experts that run scheduled jobs."),
    cost_weight: float = typer.Option(DEFAULT_COST_WEIGHT, "--cost-weight", help=COST_WEIGHT_HELP),
    keepalive_s: Optional[float] = typer.Option(None, "--keepalive-s", help="Override the fixed idle timeout and the "
                                                "hybrid policy's fallback window (default 600 s)."),
    demand_headroom: Optional[float] = typer.Option(None, "--demand-headroom", min=1.0, help="Autoscale with demand-at-slo for this multiple of the "
                                          "recent arrival rate (every serverless set)."),
    warmup_s: float = typer.Option(0.0, "--warmup-s", help="Leave requests arriving before this out of the SLO, "
                                   "latency and quality metrics (cost always covers the whole run)."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the result and its resolved config."),
) -> None:
    """Replay one workload through one policy set and report SLOs, latency, quality, cost and replica time."""
    from switchboard.sim.scenario import run_policy

    spec, w, routing, knobs = _prepare(trace, cluster, time_scale=time_scale, tenants=tenants, num_requests=num_requests,
                                       workload=workload, num_experts=num_experts, rate=rate, duration_s=duration_s,
                                       zipf=zipf, seed=seed, periodic_fraction=periodic_fraction, router=router,
                                       cost_weight=cost_weight, keepalive_s=keepalive_s, demand_headroom=demand_headroom)
    try:
        with _progress(policy, len(w), as_json) as tick:
            summary, _ = run_policy(policy, spec, w, routing, knobs, on_progress=tick,
                                    warmup_s=warmup_s)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from None
    row = summary.as_dict()
    _write_outputs(out, f"run-{policy}", row, {"cluster": spec.model_dump(), "knobs": knobs.__dict__,
                                                "trace": str(trace), "time_scale": time_scale, "tenants": tenants,
                                                "router": router, "warmup_s": warmup_s})
    if as_json:
        typer.echo(json.dumps(row))
    else:
        _print_table([row], f"{spec.name}: {len(w)} requests")
        typer.echo(f"replica-hours by hardware: {row['replica_hours_by_hardware']}")


@sim_app.command("compare")
def compare(
    trace: Optional[Path] = COMMON["trace"],
    cluster: Optional[Path] = COMMON["cluster"],
    policies: str = typer.Option("static,fixed-keepalive,quality-only-routing,switchboard", "--policies"),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per policy set."),
    router: str = typer.Option("cross-fitted", "--router", help="cross-fitted (out of sample) | default (the packaged router, in-sample) | task-prior | ROUTER_DIR"),
    time_scale: float = typer.Option(1.0, "--time-scale"),
    tenants: int = typer.Option(1, "--tenants"),
    num_requests: Optional[int] = typer.Option(None, "--num-requests"),
    workload: str = typer.Option("trace", "--workload", help="trace | many-experts"),
    num_experts: int = typer.Option(40, "--num-experts"),
    rate: float = typer.Option(2.0, "--rate"),
    duration_s: float = typer.Option(3600.0, "--duration-s"),
    zipf: float = typer.Option(1.2, "--zipf"),
    periodic_fraction: float = typer.Option(0.5, "--periodic-fraction",
                                            help="many-experts: share of experts that run scheduled jobs."),
    cost_weight: float = typer.Option(DEFAULT_COST_WEIGHT, "--cost-weight", help=COST_WEIGHT_HELP),
    keepalive_s: Optional[float] = typer.Option(None, "--keepalive-s", help="Override the fixed idle timeout and the "
                                                "hybrid policy's fallback window (default 600 s)."),
    demand_headroom: Optional[float] = typer.Option(None, "--demand-headroom", min=1.0, help="Autoscale with demand-at-slo for this multiple of the "
                                          "recent arrival rate (every serverless set)."),
    warmup_s: float = typer.Option(0.0, "--warmup-s", help="Leave requests arriving before this out of the SLO, "
                                   "latency and quality metrics (cost always covers the whole run)."),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("sim-results"), "--out", help="Directory for the table (JSON), config and plots."),
) -> None:
    """Run several policy sets on the same workload side by side; write a table and PNG plots."""
    from switchboard.sim.plots import plot_compare
    from switchboard.sim.scenario import run_policy

    spec, w, routing, knobs = _prepare(trace, cluster, time_scale=time_scale, tenants=tenants, num_requests=num_requests,
                                       workload=workload, num_experts=num_experts, rate=rate, duration_s=duration_s,
                                       zipf=zipf, seed=seed, periodic_fraction=periodic_fraction, router=router,
                                       cost_weight=cost_weight, keepalive_s=keepalive_s, demand_headroom=demand_headroom)
    rows = []
    for name in [p.strip() for p in policies.split(",") if p.strip()]:
        try:
            with _progress(name, len(w), as_json) as tick:
                summary, _ = run_policy(name, spec, w, routing, knobs, on_progress=tick,
                                        warmup_s=warmup_s)
        except KeyError as exc:
            typer.echo(f"error: {exc.args[0]}", err=True)
            raise typer.Exit(2) from None
        rows.append(summary.as_dict())
    _write_outputs(out, "compare", rows, {"cluster": spec.model_dump(), "knobs": knobs.__dict__, "trace": str(trace),
                                          "workload": workload, "time_scale": time_scale, "tenants": tenants,
                                          "router": router, "warmup_s": warmup_s})
    plot = plot_compare(rows, out / "compare.png", f"{spec.name}: {len(w)} requests ({workload})")
    if as_json:
        typer.echo(json.dumps(rows))
    else:
        _print_table(rows, f"{spec.name}: {len(w)} requests ({workload})")
        typer.echo(f"wrote {out / 'compare.json'} and {plot}")


@sim_app.command("plan")
def plan(
    trace: Optional[Path] = COMMON["trace"],
    cluster: Optional[Path] = COMMON["cluster"],
    quality_floor: float = typer.Option(0.6, "--quality-floor", help="Minimum delivered quality (mean true score)."),
    ttft_attainment: float = typer.Option(0.99, "--ttft-attainment", help="Fraction of requests within the TTFT SLO."),
    cost_weights: str = typer.Option("0,0.1,0.3", "--cost-weights", help="Router λ values to try."),
    keepalives: str = typer.Option("120,600", "--keepalive-s", help="Keep-alive fallback windows (s) to try."),
    max_mixes: int = typer.Option(6, "--max-mixes", help="Hardware mixes (subsets of the cluster's pools) to try."),
    num_requests: Optional[int] = typer.Option(4000, "--num-requests", help="Plan on the first N requests."),
    time_scale: float = typer.Option(1.0, "--time-scale"),
    warmup_s: float = typer.Option(0.0, "--warmup-s", help="Leave requests arriving before this out of the SLO, "
                                   "latency and quality metrics (cost always covers the whole run)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json"),
    router: str = typer.Option("cross-fitted", "--router", help="cross-fitted (out of sample) | default (the packaged router, in-sample) | task-prior | ROUTER_DIR"),
    out: Path = typer.Option(Path("sim-results"), "--out"),
) -> None:
    """Search router cost weight × hardware mix × keep-alive for the cheapest configuration meeting a quality
    floor and a TTFT SLO; plot the quality-cost-latency frontier."""
    from switchboard.sim.planner import PlanSpace, search
    from switchboard.sim.plots import plot_frontier

    spec, w, data = _load(trace, cluster, time_scale=time_scale, tenants=1, num_requests=num_requests,
                          workload="trace", num_experts=0, rate=0, duration_s=0, zipf=0, seed=seed)
    space = PlanSpace(
        cost_weights=tuple(float(x) for x in cost_weights.split(",")),
        keepalive_s=tuple(float(x) for x in keepalives.split(",")),
        max_mixes=max_mixes,
    )
    configs = space.configurations(spec)
    with _progress("plan", len(configs), as_json) as tick:
        rows, chosen = search(spec, w, _routing_for(w, data, router), configs, quality_floor=quality_floor,
                              ttft_attainment=ttft_attainment, seed=seed, on_config=tick,
                              warmup_s=warmup_s)
    _write_outputs(out, "plan", {"chosen": chosen, "tried": rows},
                   {"cluster": spec.model_dump(), "space": space.__dict__, "quality_floor": quality_floor,
                    "ttft_attainment": ttft_attainment, "num_requests": len(w), "router": router})
    plot = plot_frontier(rows, out / "plan-frontier.png", quality_floor=quality_floor, chosen=chosen)
    if as_json:
        typer.echo(json.dumps({"chosen": chosen, "tried": rows}))
        return
    _print_table(sorted(rows, key=lambda r: r["usd_cost"]), f"plan: {len(rows)} configurations, {len(w)} requests")
    if chosen is None:
        typer.echo(f"no configuration met quality >= {quality_floor} and TTFT attainment >= {ttft_attainment}")
    else:
        typer.echo(f"cheapest feasible: {chosen['policy']} at ${chosen['usd_cost']:.2f}")
    typer.echo(f"wrote {out / 'plan.json'} and {plot}")
