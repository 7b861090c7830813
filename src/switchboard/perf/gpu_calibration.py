"""Fit a GPU catalog entry to kernel-level timings of real forward passes, and measure how well it predicts them.

The data ship in `switchboard/data/perf/` (see its README): `h200_llama_forward.json`, prefill (eager) and
decode (eager, and replayed from CUDA graphs) steps of Llama-shaped 1B and 8B models with random bf16 weights on
one H200, and `h200_mixed_steps_sleep.json`, steps of the 8B model that carry decodes and a prompt chunk together
(chunked prefill). `fit_hardware` fits the roofline's efficiency and overhead fields (`FITTED_FIELDS`, see
`switchboard.perf.roofline` for the formula) to the forward table's prefill and graph-decode rows by least
squares on log time; the weights' bandwidth is not fitted but taken from the table's measured device copy
(`measured_bandwidth_efficiency`): fitted with it, a fixed step cost and the bandwidth trade off freely. The
mixed steps and the eager decode rows are never fitted, so their errors are out-of-sample checks. `leave_one_size_out` refits without each model size and predicts that size, the test
that matters for sizes the table does not have.

    python -m switchboard.perf.gpu_calibration                    # fit, in-sample and leave-one-size-out errors
    python -m switchboard.perf.gpu_calibration --check ROWS.json  # the catalog's H200 entry on other rows

Another table in the same format (a `models` block and `prefill`/`decode` rows, or a `model` and `mixed` rows)
is checked with `--check`; scipy (a scikit-learn dependency) is imported only when fitting.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from switchboard.perf.hardware import Hardware, get_hardware
from switchboard.perf.roofline import EngineProfile, engine_profile
from switchboard.perf.shape import ModelShape

FORWARD_TABLE = "h200_llama_forward.json"
MIXED_TABLE = "h200_mixed_steps_sleep.json"

# Field, lower bound, upper bound, scale (the optimiser works in field / scale, all of order 1).
_FIT_SPACE = (
    ("compute_efficiency", 0.05, 1.0, 1.0),
    ("kv_bandwidth_efficiency", 0.05, 1.0, 1.0),
    ("attention_efficiency", 0.05, 1.0, 1.0),
    ("step_overhead_s_per_layer", 0.0, 0.001, 1e-4),
    ("eager_launch_s_per_layer", 0.0, 0.005, 1e-3),
    ("decode_attention_s_per_seq_layer", 0.0, 5e-6, 1e-6),
    ("gemm_min_tokens", 0.0, 2000.0, 100.0),
    ("activation_bytes_per_element", 0.0, 200.0, 10.0),
)
FITTED_FIELDS = tuple(field for field, *_ in _FIT_SPACE)
_START = (0.6, 0.55, 0.4, 0.5e-4, 0.5e-3, 0.3e-6, 100.0, 20.0)
FITTED_GROUPS = ("prefill", "decode-graph")
"""The rows the fit minimises over (the issue's targets); every other group is out of sample."""


@dataclasses.dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model of the table: what `engine_profile` needs."""

    name: str
    params_b: float
    bytes_per_param: float
    kv_bytes_per_token: float
    shape: ModelShape


@dataclasses.dataclass(frozen=True, slots=True)
class TimedStep:
    """One measured row: a step of `num_decode_seqs` decodes over `context_tokens_per_seq` each, plus
    `num_prompt_seqs` prompts of `prompt_tokens_per_seq` (a causal prefill with nothing cached before it)."""

    model: str
    cuda_graphs: bool
    num_decode_seqs: int
    context_tokens_per_seq: int
    num_prompt_seqs: int
    prompt_tokens_per_seq: int
    measured_s: float

    @property
    def group(self) -> str:
        """'prefill', 'decode-graph', 'decode-eager', 'mixed-graph' or 'mixed-eager'."""
        if not self.num_decode_seqs:
            return "prefill" if not self.cuda_graphs else "prefill-graph"
        mode = "graph" if self.cuda_graphs else "eager"
        return f"{'mixed' if self.num_prompt_seqs else 'decode'}-{mode}"


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorSummary:
    """Relative errors |predicted / measured - 1| of a group of rows."""

    num_rows: int
    median: float
    max: float


def load_table(name_or_path: str | Path = FORWARD_TABLE) -> dict:
    """A shipped table by file name, or any table by path."""
    path = Path(name_or_path)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    return json.loads(resources.files("switchboard.data").joinpath("perf", str(name_or_path)).read_text("utf-8"))


def model_specs(table: dict) -> dict[str, ModelSpec]:
    """The models a table was measured on, by the names its rows use."""
    models = dict(table.get("models", {}))
    if "model" in table:  # the mixed-steps table describes its one model inline
        models[table["model"]["name"]] = table["model"]
    return {
        name: ModelSpec(name, m["P"] / 1e9, m["W_bytes"] / m["P"], float(m["k_bytes_per_token"]),
                        ModelShape(m["layers"], m["hidden"], m["inter"]))
        for name, m in models.items()
    }


def timed_steps(table: dict) -> list[TimedStep]:
    """Every timed row of a table (prefill rows are eager; decode and mixed rows say their mode)."""
    steps = [TimedStep(r["model"], False, 0, 0, r["batch"], r["N"], r["ms"] / 1e3) for r in table.get("prefill", ())]
    steps += [TimedStep(r["model"], r["mode"] == "graph", r["b"], r["ctx"], 0, 0, r["ms"] / 1e3)
              for r in table.get("decode", ())]
    name = table.get("model", {}).get("name", "")
    steps += [TimedStep(name, r["mode"] == "graph", r["b"], r["ctx"], 1 if r["c"] else 0, r["c"], r["ms"] / 1e3)
              for r in table.get("mixed", ())]
    return steps


def measured_bandwidth_efficiency(table: dict, hardware: Hardware) -> float:
    """The fraction of `hardware`'s datasheet bandwidth that the table's device-to-device copy moved (bytes read
    plus bytes written per second): what a kernel that only streams memory reaches."""
    return table["basics"]["d2d_copy"]["gbps_read_plus_write"] * 1e9 / hardware.mem_bandwidth_bytes_per_s


def fit_base(table: dict, hardware: Hardware) -> Hardware:
    """`hardware` as the fit starts from: its bandwidth efficiency measured by `table`, no depth-independent step
    cost (on a GPU the fixed cost is per layer; with both, two sizes cannot tell them apart)."""
    return dataclasses.replace(hardware, bandwidth_efficiency=measured_bandwidth_efficiency(table, hardware),
                               step_overhead_s=0.0)


def profile_for(hardware: Hardware, spec: ModelSpec) -> EngineProfile:
    return engine_profile(spec.params_b, hardware, bytes_per_param=spec.bytes_per_param,
                          kv_bytes_per_token=spec.kv_bytes_per_token, num_devices=1, shape=spec.shape)


def predict_s(hardware: Hardware, spec: ModelSpec, step: TimedStep) -> float:
    """The roofline's time for `step` on `hardware`, in the step's own mode (eager or CUDA graphs)."""
    num_prompt_tokens = step.num_prompt_seqs * step.prompt_tokens_per_seq
    return profile_for(hardware, spec).step_time_s(
        step.num_decode_seqs, step.num_decode_seqs * step.context_tokens_per_seq, num_prompt_tokens,
        step.num_prompt_seqs * step.prompt_tokens_per_seq**2, cuda_graphs=step.cuda_graphs)


def errors(hardware: Hardware, steps: Iterable[TimedStep], specs: dict[str, ModelSpec]) -> dict[str, ErrorSummary]:
    """Relative prediction error of `hardware` on `steps`, by group."""
    by_group: dict[str, list[float]] = {}
    for step in steps:
        error = abs(predict_s(hardware, specs[step.model], step) / step.measured_s - 1.0)
        by_group.setdefault(step.group, []).append(error)
    return {group: ErrorSummary(len(e), statistics.median(e), max(e)) for group, e in sorted(by_group.items())}


def fit_hardware(base: Hardware, steps: Sequence[TimedStep], specs: dict[str, ModelSpec]) -> Hardware:
    """`base` (see `fit_base`) with `FITTED_FIELDS` set to minimise the squared log error over the
    `FITTED_GROUPS` rows of `steps`; every other field, the weights' bandwidth included, is kept.

    Deterministic (a fixed starting point, scipy's trust-region least squares). Raises ValueError when no row
    is in a fitted group.
    """
    from scipy.optimize import least_squares  # a heavy import, only when fitting

    rows = [s for s in steps if s.group in FITTED_GROUPS]
    if not rows:
        raise ValueError(f"no {' or '.join(FITTED_GROUPS)} rows to fit")
    scales = [scale for *_, scale in _FIT_SPACE]

    def hardware_at(x: Sequence[float]) -> Hardware:
        return dataclasses.replace(base, **{f: float(v) * s for f, v, s in zip(FITTED_FIELDS, x, scales)})

    def residuals(x: Sequence[float]) -> list[float]:
        hw = hardware_at(x)
        return [math.log(predict_s(hw, specs[s.model], s) / s.measured_s) for s in rows]

    lower = [lo / s for (_, lo, _, s) in _FIT_SPACE]
    upper = [hi / s for (_, _, hi, s) in _FIT_SPACE]
    start = [v / s for v, s in zip(_START, scales)]
    return hardware_at(least_squares(residuals, start, bounds=(lower, upper)).x)


def leave_one_size_out(base: Hardware, steps: Sequence[TimedStep],
                       specs: dict[str, ModelSpec]) -> dict[str, dict[str, ErrorSummary]]:
    """For each model: the errors on its rows of a fit made without them (the other sizes only)."""
    out = {}
    for name in sorted({s.model for s in steps}):
        train = [s for s in steps if s.model != name]
        if not any(s.group in FITTED_GROUPS for s in train):
            continue
        out[name] = errors(fit_hardware(base, train, specs), [s for s in steps if s.model == name], specs)
    return out


def _print_errors(title: str, table: dict[str, ErrorSummary]) -> None:
    for group, e in table.items():
        print(f"  {title:28s} {group:14s} rows {e.num_rows:2d}  median {e.median:6.1%}  max {e.max:6.1%}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, help="only report the catalog H200 entry's errors on this table")
    args = parser.parse_args(argv)
    catalog = get_hardware("h200")
    if args.check:
        table = load_table(args.check)
        steps, specs = timed_steps(table), model_specs(table)
        for s in steps:
            predicted_s = predict_s(catalog, specs[s.model], s)
            print(f"  {s.model:5s} {s.group:14s} decodes {s.num_decode_seqs:4d} x ctx {s.context_tokens_per_seq:5d}  "
                  f"prompts {s.num_prompt_seqs:2d} x {s.prompt_tokens_per_seq:5d}  measured {s.measured_s * 1e3:8.3f} ms"
                  f"  predicted {predicted_s * 1e3:8.3f} ms  {predicted_s / s.measured_s - 1:+6.1%}")
        _print_errors("catalog h200", errors(catalog, steps, specs))
        return
    forward, mixed = load_table(FORWARD_TABLE), load_table(MIXED_TABLE)
    specs = model_specs(forward) | model_specs(mixed)
    steps = timed_steps(forward)
    base = fit_base(forward, catalog)
    fitted = fit_hardware(base, steps, specs)
    print(f"  {'bandwidth_efficiency':34s} measured {base.bandwidth_efficiency:<10.6g} catalog "
          f"{catalog.bandwidth_efficiency}")
    for field in FITTED_FIELDS:
        print(f"  {field:34s} fitted {getattr(fitted, field):<12.6g} catalog {getattr(catalog, field)}")
    _print_errors("fit, in sample", errors(fitted, steps, specs))
    _print_errors("catalog, in sample", errors(catalog, steps, specs))
    _print_errors("catalog, mixed steps (unfit)", errors(catalog, timed_steps(mixed), specs))
    for name, table in leave_one_size_out(base, steps, specs).items():
        _print_errors(f"fit without {name}, on {name}", table)


if __name__ == "__main__":
    main()
