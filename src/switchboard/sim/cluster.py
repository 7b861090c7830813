"""Cluster specs for the simulator: pools of workers, experts and SLOs, loaded from YAML and validated.

A worker is one machine (cloud instance) with `devices_per_worker` devices of one hardware kind, declared as the
live fleet's workers declare theirs (`Worker.num_devices`); its memory is the devices' memory. A replica of an
expert takes whole devices (its `EngineProfile.num_devices`), which placement books as it does live (never two
replicas on one device; an asleep replica keeps its own), and is billed for them while it is live (starting,
warm or draining): the serverless model, where idle capacity that holds no replica costs nothing. A static
fleet keeps its replicas live all the time and so pays for all of them.

A CPU pool declares no devices by default (`devices_per_worker` 0), as the live CPU worker declares none (its
`WorkerConfig.devices` is empty): its worker is one `Hardware` of the kind (the machine's memory and price),
its replicas take memory only, and — as live — none of them sleeps (`placement.sleep_frees_accelerator`).

    name: hetero-32
    slo: {ttft_s: 2.0, tpot_s: 0.2}
    pools:
      - {hardware: h100, workers: 1, devices_per_worker: 8}
      - {hardware: l4, workers: 8}
    experts:            # optional: defaults to the 9 models of the routing data (models.json)
      - {id: llama-3.1-8b-instruct, params_b: 8, usd_per_mtok: 0.2}
    calibration:        # optional: measured engine numbers that replace a kind's efficiency factors
      cpu: {params_b: 0.135, bytes_per_param: 0.625, decode_tokens_per_s: 65, cold_start_s: 1.5}
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchboard.fleet.state import ExpertSpec, ServingEstimate, Worker
from switchboard.perf.calibration import Measurement, calibrate_hardware
from switchboard.perf.hardware import Hardware, get_hardware, hardware_catalog
from switchboard.perf.roofline import EngineProfile, engine_profile
from switchboard.perf.serving import TYPICAL_PROMPT_TOKENS, serving_estimate  # noqa: F401 (re-exported)
from switchboard.types import ExpertId, HardwareKind, WorkerId



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PoolSpec(_Strict):
    hardware: str
    workers: int = Field(1, ge=1)
    devices_per_worker: int | None = Field(
        None, ge=0, le=8, description="Devices each worker declares (`Worker.num_devices`); 0: none, memory only, "
        "as the live CPU worker. None: the kind's default, 1 for an accelerator and 0 for the CPU.")
    max_replicas_per_expert: int | None = Field(None, ge=1)

    def declared_devices(self, hw: Hardware) -> int:
        """The devices each worker declares: `devices_per_worker`, or the kind's default."""
        if self.devices_per_worker is not None:
            return self.devices_per_worker
        return 1 if hw.is_accelerator else 0

    def size(self, hw: Hardware) -> int:
        """How many of the kind's `Hardware` one worker is (its memory and price): its devices, at least one —
        a worker that declares none is one machine of the kind."""
        return max(1, self.declared_devices(hw))


class ExpertSimSpec(_Strict):
    id: str
    params_b: float = Field(gt=0)
    usd_per_mtok: float = Field(0.0, ge=0, description="Blended API price the router trades quality against.")
    bytes_per_param: float = Field(2.0, gt=0)


class CalibrationSpec(_Strict):
    """Measurements of a real engine on one hardware kind (see `switchboard.perf.calibration`)."""

    params_b: float = Field(gt=0)
    bytes_per_param: float = Field(gt=0)
    decode_tokens_per_s: float = Field(gt=0)
    prefill_tokens_per_s: float | None = Field(None, gt=0)
    prefill_num_tokens: int = Field(256, ge=1)
    cold_start_s: float | None = Field(None, ge=0)


class SloSpec(_Strict):
    ttft_s: float = Field(2.0, gt=0)
    tpot_s: float = Field(0.2, gt=0)


class ClusterSpec(_Strict):
    name: str = "cluster"
    pools: list[PoolSpec] = Field(min_length=1)
    experts: list[ExpertSimSpec] | None = None
    slo: SloSpec = SloSpec()
    calibration: dict[str, CalibrationSpec] = Field(
        default_factory=dict, description="Hardware kind → local measurements that replace its efficiency factors.")

    def with_pools(self, pools: list[PoolSpec]) -> "ClusterSpec":
        return self.model_copy(update={"pools": pools})


