"""PNG plots of simulator results (matplotlib, Agg backend; imported only when a plot is written)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COMPARE_PANELS = (
    ("usd_cost", "USD cost", False),
    ("p99_ttft_s", "p99 TTFT (s, log)", True),
    ("slo_attainment", "SLO attainment (TTFT & TPOT)", False),
    ("quality", "delivered quality (mean true score)", False),
    ("cold_starts", "cold starts", False),
    ("idle_replica_s", "idle replica-seconds", False),
)


def plot_compare(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """One bar per policy set in each of six panels."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    names = [r["policy"] for r in rows]
    for ax, (key, label, log) in zip(axes.flat, COMPARE_PANELS):
        values = [r.get(key) or 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color=[f"C{i}" for i in range(len(rows))])
        ax.set_xticks(range(len(rows)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        if log and any(v > 0 for v in values):
            ax.set_yscale("log")
    fig.suptitle(title or "switchboard sim compare")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(rows: Sequence[dict], path: Path, *, quality_floor: float, chosen: dict | None) -> Path:
    """Cost vs delivered quality of every configuration tried, coloured by p99 TTFT; the cost-quality Pareto
    frontier as a line; feasible configurations (quality floor and latency SLO met) ringed; the choice starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    cost = [r["usd_cost"] for r in rows]
    quality = [r["quality"] or 0.0 for r in rows]
    p99 = [max(r["p99_ttft_s"] or 1e-3, 1e-3) for r in rows]
    import matplotlib.colors as colors

    sc = ax.scatter(cost, quality, c=p99, cmap="viridis_r", norm=colors.LogNorm(), s=36, zorder=3)
    fig.colorbar(sc, ax=ax, label="p99 TTFT (s)")
    feasible = [r for r in rows if r.get("feasible")]
    ax.scatter([r["usd_cost"] for r in feasible], [r["quality"] for r in feasible], s=120, facecolors="none",
               edgecolors="tab:green", linewidths=1.5, label="meets quality floor and latency SLO", zorder=4)
    frontier = pareto_frontier(rows)
    ax.plot([r["usd_cost"] for r in frontier], [r["quality"] for r in frontier], "k--", lw=1, label="cost-quality frontier")
    if chosen is not None:
        ax.scatter([chosen["usd_cost"]], [chosen["quality"]], marker="*", s=300, c="tab:red", label="cheapest feasible",
                   zorder=5)
    ax.axhline(quality_floor, color="tab:red", lw=0.8, ls=":", label=f"quality floor {quality_floor:g}")
    ax.set_xlabel("USD cost of the run")
    ax.set_ylabel("delivered quality (mean true score)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("switchboard sim plan: quality-cost-latency frontier")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def pareto_frontier(rows: Sequence[dict]) -> list[dict]:
    """Rows not dominated in (lower cost, higher quality), by increasing cost."""
    out: list[dict] = []
    best_q = float("-inf")
    for r in sorted(rows, key=lambda r: (r["usd_cost"], -(r["quality"] or 0.0))):
        q = r["quality"] or 0.0
        if q > best_q:
            out.append(r)
            best_q = q
    return out
