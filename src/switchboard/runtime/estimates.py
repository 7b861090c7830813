"""The adapters from configuration to the fleet model: what the live control plane knows about serving each
expert on each hardware kind (its `ServingEstimate`s), its workers (with the virtual ones that host `simulated`
experts) and its experts (`ExpertSpec`). The fleet model and the policies never import the configuration.

Numbers come from the perf model's roofline (`switchboard.perf`), except where the live engine measures
better: a llama.cpp worker decodes one sequence at a time, its weights are its GGUF's bytes, its cold start is
replaced by the measured one after every start (`with_measured_cold_start`), and its prefill and decode rates by
those its answers measure (`with_measured_speed`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from switchboard.config.schema import (
    ExpertConfig,
    LlamaCppBackend,
    OpenAIBackend,
    ProcessBackend,
    SimulatedBackend,
    SwitchboardConfig,
)
from switchboard.fleet.state import ExpertSpec, ServingEstimate, Worker
from switchboard.perf.hardware import GB, get_hardware
from switchboard.perf.roofline import engine_profile
from switchboard.perf.serving import serving_estimate
from switchboard.runtime.speeds import MeasuredSpeed
from switchboard.types import ExpertId, HardwareKind, WorkerId

VIRTUAL_DEVICES_PER_WORKER = 8
"""A virtual worker for simulated experts stands for one 8-GPU machine of its kind."""

LLAMACPP_COLD_START_GUESS_S = 2.0
"""Until the first measured start: spawn (~1.2 s) plus model load (~0.4 s) of SmolLM2 here."""

PROCESS_OVERHEAD_GB = 0.3
"""A llama.cpp worker's Python interpreter, server and scratch buffers (measured ~250 MB resident here)."""


def hardware_of(expert: ExpertConfig, default_hardware: str) -> str:
    backend = expert.backend
    if isinstance(backend, SimulatedBackend):
        return backend.hardware
    if isinstance(backend, OpenAIBackend):
        return "remote"
    return default_hardware


def live_workers(config: SwitchboardConfig) -> list[Worker]:
    """The configured workers, plus one virtual 8-device worker per hardware kind that simulated experts
    need and no configured worker has (simulated replicas run in-process but are accounted on it)."""
    workers = [Worker(WorkerId(w.id), HardwareKind(w.hardware), w.memory_gb, w.usd_per_hour, w.location,
                      num_devices=len(w.devices)) for w in config.workers]
    kinds = {w.hardware for w in workers}
    for expert in config.experts:
        if isinstance(expert.backend, SimulatedBackend) and expert.backend.hardware not in kinds:
            hw = get_hardware(expert.backend.hardware)
            kinds.add(hw.kind)
            workers.append(Worker(
                worker_id=WorkerId(f"virtual-{hw.kind}"), hardware=HardwareKind(hw.kind),
                memory_gb=VIRTUAL_DEVICES_PER_WORKER * hw.memory_bytes / GB,
                usd_per_hour=VIRTUAL_DEVICES_PER_WORKER * hw.usd_per_hour, location="virtual",
            ))
    return workers


def expert_spec(expert: ExpertConfig) -> ExpertSpec:
    return ExpertSpec(ExpertId(expert.id), expert.params_b, expert.usd_per_mtok_blended, expert.ttft_slo_s,
                      expert.tpot_slo_s, is_external=isinstance(expert.backend, OpenAIBackend))


