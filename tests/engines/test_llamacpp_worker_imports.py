"""The worker process imports what it serves with and nothing of the gateway's HTTP client machinery: every
import is on a cold start's path (a new process) or a standby worker's."""

from __future__ import annotations

import subprocess
import sys


def test_the_worker_module_imports_no_http_client_nor_the_engine():
    code = ("import sys, switchboard.engines.llamacpp.worker; "
            "print(sorted(m for m in ('httpx', 'aiohttp', 'switchboard.engines.llamacpp.engine', "
            "'switchboard.engines.openai_upstream') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_still_gives_the_engine_on_use():
    from switchboard.engines.llamacpp import LlamaCppEngine, default_model_path

    assert LlamaCppEngine.__name__ == "LlamaCppEngine" and callable(default_model_path)
