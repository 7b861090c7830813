"""`switchboard status`: a running gateway's fleet as rich tables (from `GET /admin/fleet` and `GET /metrics`)."""

from __future__ import annotations

import time
from typing import Any

import typer

STATE_STYLES = {"warm": "green", "starting": "yellow", "draining": "magenta", "cold": "bright_black", "stopped": "bright_black"}


def _per_expert_metrics(metrics_text: str) -> dict[str, dict[str, float]]:
    """{expert: {"ok", "failed", "usd"}} from Prometheus text; empty if the text has none."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            expert = s.labels.get("expert")
            if expert is None:
                continue
            entry = out.setdefault(expert, {"ok": 0.0, "failed": 0.0, "usd": 0.0})
            if s.name == "switchboard_requests_total":
                entry["ok" if s.labels["outcome"] == "ok" else "failed"] += s.value
            elif s.name == "switchboard_cost_usd_total":
                entry["usd"] += s.value
    return out


def render(fleet: dict[str, Any], per_expert: dict[str, dict[str, float]], num_decisions: int) -> list[Any]:
    """The tables for one look at the fleet."""
    from rich.table import Table
    from rich.text import Text

    workers = Table(title="Workers", title_justify="left", expand=False)
    for col in ("worker", "hardware", "memory GB", "USD/h", "replicas"):
        workers.add_column(col, justify="right" if col in ("memory GB", "USD/h", "replicas") else "left")
    on_worker: dict[str, list[dict[str, Any]]] = {}
    for e in fleet["experts"]:
        for r in e["replicas"]:
            on_worker.setdefault(r["worker"], []).append(r)
    for w in fleet["workers"]:
        chips = Text()
        for r in on_worker.get(w["worker_id"], []):
            chips.append(f"{r['replica_id']} ", style=STATE_STYLES.get(r["state"], ""))
        workers.add_row(w["worker_id"], w["hardware"], f"{w['memory_gb']:g}", f"{w['usd_per_hour']:g}", chips or Text("—", style="bright_black"))

    experts = Table(title="Experts", title_justify="left")
    for col in ("expert", "backend", "replicas", "running", "queued", "served", "ok", "failed", "USD", "keep-alive"):
        experts.add_column(col, justify="right" if col in ("running", "queued", "served", "ok", "failed", "USD") else "left",
                           overflow="fold" if col == "keep-alive" else "ellipsis")
    for e in fleet["experts"]:
        states: dict[str, int] = {}
        for r in e["replicas"]:
            states[r["state"]] = states.get(r["state"], 0) + 1
        replicas = Text()
        for state, n in sorted(states.items()):
            replicas.append(f"{n} {state} ", style=STATE_STYLES.get(state, ""))
        m = per_expert.get(e["id"], {})
        keepalive = e.get("keepalive") or {}
        experts.add_row(
            Text(e["id"]), e["backend"], replicas or Text("cold", style="bright_black"),
            str(sum(r.get("num_running", 0) for r in e["replicas"])), str(sum(r.get("num_queued", 0) for r in e["replicas"])),
            str(sum(r.get("num_served", 0) for r in e["replicas"])),
            f"{m['ok']:.0f}" if m else "–", f"{m['failed']:.0f}" if m else "–", f"{m['usd']:.6f}" if m else "–",
            Text(f"{keepalive['action']}: {keepalive['reason']}" if keepalive else ""),
        )

    decisions = Table(title=f"Recent decisions (last {num_decisions})", title_justify="left")
    for col in ("when", "action", "expert", "reason"):
        decisions.add_column(col, overflow="fold" if col == "reason" else "ellipsis")
    now = fleet.get("now", time.time())
    for d in list(fleet.get("decisions", []))[-num_decisions:][::-1]:
        reason = Text.assemble((f"{d['code']} ", "cyan") if d["code"] else "", d["reason"])  # Text: reasons are not markup
        decisions.add_row(f"{max(0.0, now - d['at']):.0f}s ago", d["action"], Text(d["expert"]), reason)

    counters = fleet.get("counters", {})
    summary = Text(f"cold starts {counters.get('cold_starts', 0)} · admitted {counters.get('admitted', 0)} · rejected {counters.get('rejected', 0)}")
    return [workers, experts, decisions, summary]


def status(
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Base URL of a running `switchboard serve`."),
    decisions: int = typer.Option(10, "--decisions", min=0, help="How many recent decisions to show."),
    watch: float = typer.Option(0.0, "--watch", min=0, help="Refresh every this many seconds (0: print once)."),
    admin_key_env: str = typer.Option("SWITCHBOARD_ADMIN_KEY", "--admin-key-env", help="Variable holding the admin key, sent when set (gateways with auth on)."),
) -> None:
    """Show the fleet of a running gateway: workers, experts and their replicas by state, recent decisions."""
    import os

    import httpx
    from rich.console import Console, Group
    from rich.live import Live

    console = Console()
    base = url.rstrip("/")
    admin_key = os.environ.get(admin_key_env, "")
    headers = {"authorization": f"Bearer {admin_key}"} if admin_key else {}

    def look() -> Group:
        fleet = httpx.get(base + "/admin/fleet", headers=headers, timeout=10).raise_for_status().json()
        metrics = httpx.get(base + "/metrics", timeout=10)
        per_expert = _per_expert_metrics(metrics.text) if metrics.status_code == 200 else {}
        return Group(*render(fleet, per_expert, decisions))

    try:
        if not watch:
            console.print(look())
            return
        with Live(look(), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(watch)
                live.update(look())
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot read the fleet from {base}: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    app.command("status")(status)