def serving_estimates(expert: ExpertConfig, workers: list[Worker]) -> list[ServingEstimate]:
    """One estimate per hardware kind this expert may run on (none for external upstreams)."""
    backend = expert.backend
    if isinstance(backend, OpenAIBackend):
        return []
    if isinstance(backend, SimulatedBackend):
        kinds = [backend.hardware]
    elif isinstance(backend, (LlamaCppBackend, ProcessBackend)) and backend.hardware is not None:
        kinds = [get_hardware(backend.hardware).kind]
    else:
        kinds = sorted({w.hardware for w in workers if w.location != "virtual"})
    estimates = []
    bytes_per_param = _gguf_bytes_per_param(expert) if isinstance(backend, LlamaCppBackend) else None
    for kind in kinds:
        profile = engine_profile(expert.params_b, kind) if bytes_per_param is None else \
            engine_profile(expert.params_b, kind, bytes_per_param=bytes_per_param)
        # A simulated engine configured to decode fewer together than its roofline holds (more wait for a slot):
        # the control plane sees the same batch, or it would predict no wait where the engine queues.
        estimate = serving_estimate(expert.id, profile, backend.max_concurrency if isinstance(backend, SimulatedBackend) else None)
        if isinstance(backend, LlamaCppBackend) or (isinstance(backend, ProcessBackend) and kind == "cpu"):
            # One sequence at a time (llama.cpp is not thread-safe, nor is its server by default); memory is what
            # the process holds (weights, KV for the configured context, overhead), not whole devices as for a
            # GPU replica.
            memory_gb = (profile.weights_bytes + expert.context_tokens * profile.kv_bytes_per_token) / GB + PROCESS_OVERHEAD_GB
            estimate = dataclasses.replace(
                estimate, max_num_seqs=1, kv_capacity_tokens=expert.context_tokens,
                cold_start_s=LLAMACPP_COLD_START_GUESS_S, memory_gb=memory_gb,
                # The llama.cpp worker is a CPU process: it takes no device (a `process` server does).
                num_devices=0 if isinstance(backend, LlamaCppBackend) else estimate.num_devices,
            )
        if isinstance(backend, ProcessBackend):
            # The roofline's cold start models a GPU engine's load; a server's own start is configured until
            # the first one is measured.
            estimate = dataclasses.replace(estimate, cold_start_s=backend.cold_start_s)
        estimates.append(dataclasses.replace(estimate, expert_id=ExpertId(expert.id)))
    return estimates


def _gguf_bytes_per_param(expert: ExpertConfig) -> float | None:
    """Bytes per parameter of a llama.cpp expert's GGUF: its file size over `params_b` (decode reads the whole
    file's weights per token, so the roofline must see the quantised size: SmolLM2's Q4_1 file is 0.73 bytes a
    parameter, not FP16's 2, which halved its predicted decode rate). None when the file is not here (the engine
    will say so when it starts)."""
    from switchboard.engines.llamacpp.paths import default_model_path

    try:
        path = Path(expert.backend.model_path) if expert.backend.model_path else default_model_path()
        return path.stat().st_size / (expert.params_b * 1e9)
    except OSError:
        return None


def with_measured_speed(estimate: ServingEstimate, speed: MeasuredSpeed) -> ServingEstimate:
    """The estimate with its prefill and decode rates measured (`runtime/speeds.py`), for a one-sequence engine
    (`max_num_seqs` 1, whose decode step is the same at every load); any other estimate is returned as it is."""
    if estimate.max_num_seqs != 1:
        return estimate
    changes: dict[str, float] = {}
    if speed.prefill_s_per_token is not None:
        changes["prefill_tokens_per_s"] = 1.0 / speed.prefill_s_per_token
    if speed.decode_s_per_token is not None:
        changes["decode_step_s_batch_1"] = changes["decode_step_s_full_batch"] = speed.decode_s_per_token
    return dataclasses.replace(estimate, **changes) if changes else estimate


def with_measured_cold_start(estimate: ServingEstimate, measured_s: float) -> ServingEstimate:
    """The estimate with its cold start measured; where its start is priced at a wake (`fleet.sleep.price_wakes`)
    the wake stays and the cold start elsewhere is the measured one."""
    if estimate.cold_start_elsewhere_s is not None:
        return dataclasses.replace(estimate, cold_start_elsewhere_s=measured_s)
    return dataclasses.replace(estimate, cold_start_s=measured_s)
