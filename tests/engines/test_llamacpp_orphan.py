"""A llama.cpp worker whose parent is killed without stopping it (a Ray worker killed with its actor, a
gateway killed by SIGKILL) exits by itself instead of holding its memory forever."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from switchboard.engines.llamacpp.paths import default_model_path

pytestmark = pytest.mark.llamacpp

PARENT = textwrap.dedent("""
    import os, subprocess, sys
    child = subprocess.Popen([sys.executable, "-m", "switchboard.engines.llamacpp.worker", "--model", sys.argv[1],
                              "--threads", "1", "--n-ctx", "256"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    print(child.pid, flush=True)
    child.stdout.readline()  # "started"
    child.stdout.readline()  # "ready": serving, and no longer writing to this pipe
    os._exit(0)  # killed without stopping the worker
""")


def test_worker_exits_when_its_parent_dies():
    parent = subprocess.run([sys.executable, "-c", PARENT, str(default_model_path())], capture_output=True, text=True, timeout=120)
    worker_pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 30
    while psutil.pid_exists(worker_pid) and psutil.Process(worker_pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the orphaned worker is still running"
        time.sleep(0.2)
