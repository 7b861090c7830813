"""The GPU catalog is the fit of the shipped H200 table, reproduces it, and predicts what it was not fitted on."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.perf import engine_profile, get_hardware
from switchboard.perf.gpu_calibration import (
    FITTED_FIELDS,
    FORWARD_TABLE,
    MIXED_TABLE,
    errors,
    fit_base,
    fit_hardware,
    leave_one_size_out,
    load_table,
    model_specs,
    predict_s,
    timed_steps,
)

GPU_KINDS = ["l4", "a10g", "a100-80gb", "h100", "h200"]


@pytest.fixture(scope="module")
def forward():
    table = load_table(FORWARD_TABLE)
    return table, timed_steps(table), model_specs(table)


@pytest.fixture(scope="module")
def mixed():
    table = load_table(MIXED_TABLE)
    return table, timed_steps(table), model_specs(table)


def test_the_shipped_table_has_the_rows_the_fit_is_judged_on(forward):
    _, steps, specs = forward
    groups = {s.group for s in steps}
    assert {"prefill", "decode-graph", "decode-eager"} <= groups
    assert set(specs) == {"1b", "8b"} and len(steps) == 28


def test_the_catalog_h200_reproduces_the_table(forward):
    """The issue's bounds are median <= 10%, max <= 30%; the fit does far better, and this holds it there."""
    _, steps, specs = forward
    found = errors(get_hardware("h200"), steps, specs)
    for group in ("prefill", "decode-graph"):
        assert found[group].median <= 0.02 and found[group].max <= 0.05, (group, found[group])


def test_the_catalog_is_the_fit_rounded(forward):
    table, steps, specs = forward
    catalog = get_hardware("h200")
    fitted = fit_hardware(fit_base(table, catalog), steps, specs)  # starts from fixed values, not the catalog's
    assert catalog.bandwidth_efficiency == pytest.approx(fitted.bandwidth_efficiency, rel=0.002)  # measured
    for field in FITTED_FIELDS:
        assert getattr(catalog, field) == pytest.approx(getattr(fitted, field), rel=0.02), field


def test_a_size_left_out_of_the_fit_is_still_predicted_within_the_issue_max(forward):
    """What the owners check on held-back sizes, with the issue's bounds (median <= 10%, max <= 30%), from one
    size only."""
    table, steps, specs = forward
    held_out = leave_one_size_out(fit_base(table, get_hardware("h200")), steps, specs)
    assert set(held_out) == {"1b", "8b"}
    for name, found in held_out.items():
        for group in ("prefill", "decode-graph"):
            assert found[group].median <= 0.10 and found[group].max <= 0.30, (name, group, found[group])


def test_mixed_steps_are_predicted_without_being_fitted(mixed):
    """Chunked prefill's cost: a step carrying decodes and a prompt chunk, never seen by the fit."""
    _, steps, specs = mixed
    found = errors(get_hardware("h200"), steps, specs)
    assert found["mixed-graph"].median <= 0.03 and found["mixed-graph"].max <= 0.06
    # The issue's example: 32 decodes and a 512-token chunk take 19.6 ms together, 23.3 ms run apart.
    h200, spec = get_hardware("h200"), specs["8b"]
    by_shape = {(s.num_decode_seqs, s.prompt_tokens_per_seq): s for s in steps if s.cuda_graphs}
    together = predict_s(h200, spec, by_shape[32, 512])
    apart = predict_s(h200, spec, by_shape[32, 0]) + predict_s(h200, spec, by_shape[0, 512])
    assert together == pytest.approx(0.0196, rel=0.05)
    assert apart == pytest.approx(0.0233, rel=0.06)
    assert together < apart


def test_other_gpu_kinds_share_the_h200_efficiencies_and_differ_by_datasheet():
    h200 = get_hardware("h200")
    for kind in GPU_KINDS:
        hw = get_hardware(kind)
        for field in FITTED_FIELDS + ("bandwidth_efficiency", "step_overhead_s", "cuda_graphs", "chunked_prefill",
                                      "max_num_batched_tokens", "process_start_s", "load_bandwidth_bytes_per_s"):
            assert getattr(hw, field) == getattr(h200, field), (kind, field)
    assert get_hardware("cpu").chunked_prefill is False and get_hardware("cpu").attention_efficiency is None


def test_cold_start_is_the_measured_parts(forward):
    """A fresh process with torch and a CUDA context, then the weights from the page cache (the table's sum)."""
    table, _, _ = forward
    p = engine_profile(8.030261248, "h200")
    assert p.cold_start_s == pytest.approx(table["cold_start"]["measured_parts_s"], rel=0.02)


def test_eager_steps_are_never_faster_than_graph_steps():
    p = engine_profile(8, "h200")
    for args in ((0, 0, 128, 128 * 128), (32, 32 * 1024, 0, 0), (8, 8000, 512, 512 * 512)):
        assert p.step_time_s(*args, cuda_graphs=False) >= p.step_time_s(*args, cuda_graphs=True)


@settings(deadline=None)  # no timing assertions: a loaded CI machine must not fail these
@given(kind=st.sampled_from(GPU_KINDS + ["cpu"]), counts=st.tuples(*[st.integers(0, 5000)] * 4),
       which=st.integers(0, 3), extra=st.integers(1, 5000), graphs=st.booleans())
def test_a_step_with_more_work_is_never_faster(kind, counts, which, extra, graphs):
    p = engine_profile(0.135 if kind == "cpu" else 8, kind, bytes_per_param=0.625 if kind == "cpu" else 2.0)
    more = list(counts)
    more[which] += extra
    assert p.step_time_s(*more, cuda_graphs=graphs) >= p.step_time_s(*counts, cuda_graphs=graphs)
