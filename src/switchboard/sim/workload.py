"""Workloads for the simulator: real traces, time scaling, superposition, synthetic arrivals, prompts.

A `Workload` is a struct of equal-length numpy arrays sorted by arrival time, so a 20k-request trace costs
microseconds to scale or merge. Token counts come from the trace (they carry the production length
distribution); the prompt *text* of each request is sampled from the routing data only to let the real router
choose an expert, whose *true* quality on that prompt is then known from the data.

Every random choice takes a `numpy.random.Generator` argument; nothing here touches global random state.

The Azure LLM inference trace 2023 (conversation) is from Patel et al., "Splitwise: Efficient Generative LLM
Inference Using Phase Splitting", ISCA 2024, released in Azure/AzurePublicDataset under CC-BY 4.0.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

NO_PROMPT = -1
"""`prompt_index` of a request that has no routing-data prompt attached."""
NO_EXPERT = -1
"""`pinned_expert` of a request that asks for `model: auto` (the router chooses)."""


def packaged_trace_path(name: str = "azure_llm_2023_conv.csv") -> Path:
    """Path of a trace that ships in `switchboard/data/traces/`."""
    from importlib.resources import files

    return Path(str(files("switchboard.data").joinpath("traces", name)))


def packaged_routing_path(name: str = "train.jsonl") -> Path:
    from importlib.resources import files

    return Path(str(files("switchboard.data").joinpath("routing", name)))


@dataclasses.dataclass(frozen=True)
class Workload:
    """Requests as parallel arrays, sorted by `arrival_s` (stable: ties keep their input order).

    - `arrival_s` (float64, seconds from the workload's start, >= 0)
    - `num_prompt_tokens`, `num_output_tokens` (int64, >= 1)
    - `tenant` (int32): which superposed trace a request came from
    - `prompt_index` (int32): row of the routing data, or `NO_PROMPT`
    - `pinned_expert` (int32): index into `expert_names` for requests that name a model, or `NO_EXPERT`
    - `num_prefix_tokens` (int32, >= 0): how many of the prompt's first tokens are a prefix that other requests
      share (a chat template's system prompt): an engine that has computed that prefix before reuses its KV
      cache (prefix caching, `switchboard.sim.engine`). Requests share a prefix when they give the same length
      (one shared prefix per length). 0: none (the Azure traces, which carry no prompt text).
    """

    arrival_s: np.ndarray
    num_prompt_tokens: np.ndarray
    num_output_tokens: np.ndarray
    tenant: np.ndarray
    prompt_index: np.ndarray
    pinned_expert: np.ndarray
    num_prefix_tokens: np.ndarray
    expert_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray) and len(value) != n:
                raise ValueError(f"Workload.{f.name} has {len(value)} entries, arrival_s has {n}")
        if n and (np.any(np.diff(self.arrival_s) < 0) or self.arrival_s[0] < 0):
            raise ValueError("Workload.arrival_s must be non-negative and sorted")

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    @classmethod
    def from_arrays(
        cls,
        arrival_s: Sequence[float] | np.ndarray,
        num_prompt_tokens: Sequence[int] | np.ndarray,
        num_output_tokens: Sequence[int] | np.ndarray,
        *,
        tenant: int | np.ndarray = 0,
        prompt_index: np.ndarray | None = None,
        pinned_expert: np.ndarray | None = None,
        num_prefix_tokens: int | np.ndarray = 0,
        expert_names: tuple[str, ...] = (),
    ) -> "Workload":
        """A workload from unsorted arrays (sorted here, stably). Token counts are clipped to >= 1, shared
        prefixes to [0, prompt tokens]."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        n = len(arrival)
        order = np.argsort(arrival, kind="stable")

        def col(value, dtype, fill):
            if value is None or np.isscalar(value):
                return np.full(n, fill if value is None else value, dtype=dtype)
            return np.asarray(value, dtype)[order]

        prompt = np.maximum(1, np.asarray(num_prompt_tokens, dtype=np.int64))[order]
        return cls(
            arrival_s=arrival[order],
            num_prompt_tokens=prompt,
            num_output_tokens=np.maximum(1, np.asarray(num_output_tokens, dtype=np.int64))[order],
            tenant=col(tenant, np.int32, 0),
            prompt_index=col(prompt_index, np.int32, NO_PROMPT),
            pinned_expert=col(pinned_expert, np.int32, NO_EXPERT),
            num_prefix_tokens=np.clip(col(num_prefix_tokens, np.int32, 0), 0, prompt).astype(np.int32),
            expert_names=expert_names,
        )

    def head(self, num_requests: int) -> "Workload":
        """The first `num_requests` requests."""
        return self.window(0, num_requests)

    def window(self, start: int, stop: int) -> "Workload":
        arrays = {f.name: getattr(self, f.name)[start:stop] for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        return dataclasses.replace(self, **arrays)

    def between(self, start_s: float, stop_s: float) -> "Workload":
        """Requests arriving in [start_s, stop_s), re-based so the window starts at 0."""
        lo, hi = np.searchsorted(self.arrival_s, [start_s, stop_s], side="left")
        part = self.window(int(lo), int(hi))
        return dataclasses.replace(part, arrival_s=part.arrival_s - start_s)


# ------------------------------------------------------------------------------------------- traces


def load_azure_trace(path: str | Path | None = None) -> Workload:
    """An Azure LLM inference trace CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`) as a workload.

    Arrival times are seconds after the first request. `path` defaults to the packaged 2023 conversation trace.
    Raises ValueError naming the file and line on a malformed row.
    """
    path = Path(path) if path is not None else packaged_trace_path()
    stamps: list[str] = []
    prompt: list[int] = []
    output: list[int] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader)]
        try:
            i_ts, i_ctx, i_gen = (header.index(c) for c in ("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
        except ValueError:
            raise ValueError(f"{path}: expected columns TIMESTAMP,ContextTokens,GeneratedTokens, got {header}") from None
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                stamps.append(row[i_ts].strip())
                prompt.append(int(row[i_ctx]))
                output.append(int(row[i_gen]))
            except (ValueError, IndexError) as exc:
                raise ValueError(f"{path}:{line_no}: malformed row {row!r}: {exc}") from None
    try:
        times = np.array(stamps, dtype="datetime64[ns]")
    except ValueError as exc:
        raise ValueError(f"{path}: unparseable TIMESTAMP: {exc}") from None
    if not len(times):
        return Workload.from_arrays([], [], [])
    arrival = (times - times.min()).astype(np.int64) / 1e9
    return Workload.from_arrays(arrival, prompt, output)


def scale_time(workload: Workload, factor: float) -> Workload:
    """Arrival times multiplied by `factor`: 0.5 replays twice as fast (double the load). Raises if <= 0."""
    if factor <= 0:
        raise ValueError(f"time scale factor must be > 0, got {factor}")
    return dataclasses.replace(workload, arrival_s=workload.arrival_s * factor)


def superpose(
    workloads: Sequence[Workload], offsets_s: Sequence[float] | None = None, *, wrap_s: float | None = None
) -> Workload:
    """Many tenants on one fleet: the union of `workloads`, tenant i shifted by `offsets_s[i]`.

    With `wrap_s`, shifted times wrap around modulo `wrap_s` (a copy of a one-hour trace started at minute 20
    replays its last 20 minutes first), so every tenant lasts the whole window.

    Request tenants are renumbered to the workload's position. Pinned experts are re-indexed into the union of
    the inputs' `expert_names`. Raises ValueError on a length mismatch or a negative offset.
    """
    offsets = [0.0] * len(workloads) if offsets_s is None else list(offsets_s)
    if len(offsets) != len(workloads):
        raise ValueError(f"{len(workloads)} workloads but {len(offsets)} offsets")
    if any(o < 0 for o in offsets):
        raise ValueError("offsets must be >= 0")
    names: list[str] = []
    for w in workloads:
        names += [n for n in w.expert_names if n not in names]
    pinned = []
    for w in workloads:
        remap = np.array([names.index(n) for n in w.expert_names] + [NO_EXPERT], dtype=np.int32)
        pinned.append(remap[w.pinned_expert])  # NO_EXPERT (-1) indexes the trailing sentinel
    shifted = [w.arrival_s + o for w, o in zip(workloads, offsets)]
    if wrap_s is not None:
        shifted = [np.mod(a, wrap_s) for a in shifted]
    return Workload.from_arrays(
        np.concatenate(shifted) if shifted else np.empty(0),
        np.concatenate([w.num_prompt_tokens for w in workloads]),
        np.concatenate([w.num_output_tokens for w in workloads]),
        tenant=np.concatenate([np.full(len(w), i, dtype=np.int32) for i, w in enumerate(workloads)]),
        prompt_index=np.concatenate([w.prompt_index for w in workloads]),
        pinned_expert=np.concatenate(pinned) if pinned else None,
        num_prefix_tokens=np.concatenate([w.num_prefix_tokens for w in workloads]) if workloads else 0,
        expert_names=tuple(names),
    )


# ------------------------------------------------------------------------------------------- synthetic


def poisson_arrivals(rng: np.random.Generator, rate_per_s: float, duration_s: float) -> np.ndarray:
    """Arrival times of a Poisson process on [0, duration_s)."""
    return gamma_arrivals(rng, rate_per_s, duration_s, cv=1.0)


def gamma_arrivals(rng: np.random.Generator, rate_per_s: float, duration_s: float, cv: float = 2.0) -> np.ndarray:
    """Arrival times on [0, duration_s) with gamma inter-arrival times of mean 1/rate and coefficient of
    variation `cv` (cv = 1 is Poisson; cv > 1 is bursty, the usual model of serverless invocation bursts)."""
    if rate_per_s <= 0 or duration_s <= 0:
        return np.empty(0, dtype=np.float64)
    if cv <= 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    shape = 1.0 / cv**2
    scale = 1.0 / (rate_per_s * shape)
    expected = rate_per_s * duration_s
    gaps = rng.gamma(shape, scale, size=int(expected + 6 * np.sqrt(expected) + 16))
    times = np.cumsum(gaps)
    while times[-1] < duration_s:  # rare: extend rather than truncate the process
        times = np.concatenate([times, times[-1] + np.cumsum(rng.gamma(shape, scale, size=len(gaps)))])
    return times[times < duration_s]


def sample_lengths(
    rng: np.random.Generator, num_requests: int, reference: Workload | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, output) token counts resampled jointly from `reference` (default: the packaged Azure trace)."""
    ref = reference if reference is not None else load_azure_trace()
    rows = rng.integers(0, len(ref), size=num_requests)
    return ref.num_prompt_tokens[rows], ref.num_output_tokens[rows]


def synthetic_workload(
    rng: np.random.Generator,
    rate_per_s: float,
    duration_s: float,
    *,
    cv: float = 1.0,
    reference: Workload | None = None,
) -> Workload:
    """Poisson (cv = 1) or gamma-burst arrivals with trace-resampled token counts."""
    arrival = gamma_arrivals(rng, rate_per_s, duration_s, cv)
    prompt, output = sample_lengths(rng, len(arrival), reference)
    return Workload.from_arrays(arrival, prompt, output)


def zipf_weights(num_items: int, exponent: float) -> np.ndarray:
    """Popularity of item k (0-based) proportional to 1/(k+1)^exponent, normalised to sum 1."""
    w = 1.0 / np.arange(1, num_items + 1, dtype=np.float64) ** exponent
    return w / w.sum()


def periodic_arrivals(
    rng: np.random.Generator, period_s: float, duration_s: float, *, burst_size: int = 3, jitter_s: float = 20.0
) -> np.ndarray:
    """Bursts of `burst_size` requests every `period_s` (random phase, each burst jittered by up to
    `jitter_s`, requests within a burst a few seconds apart): a scheduled job, the classic serverless pattern."""
    starts = np.arange(rng.uniform(0, period_s), duration_s, period_s)
    starts = starts + rng.uniform(-jitter_s, jitter_s, size=len(starts))
    times = (starts[:, None] + np.cumsum(rng.exponential(2.0, size=(len(starts), burst_size)), axis=1)).ravel()
    return np.sort(times[(times >= 0) & (times < duration_s)])


def many_experts_workload(
    rng: np.random.Generator,
    expert_names: Sequence[str],
    total_rate_per_s: float,
    duration_s: float,
    *,
    zipf_exponent: float = 1.2,
    cv: float = 2.0,
    periodic_fraction: float = 0.0,
    period_range_s: tuple[float, float] = (720.0, 1800.0),
    reference: Workload | None = None,
) -> Workload:
    """Requests that name their expert, for keep-alive experiments: each expert is its own tenant.

    The first (1 - periodic_fraction) of the experts get gamma-burst arrivals (coefficient of variation `cv`)
    whose rates follow a Zipf popularity summing to `total_rate_per_s` (a few hot experts, a long tail); the
    rest run scheduled jobs (`periodic_arrivals`, period uniform in `period_range_s`). Token counts are
    resampled from `reference` (default: the Azure conversation trace).
    """
    reference = reference if reference is not None else load_azure_trace()
    num_periodic = int(round(periodic_fraction * len(expert_names)))
    num_popular = len(expert_names) - num_periodic
    rates = zipf_weights(num_popular, zipf_exponent) * total_rate_per_s if num_popular else []
    parts = []
    for k in range(len(expert_names)):
        if k < num_popular:
            arrival = gamma_arrivals(rng, float(rates[k]), duration_s, cv)
        else:
            arrival = periodic_arrivals(rng, float(rng.uniform(*period_range_s)), duration_s)
        prompt, output = sample_lengths(rng, len(arrival), reference)
        parts.append(Workload.from_arrays(arrival, prompt, output, pinned_expert=np.full(len(arrival), k),
                                          expert_names=tuple(expert_names)))
    return superpose(parts)


def pin_experts_zipf(
    workload: Workload, expert_names: Sequence[str], rng: np.random.Generator, zipf_exponent: float = 1.2
) -> Workload:
    """Every request names an expert drawn from a Zipf popularity over `expert_names` (in the given order)."""
    pinned = rng.choice(len(expert_names), size=len(workload), p=zipf_weights(len(expert_names), zipf_exponent))
    return dataclasses.replace(workload, pinned_expert=pinned.astype(np.int32), expert_names=tuple(expert_names))


# ------------------------------------------------------------------------------------------- prompts


@dataclasses.dataclass(frozen=True)
class RoutingData:
    """The routing data set: prompts, their task labels and each model's true score on each prompt.

    `scores[i, j]` is model `model_names[j]`'s graded quality (0..1) on prompt i.
    """

    prompts: tuple[str, ...]
    tasks: tuple[str, ...]
    model_names: tuple[str, ...]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)

    def model_index(self, name: str) -> int:
        try:
            return self.model_names.index(name)
        except ValueError:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(self.model_names)}") from None


def load_routing_data(path: str | Path | None = None) -> RoutingData:
    """The routing JSONL (`{"prompt", "task", "scores": {model: score}}` per line); defaults to the packaged
    `train.jsonl`. Raises ValueError naming the line of a malformed record."""
    path = Path(path) if path is not None else packaged_routing_path()
    prompts, tasks, rows = [], [], []
    model_names: list[str] | None = None
    with path.open() as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                scores = record["scores"]
                if model_names is None:
                    model_names = sorted(scores)
                rows.append([float(scores[m]) for m in model_names])
                prompts.append(str(record["prompt"]))
                tasks.append(str(record.get("task", "")))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: malformed routing record: {exc!r}") from None
    return RoutingData(tuple(prompts), tuple(tasks), tuple(model_names or ()),
                       np.array(rows, dtype=np.float64).reshape(len(rows), len(model_names or ())))


def attach_prompts(workload: Workload, num_prompts: int, rng: np.random.Generator) -> Workload:
    """Each request gets a prompt drawn uniformly (with replacement) from `num_prompts` routing-data rows."""
    return dataclasses.replace(workload, prompt_index=rng.integers(0, num_prompts, size=len(workload)).astype(np.int32))
