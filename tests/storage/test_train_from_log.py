"""`switchboard router train --from-log URL`: logged requests with feedback become a router directory."""

from __future__ import annotations

import json
import random

import typer
from typer.testing import CliRunner

from switchboard.cli.router import register

from .helpers import FakeLease, make_log

EXPERTS = {"cheap": (0.1, 0.1), "mid": (0.2, 0.4), "big": (0.9, 0.9)}


def _cli() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        pass

    return app


async def _fill_log(url: str) -> None:
    """30 prompts each answered by every expert and scored (code suits `mid`, cooking `cheap`), plus noise the
    export must skip: a prompt scored for one expert only, and a request without feedback."""
    rng = random.Random(7)
    log = make_log(url, flush_interval_s=3600)
    await log.start()
    for i in range(30):
        is_code = i % 2 == 0
        prompt = f"Write a python function number {i} that sorts a list" if is_code else f"How long should I boil pasta for recipe {i}?"
        for expert, p_good in {"cheap": 0.1 if is_code else 0.9, "mid": 0.9 if is_code else 0.1, "big": 0.6}.items():
            request_id = f"chatcmpl-{i}-{expert}"
            log.finish(log.begin(request_id, "chat", expert, None, prompt), "ok", 200, 0.0, lease=FakeLease())
            log.add_feedback(request_id, float(rng.random() < p_good))
    log.finish(log.begin("only-one", "chat", "big", None, "A prompt only big answered"), "ok", 200, 0.0, lease=FakeLease())
    log.add_feedback("only-one", 1.0)
    log.finish(log.begin("no-feedback", "chat", "mid", None, "Nobody scored this"), "ok", 200, 0.0, lease=FakeLease())
    await log.stop()


async def test_train_from_log_writes_a_router(db_url, tmp_path):
    await _fill_log(db_url)
    models = tmp_path / "models.json"
    models.write_text(json.dumps({e: {"input_price_per_mtok": p[0], "output_price_per_mtok": p[1]} for e, p in EXPERTS.items()}))
    out = tmp_path / "router"
    args = ["router", "train", "--from-log", db_url, "--models", str(models), "--out", str(out), "--strategy", "knn",
            "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "30 logged prompts with feedback for every one of cheap, mid, big" in result.output
    lines = [json.loads(line) for line in (out / "training-from-log.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and all(set(line["scores"]) == set(EXPERTS) for line in lines)
    router = json.loads((out / "router.json").read_text())
    assert router["strategy"] == "knn" and (out / "embedder").is_dir()


def test_train_from_log_explains_what_is_missing(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    import asyncio

    asyncio.run(_start_and_stop(url))
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"cheap": {"input_price_per_mtok": 0.1, "output_price_per_mtok": 0.1}}))
    runner = CliRunner()
    result = runner.invoke(_cli(), ["router", "train", "--from-log", url, "--models", str(models), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "no feedback in the log" in result.output
    result = runner.invoke(_cli(), ["router", "train", "--models", str(models), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "give --data, --from-log, or both" in result.output


async def _start_and_stop(url: str) -> None:
    log = make_log(url)
    await log.start()
    await log.stop()


async def _fill_bandit_log(url: str) -> list[str]:
    """Real traffic: each prompt answered by one expert and scored once (code fails on gemma, passes on qwen)."""
    log = make_log(url, flush_interval_s=3600)
    await log.start()
    prompts = []
    for i in range(12):
        prompt = f"Write a python function number {i} that sorts a list"
        expert = "gemma-2-9b-it" if i % 2 else "qwen2.5-7b-instruct"
        log.finish(log.begin(f"r{i}", "chat", expert, None, prompt), "ok", 200, 0.0, lease=FakeLease())
        log.add_feedback(f"r{i}", 0.0 if expert == "gemma-2-9b-it" else 1.0)
        prompts.append(prompt)
    await log.stop()
    return prompts


async def test_train_from_log_fills_the_gaps_of_real_traffic_and_adds_to_the_data(db_url, tmp_path):
    from importlib import resources

    from switchboard.router import load_default_router

    await _fill_bandit_log(db_url)
    routing = resources.files("switchboard.data").joinpath("routing")
    models = tmp_path / "models.json"
    shipped = json.loads(routing.joinpath("models.json").read_text())
    models.write_text(json.dumps({e: shipped[e] for e in ("gemma-2-9b-it", "qwen2.5-7b-instruct", "codegemma-7b")}))
    data = tmp_path / "base.jsonl"  # a few shipped lines, so --data and --from-log train together
    data.write_text("".join(routing.joinpath("train.jsonl").read_text().splitlines(keepends=True)[:40]))
    out = tmp_path / "router"
    strict = CliRunner().invoke(_cli(), ["router", "train", "--from-log", db_url, "--models", str(models), "--out", str(out)])
    assert strict.exit_code == 2 and "--impute-from" in strict.output  # no prompt has feedback for every expert
    args = ["router", "train", "--data", str(data), "--from-log", db_url, "--impute-from", "default", "--models", str(models),
            "--out", str(out), "--strategy", "knn", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    assert "12 logged prompts with feedback; 24 of 36 scores for gemma-2-9b-it, qwen2.5-7b-instruct, codegemma-7b imputed from default" in result.output
    lines = [json.loads(line) for line in (out / "training-from-log.jsonl").read_text().splitlines()]
    packaged = load_default_router()
    for line in lines:
        number = int(line["prompt"].split()[5])
        scored = "gemma-2-9b-it" if number % 2 else "qwen2.5-7b-instruct"
        assert line["scores"][scored] == (0.0 if number % 2 else 1.0)
        predicted = packaged.predict_quality([line["prompt"]])[0, packaged.experts.index("codegemma-7b")]
        assert abs(line["scores"]["codegemma-7b"] - predicted) < 1e-6
    assert json.loads((out / "router.json").read_text())["report"]["num_examples"] == 52
