"""`switchboard sim` as a user calls it: JSON shapes, plots written, bad input is a clean error."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from switchboard.cli.sim import register

CLUSTER = str(Path(__file__).resolve().parents[2] / "examples" / "clusters" / "hetero-32.yaml")


def app() -> typer.Typer:
    root = typer.Typer()
    root.command("noop")(lambda: None)
    register(root)
    return root


def test_run_json_has_the_documented_fields():
    result = CliRunner().invoke(app(), ["sim", "run", "--cluster", CLUSTER, "--num-requests", "60", "--json", "--router", "task-prior"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)
    for key in ("slo_attainment", "ttft_slo_attainment", "p50_ttft_s", "p99_ttft_s", "p50_tpot_s", "p99_tpot_s",
                "quality", "usd_cost", "replica_hours_by_hardware", "cold_starts", "idle_replica_s"):
        assert key in row
    assert row["num_requests"] == 60


def test_the_default_cluster_is_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # was "examples/clusters/hetero-32.yaml: No such file or directory" outside the checkout
    result = CliRunner().invoke(app(), ["sim", "run", "--num-requests", "20", "--json", "--router", "task-prior"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_requests"] == 20


def test_compare_json_is_a_list_per_policy_and_writes_a_plot(tmp_path):
    result = CliRunner().invoke(app(), ["sim", "compare", "--cluster", CLUSTER, "--num-requests", "40", "--json",
                                        "--router", "task-prior", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["policy"] for r in rows] == ["static", "fixed-keepalive", "quality-only-routing", "switchboard"]
    for r in rows:
        assert {"policy", "usd_cost", "slo_attainment", "p99_ttft_s", "cold_starts", "idle_replica_s",
                "quality"} <= r.keys()
    assert (tmp_path / "compare.png").stat().st_size > 0
    assert json.loads((tmp_path / "compare.config.json").read_text())["cluster"]["name"] == "hetero-32"


def test_plan_finds_a_frontier(tmp_path):
    result = CliRunner().invoke(app(), ["sim", "plan", "--cluster", CLUSTER, "--num-requests", "40", "--json",
                                        "--max-mixes", "2", "--cost-weights", "0,0.5", "--keepalive-s", "600",
                                        "--quality-floor", "0.0", "--ttft-attainment", "0.0", "--router", "task-prior",
                                        "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["tried"]) == 4 and out["chosen"] is not None
    assert out["chosen"]["usd_cost"] == min(r["usd_cost"] for r in out["tried"])
    assert (tmp_path / "plan-frontier.png").stat().st_size > 0


def test_bad_inputs_are_clean_errors(tmp_path):
    result = CliRunner().invoke(app(), ["sim", "run", "--cluster", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "error:" in result.output
    result = CliRunner().invoke(app(), ["sim", "run", "--cluster", CLUSTER, "--policy", "nope", "--num-requests", "5",
                                        "--router", "task-prior"])
    assert result.exit_code == 2 and "unknown policy set" in result.output
    result = CliRunner().invoke(app(), ["sim", "run", "--cluster", CLUSTER, "--num-requests", "5",
                                        "--router", str(tmp_path)])
    assert result.exit_code == 2 and "cannot load router" in result.output


def test_the_packaged_router_picks_the_experts():
    result = CliRunner().invoke(app(), ["sim", "run", "--cluster", CLUSTER, "--num-requests", "30", "--json", "--router", "default"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["requests_by_expert"]
