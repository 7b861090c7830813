"""`switchboard status` prints the fleet of a running gateway; JSON logs carry the request id."""

from __future__ import annotations

import io
import json
import logging

import httpx
from typer.testing import CliRunner

from switchboard.cli.main import _register_subcommands, app as cli_app
from switchboard.gateway.app import build_app
from switchboard.observability.logs import JsonFormatter
from switchboard.testing.servers import serve_in_thread


def test_status_shows_experts_replicas_and_decisions(config):
    with serve_in_thread(build_app(config)) as url:
        httpx.post(url + "/v1/completions", json={"model": "paid", "prompt": "x", "max_tokens": 2}).raise_for_status()
        _register_subcommands()
        result = CliRunner().invoke(cli_app, ["status", "--url", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("Workers", "gpu-a", "Experts", "paid", "spare", "warm", "StartReplica", "warm-at-start"):
        assert text in result.output


def test_status_names_an_unreachable_gateway():
    _register_subcommands()
    result = CliRunner().invoke(cli_app, ["status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot read the fleet from http://127.0.0.1:9" in result.output


def test_json_access_log_carries_the_request_id_of_the_response(config):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("switchboard.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with serve_in_thread(build_app(config, access_log=True)) as url:
            response = httpx.post(url + "/v1/chat/completions", json={"model": "paid", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    finally:
        access.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    line = lines[0]
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["msg"] == "request" and line["expert"] == "paid" and line["outcome"] == "ok" and line["status"] == 200
    assert line["replica"] == response.headers["x-switchboard-replica"]
    assert line["completion_tokens"] == response.json()["usage"]["completion_tokens"]
