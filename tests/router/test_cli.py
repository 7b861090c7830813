"""`switchboard router train | route | eval` through typer's CliRunner, on a small synthetic corpus."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from switchboard.cli.router import register

from .helpers import synthetic_examples, write_examples, write_models


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:  # keeps "router" a sub-command even when it is the only one
        pass

    return app


def test_train_route_eval(cli, tmp_path, rng):
    data = write_examples(tmp_path / "train.jsonl", synthetic_examples(rng, 60))
    models = write_models(tmp_path / "models.json")
    out = tmp_path / "r"
    runner = CliRunner()
    args = ["router", "train", "--data", str(data), "--models", str(models), "--out", str(out), "--folds", "2"]
    result = runner.invoke(cli, args + ["--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "strategy:" in result.output and (out / "router.json").exists() and (out / "embedder").is_dir()

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Write a python function to sort", "id": 3}\n{"prompt": "Boil pasta how long?"}\n')
    result = runner.invoke(cli, ["router", "route", "--router", str(out), "--prompts", str(prompts), "--cost-weight", "0.1"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["index"] for line in lines] == [0, 1]
    assert all(line["model"] in {"cheap", "mid", "big"} for line in lines)

    plot = tmp_path / "curve.png"
    result = runner.invoke(cli, ["router", "eval", "--router", str(out), "--data", str(data), "--plot", str(plot), "--folds", "2"])
    assert result.exit_code == 0, result.output
    assert "oracle" in result.output and "APGR" in result.output and "nested selection" in result.output
    assert "random" in result.output and "leave-one-task-out:" not in result.output  # no task labels in this data
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_train_with_a_named_strategy_and_bad_input(cli, tmp_path, rng):
    models = write_models(tmp_path / "models.json")
    data = write_examples(tmp_path / "train.jsonl", synthetic_examples(rng, 30))
    runner = CliRunner()
    base = ["router", "train", "--models", str(models), "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(cli, base + ["--data", str(data), "--strategy", "knn"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "router.json").read_text())["strategy"] == "knn"
    result = runner.invoke(cli, base + ["--data", str(data), "--strategy", "nope"])
    assert result.exit_code == 2 and "--strategy" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "scores": {"cheap": 1, "mid": 0, "big": 1}}\n{"prompt": 5}\n')
    result = runner.invoke(cli, base + ["--data", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:2" in result.output


def test_train_chooses_among_the_candidates_given(cli, tmp_path, rng):
    models = write_models(tmp_path / "models.json")
    data = write_examples(tmp_path / "train.jsonl", synthetic_examples(rng, 40))
    runner = CliRunner()
    base = ["router", "train", "--models", str(models), "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c"),
            "--data", str(data), "--folds", "2"]
    result = runner.invoke(cli, base + ["--candidates", "ensemble-format3"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r" / "router.json").read_text())
    assert report["strategy"] == "ensemble" and json.dumps(report).count("ensemble-format3") >= 1
    result = runner.invoke(cli, base + ["--candidates", "default,nope"])
    assert result.exit_code == 2 and "nope" in result.output