def default_experts() -> list[ExpertSimSpec]:
    """The 9 models of the routing data, sizes and prices from the packaged models.json."""
    from importlib.resources import files

    models = json.loads(files("switchboard.data").joinpath("routing", "models.json").read_text())
    return [
        ExpertSimSpec(id=name, params_b=float(str(m["size"]).rstrip("Bb")),
                      usd_per_mtok=(m["input_price_per_mtok"] + m["output_price_per_mtok"]) / 2)
        for name, m in sorted(models.items())
    ]


def default_cluster_path() -> Path:
    """`examples/clusters/hetero-32.yaml` of the checkout the package runs from (`make` installs it editable), so
    `switchboard sim` finds its default cluster from any directory; relative to the working directory when the
    package runs from elsewhere."""
    in_checkout = Path(__file__).resolve().parents[3] / "examples" / "clusters" / "hetero-32.yaml"
    return in_checkout if in_checkout.is_file() else Path("examples/clusters/hetero-32.yaml")


def load_cluster(path: str | Path) -> ClusterSpec:
    """Parse and validate a cluster YAML; raises ValueError naming the file and the bad field."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        spec = ClusterSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from None
    known = hardware_catalog()
    for where, kind in [("pools", p.hardware) for p in spec.pools] + [("calibration", k) for k in spec.calibration]:
        if kind not in known:
            raise ValueError(f"{path}: {where}: unknown hardware {kind!r}; known: {', '.join(known)}")
    return spec


@dataclasses.dataclass(frozen=True)
class BuiltCluster:
    """A cluster spec resolved against the perf model: what the fleet model and the engines need."""

    spec: ClusterSpec
    workers: tuple[Worker, ...]
    experts: tuple[ExpertSpec, ...]
    estimates: tuple[ServingEstimate, ...]
    profiles: dict[tuple[str, str], EngineProfile]
    """(expert id, hardware kind) → engine profile, for every pairing whose replica fits one worker."""

    @property
    def expert_ids(self) -> tuple[str, ...]:
        return tuple(e.expert_id for e in self.experts)

    @property
    def num_devices(self) -> int:
        """Devices the workers declare (a CPU pool's, by default, none)."""
        return sum(w.num_devices for w in self.workers)


def resolve_cluster(spec: ClusterSpec, hardware_overrides: dict[str, Hardware] | None = None) -> BuiltCluster:
    """Workers, experts, estimates and profiles of `spec`. `hardware_overrides` replaces catalog entries
    (e.g. a calibrated CPU). Pairings whose replica needs more devices (or, on a worker that declares none, more
    memory) than one worker has are left out."""
    overrides = dict(hardware_overrides or {})
    for kind, cal in spec.calibration.items():
        if kind not in overrides:
            overrides[kind] = calibrate_hardware(kind, Measurement(**cal.model_dump()))
    experts_spec = spec.experts if spec.experts is not None else default_experts()
    workers: list[Worker] = []
    max_size: dict[str, int] = {}
    for pool in spec.pools:
        hw = overrides.get(pool.hardware) or get_hardware(pool.hardware)
        size = pool.size(hw)
        max_size[pool.hardware] = max(max_size.get(pool.hardware, 0), size)
        for i in range(pool.workers):
            workers.append(Worker(
                WorkerId(f"{pool.hardware}-{len([w for w in workers if w.hardware == pool.hardware])}"),
                HardwareKind(pool.hardware),
                memory_gb=size * hw.memory_bytes / 1e9,
                usd_per_hour=size * hw.usd_per_hour,
                num_devices=pool.declared_devices(hw),
            ))
    experts = tuple(ExpertSpec(ExpertId(e.id), e.params_b, e.usd_per_mtok, spec.slo.ttft_s, spec.slo.tpot_s)
                    for e in experts_spec)
    profiles: dict[tuple[str, str], EngineProfile] = {}
    estimates: list[ServingEstimate] = []
    for e in experts_spec:
        for kind, n_max in max_size.items():
            hw = overrides.get(kind) or get_hardware(kind)
            try:
                profile = engine_profile(e.params_b, hw, bytes_per_param=e.bytes_per_param)
            except ValueError:
                continue
            if profile.num_devices > n_max:  # more of the kind's memory than one worker has
                continue
            profiles[(e.id, kind)] = profile
            estimates.append(serving_estimate(e.id, profile))
    return BuiltCluster(spec, tuple(workers), experts, tuple(estimates), profiles)
