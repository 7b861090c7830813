"""The conformance suite's servers (a recording upstream, the gateway in front of it, the same with API keys
on) and the official Node client, installed with `npm ci` from the pinned package-lock.json when missing."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from switchboard.config import parse_config
from switchboard.gateway.app import build_app
from switchboard.storage import database
from switchboard.tenants.keys import KeyLimits
from switchboard.tenants.store import create_key
from switchboard.testing.canned_upstream import RecordingUpstream
from switchboard.testing.servers import serve_in_thread

from .cases import EMBEDDING_EXPERT, EXPERT, UPSTREAM_EMBEDDING_MODEL, UPSTREAM_MODEL

NODE_DIR = Path(__file__).parent / "node"
ADMIN_KEY = "admin-" + "c" * 40


def gateway_config(upstream_url: str, extra: str = "") -> str:
    return f"""
experts:
  - id: {EXPERT}
    backend: {{kind: openai, base_url: "{upstream_url}", model: {UPSTREAM_MODEL}}}
embedding_experts:
  - id: {EMBEDDING_EXPERT}
    backend: {{kind: openai, base_url: "{upstream_url}", model: {UPSTREAM_EMBEDDING_MODEL}}}
{extra}"""


@pytest.fixture(scope="session")
def node() -> str:
    """The `node` binary, with the pinned packages (openai, zod, the AI SDK) installed beside run.mjs."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the Node client's conformance tests (Debian's nodejs and npm, or the machine image's)")
    if not all((NODE_DIR / "node_modules" / name / "package.json").is_file() for name in ("openai", "zod", "ai", "@ai-sdk/openai")):
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR, check=True, timeout=600)
    return node


def node_case(node: str, spec: dict[str, Any], timeout_s: float = 120) -> dict[str, Any]:
    """Runs one case with the official Node client (run.mjs; `spec` as its header says) and returns its JSON line."""
    done = subprocess.run([node, str(NODE_DIR / "run.mjs"), json.dumps(spec)], capture_output=True, text=True, timeout=timeout_s, cwd=NODE_DIR)
    assert done.returncode == 0, f"node failed ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def upstream():
    recording = RecordingUpstream()
    with serve_in_thread(recording) as url:
        yield recording, url + "/v1"


@pytest.fixture(scope="session")
def gateway(upstream):
    _, url = upstream
    with serve_in_thread(build_app(parse_config(gateway_config(url, "storage: {enabled: false}")))) as base:
        yield base


@pytest.fixture(scope="session")
def storing_gateway(upstream, tmp_path_factory):
    """A gateway that stores Responses and chat completions (SQLite in a scratch folder)."""
    _, url = upstream
    db = tmp_path_factory.mktemp("storing") / "log.db"
    with serve_in_thread(build_app(parse_config(gateway_config(url, f'storage: {{url: "sqlite:///{db}"}}')))) as base:
        yield base


@pytest.fixture(scope="session")
def keyed_gateway(upstream, tmp_path_factory):
    _, url = upstream
    db = f"sqlite:///{tmp_path_factory.mktemp('conformance') / 'keys.db'}"
    engine = database.open_engine(db)
    database.migrate(engine)
    create_key(engine, "conformance", "acme", KeyLimits())
    engine.dispose()
    config = parse_config(gateway_config(url, f'storage: {{url: "{db}"}}\nauth: {{enabled: true}}'))
    with serve_in_thread(build_app(config, environ={"SWITCHBOARD_ADMIN_KEY": ADMIN_KEY})) as base:
        yield base
