"""Workloads: the real trace loads, scaling and superposition keep every request, randomness is seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchboard.sim import workload as wl


@pytest.fixture(scope="module")
def azure() -> wl.Workload:
    return wl.load_azure_trace()


def test_azure_trace_loads_whole_hour(azure):
    assert len(azure) == 19366  # every data row of the CSV
    assert azure.arrival_s[0] == 0.0
    assert 3400 < azure.duration_s < 3600
    assert azure.num_prompt_tokens.min() >= 1 and azure.num_output_tokens.min() >= 1
    assert np.all(np.diff(azure.arrival_s) >= 0)
    assert 1000 < azure.num_prompt_tokens.mean() < 1300


def test_malformed_trace_names_the_line(tmp_path):
    bad = tmp_path / "t.csv"
    bad.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,10,5\n2023-11-16 18:15:47,x,5\n")
    with pytest.raises(ValueError, match=r"t\.csv:3"):
        wl.load_azure_trace(bad)


def test_scale_time_keeps_requests_and_order(azure):
    fast = wl.scale_time(azure, 0.5)
    assert len(fast) == len(azure)
    assert fast.duration_s == pytest.approx(azure.duration_s / 2)
    with pytest.raises(ValueError):
        wl.scale_time(azure, 0)


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=5), seed=st.integers(0, 2**32 - 1))
def test_superpose_is_a_sorted_union(sizes, seed):
    rng = np.random.default_rng(seed)
    parts = [wl.Workload.from_arrays(rng.uniform(0, 100, n), rng.integers(1, 100, n), rng.integers(1, 100, n))
             for n in sizes]
    offsets = list(rng.uniform(0, 50, len(parts)))
    merged = wl.superpose(parts, offsets)
    assert len(merged) == sum(sizes)
    assert np.all(np.diff(merged.arrival_s) >= 0)
    for i, (p, o) in enumerate(zip(parts, offsets)):
        mine = merged.arrival_s[merged.tenant == i]
        np.testing.assert_allclose(np.sort(mine), np.sort(p.arrival_s + o))
    assert merged.num_prompt_tokens.sum() == sum(p.num_prompt_tokens.sum() for p in parts)


def test_synthetic_arrivals_are_seeded_and_have_the_right_rate():
    a = wl.poisson_arrivals(np.random.default_rng(1), 10.0, 1000.0)
    b = wl.poisson_arrivals(np.random.default_rng(1), 10.0, 1000.0)
    np.testing.assert_array_equal(a, b)
    assert 9000 < len(a) < 11000
    bursty = wl.gamma_arrivals(np.random.default_rng(1), 10.0, 1000.0, cv=3.0)
    gaps = np.diff(bursty)
    assert 2.0 < gaps.std() / gaps.mean() < 4.0
    assert np.all((bursty >= 0) & (bursty < 1000.0))


def test_many_experts_popularity_is_skewed():
    names = [f"e{i}" for i in range(20)]
    w = wl.many_experts_workload(np.random.default_rng(0), names, 5.0, 3600.0, zipf_exponent=1.2)
    counts = np.bincount(w.pinned_expert, minlength=20)
    assert counts[0] > 5 * counts[10] and counts.sum() == len(w)
    assert w.expert_names == tuple(names)


def test_superpose_reindexes_pinned_experts():
    a = wl.Workload.from_arrays([0.0], [1], [1], pinned_expert=np.array([0]), expert_names=("x",))
    b = wl.Workload.from_arrays([1.0, 2.0], [1, 1], [1, 1], pinned_expert=np.array([0, -1]), expert_names=("y",))
    merged = wl.superpose([a, b])
    assert merged.expert_names == ("x", "y")
    assert list(merged.pinned_expert) == [0, 1, wl.NO_EXPERT]


def test_shared_prefixes_follow_their_requests_and_never_exceed_the_prompt():
    w = wl.Workload.from_arrays([2.0, 1.0, 0.0], [30, 10, 50], [1, 1, 1], num_prefix_tokens=np.array([24, 24, 0]))
    assert list(w.num_prompt_tokens) == [50, 10, 30]
    assert list(w.num_prefix_tokens) == [0, 10, 24]  # sorted with their requests; 24 clipped to a 10-token prompt
    merged = wl.superpose([w, wl.Workload.from_arrays([0.5], [5], [1])])
    assert list(merged.num_prefix_tokens) == [0, 0, 10, 24]
    assert list(wl.Workload.from_arrays([0.0], [40], [1], num_prefix_tokens=24).num_prefix_tokens) == [24]


def test_routing_data_and_prompts():
    data = wl.load_routing_data()
    assert len(data) == 5608 and len(data.model_names) == 9
    assert data.scores.shape == (5608, 9) and 0 <= data.scores.min() and data.scores.max() <= 1
    w = wl.attach_prompts(wl.load_azure_trace().head(100), len(data), np.random.default_rng(3))
    assert np.all((w.prompt_index >= 0) & (w.prompt_index < len(data)))
