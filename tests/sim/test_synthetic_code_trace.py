"""`benchmarks/synthetic_code_trace.py`: the synthetic code-like stand-in keeps the conversation trace's arrivals,
has the token shape it claims, is reproducible from its seed, and loads as a `--trace`."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from switchboard.sim.workload import load_azure_trace


def _load_script():
    # A benchmark script, not a package module: load it by path so the test runs exactly its code.
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "synthetic_code_trace.py"
    spec = importlib.util.spec_from_file_location("synthetic_code_trace", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_code_like_trace_keeps_arrivals_and_has_the_stated_shape(tmp_path: Path) -> None:
    script = _load_script()
    out = tmp_path / "code_like.csv"
    num_rows = script.write_code_like_trace(out, seed=0)
    conv, code = load_azure_trace(), load_azure_trace(out)

    assert num_rows == len(conv) == len(code)
    np.testing.assert_array_equal(code.arrival_s, conv.arrival_s)
    assert 1400 <= np.median(code.num_prompt_tokens) <= 1600
    assert 11 <= np.median(code.num_output_tokens) <= 15
    assert code.num_prompt_tokens.min() >= 16 and code.num_prompt_tokens.max() <= 8000
    assert code.num_output_tokens.min() >= 1 and code.num_output_tokens.max() <= 1000


def test_code_like_trace_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    script = _load_script()
    paths = [tmp_path / f"{name}.csv" for name in ("a", "b", "c")]
    for path, seed in zip(paths, (0, 0, 1)):
        script.write_code_like_trace(path, seed=seed)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
