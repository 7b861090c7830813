"""Every file shipped in examples/ loads: the server configs (examples/engines/) as configs, whose `process`
command templates fill with the placeholders docs/engines.md documents, and the simulator's clusters
(examples/clusters/) as cluster specs (docs that stay true)."""

from pathlib import Path

import pytest

from switchboard.config import load_config
from switchboard.engines.process import fill_template
from switchboard.sim.cluster import load_cluster

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"
ENGINE_EXAMPLES = sorted((EXAMPLES_DIR / "engines").glob("*.yaml"))
CLUSTER_EXAMPLES = sorted((EXAMPLES_DIR / "clusters").glob("*.yaml"))
DOCUMENTED_PLACEHOLDERS = {
    "port": "8000", "host": "127.0.0.1", "model": "m", "model_path": "/models/m.gguf",
    "devices": "0,1", "num_devices": "2", "python": "/usr/bin/python3",
}


def test_the_engine_examples_are_all_there():
    names = {path.name for path in ENGINE_EXAMPLES}
    assert {"llamacpp-server.yaml", "vllm.yaml", "sglang.yaml", "tgi.yaml"} <= names


@pytest.mark.parametrize("path", ENGINE_EXAMPLES, ids=lambda path: path.name)
def test_engine_example_validates(path):
    config = load_config(path)
    for expert in config.experts:
        if expert.backend.kind == "process":
            argv = fill_template(expert.backend.command, DOCUMENTED_PLACEHOLDERS)
            assert not any("{" in part for part in argv), argv


@pytest.mark.parametrize("path", CLUSTER_EXAMPLES, ids=lambda path: path.name)
def test_cluster_example_loads(path):
    assert load_cluster(path).pools
