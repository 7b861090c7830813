"""The `process` backend on real server processes (a fake vLLM here; llama.cpp's real server in
tests/runtime/test_process_lifecycle.py): readiness, its own log, traffic through the openai engine, sleep and
wake with the server's own calls, crash detection, graceful stop then kill, and start failures that say why."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from switchboard.config import parse_config
from switchboard.engines.base import EngineError, EngineUnavailable, Finish, GenerationRequest, RawChunk
from switchboard.engines.factory import build_engine
from switchboard.engines.process import HttpCall, ProcessEngine, fill_template

FAKE_VLLM = [sys.executable, "-m", "switchboard.testing.fake_vllm", "--port", "{port}", "--model", "{model}"]


def _request(max_tokens: int = 5, stream: bool = False) -> GenerationRequest:
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": stream}
    return GenerationRequest("r1", "chat", body, max_tokens, 3)


def _engine(tmp_path, command=FAKE_VLLM, **kwargs) -> ProcessEngine:
    kwargs = {"start_timeout_s": 60.0, **kwargs}
    return ProcessEngine("fake", command, model="fake-model", log_dir=tmp_path,
                         sleep_call=HttpCall("POST", "/sleep?level=1"), wake_call=HttpCall("POST", "/wake_up"), **kwargs)


async def test_start_serve_sleep_wake_stop(tmp_path):
    engine = _engine(tmp_path)
    await engine.start()
    try:
        assert engine.is_running and engine.last_cold_start.ready_s >= engine.last_cold_start.spawn_s
        answer = await engine.complete(_request(5))
        assert answer.text.startswith("fake vllm answer 5") and answer.finish.usage.completion_tokens == 5
        events = [e async for e in engine.stream(_request(3, stream=True))]
        # Passed through as the server's own SSE bytes (as for any `openai` upstream), closed by one Finish.
        relayed = b"".join(e.data for e in events if isinstance(e, RawChunk))
        assert b'"content": "fake"' in relayed and b'" answer"' in relayed and isinstance(events[-1], Finish)

        await engine.sleep()
        assert engine.is_asleep and engine.is_running  # the process stays
        with pytest.raises(EngineError) as asleep:
            await engine.complete(_request())
        assert asleep.value.status >= 500
        await engine.wake()
        assert not engine.is_asleep and engine.last_wake.call == "wake"
        assert (await engine.complete(_request(4))).finish.usage.completion_tokens == 4
        pid = engine.process.pid
    finally:
        await engine.stop()
    assert not engine.is_running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert engine.log_path is not None and engine.log_path.parent == tmp_path


async def test_a_crash_is_seen_and_a_restart_is_a_fresh_process(tmp_path):
    engine = _engine(tmp_path)
    await engine.start()
    first_pid = engine.process.pid
    os.kill(first_pid, signal.SIGKILL)
    await engine.process.wait()
    assert not engine.is_running
    with pytest.raises(EngineUnavailable):
        await engine.complete(_request())
    await engine.start()
    try:
        assert engine.is_running and engine.process.pid != first_pid
        assert (await engine.complete(_request(2))).finish.usage.completion_tokens == 2
    finally:
        await engine.stop()


async def test_stop_kills_a_server_that_ignores_sigterm(tmp_path):
    script = ("import sys, uvicorn.server; uvicorn.server.Server.handle_exit = lambda *args: None;"  # deaf to SIGTERM
              "from switchboard.testing.fake_vllm import main; main(sys.argv[1:])")
    command = [sys.executable, "-c", script, "--port", "{port}", "--model", "{model}"]
    engine = _engine(tmp_path, command, stop_timeout_s=0.5)
    await engine.start()
    process = engine.process
    await engine.stop()
    assert process.returncode == -signal.SIGKILL


async def test_a_server_that_exits_before_ready_fails_the_start_with_its_log(tmp_path):
    command = [sys.executable, "-c", "import sys; print('no such model: {model}'); sys.exit(3)"]
    engine = _engine(tmp_path, command)
    with pytest.raises(EngineUnavailable) as failed:
        await engine.start()
    assert "exited with code 3" in failed.value.detail and "no such model: fake-model" in failed.value.detail
    assert not engine.is_running


async def test_a_server_never_ready_times_out(tmp_path):
    engine = _engine(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], start_timeout_s=0.5)
    with pytest.raises(EngineUnavailable, match="not ready"):
        await engine.start()
    assert engine.process is None


async def test_a_missing_program_is_unavailable_not_a_crash(tmp_path):
    with pytest.raises(EngineUnavailable, match="cannot run"):
        await _engine(tmp_path, ["/nonexistent/server", "--port", "{port}"]).start()


def test_template_placeholders_and_devices(tmp_path):
    assert fill_template(["serve", "{model}", "--port", "{port}"], {"model": "m", "port": "1"}) == ["serve", "m", "--port", "1"]
    with pytest.raises(ValueError, match="placeholder {gpu}"):
        fill_template(["--gpu", "{gpu}"], {"port": "1"})
    engine = _engine(tmp_path, ["x", "--tp", "{num_devices}", "--dev", "{devices}"], devices=(2, 3))
    argv, env = engine._argv_and_env(5)
    assert argv == ["x", "--tp", "2", "--dev", "2,3"] and env["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_config_builds_a_process_engine_and_checks_sleep_and_wake_come_together():
    config = parse_config("""
experts:
  - id: vllm-8b
    backend: {kind: process, command: ["vllm", "serve", "{model}", "--port", "{port}"], model: meta-llama/Llama-3.1-8B-Instruct,
              sleep: [POST, "/sleep?level=1"], wake: [POST, /wake_up]}
""")
    engine = build_engine(config.experts[0])
    assert isinstance(engine, ProcessEngine) and engine.can_sleep and engine.model == "meta-llama/Llama-3.1-8B-Instruct"
    with pytest.raises(Exception, match="sleep and wake must be declared together"):
        parse_config("""
experts:
  - id: x
    backend: {kind: process, command: [x], sleep: [POST, /sleep]}
""")


async def test_concurrent_starts_share_one_process(tmp_path):
    engine = _engine(tmp_path)
    await asyncio.gather(engine.start(), engine.start(), engine.start())
    try:
        assert engine.is_running
    finally:
        await engine.stop()
