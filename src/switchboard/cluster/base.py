"""The cluster adapter: the workers replicas may run on, and how a replica's engine is made on one of them.

The live fleet (`switchboard.runtime.fleet`) is written against this interface only. Placement stays a pure
policy over the fleet model; the adapter only executes its choice (it never picks a worker itself).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol

from switchboard.config.schema import ExpertConfig, SwitchboardConfig
from switchboard.engines.base import Engine
from switchboard.engines.factory import build_engine
from switchboard.fleet.state import Worker
from switchboard.runtime import estimates as est

EngineFactory = Callable[[ExpertConfig], Engine]


@dataclasses.dataclass(frozen=True, slots=True)
class SurvivingReplica:
    """A warm replica that outlived the control plane which started it (its engine is already running)."""

    replica_id: str
    expert_id: str
    worker_id: str
    engine: Any


class Cluster(Protocol):
    """What the live fleet needs from the machines it runs on."""

    inventory_interval_s: float | None
    """How often the fleet re-reads `workers()` to notice lost and new workers; None: the workers never change."""

    def workers(self) -> list[Worker]:
        """The workers alive now. May block briefly (a cluster query): the fleet calls it off its event loop
        once serving. A worker missing from a later answer is lost, with every replica on it."""

    def engine_for(self, replica_id: str, expert: ExpertConfig, worker_id: str, num_devices: int = 0) -> Engine:
        """A fresh, not yet started engine for replica `replica_id` of `expert`, that will run on `worker_id`
        holding `num_devices` of its devices (the fleet model's count: the replica's tensor-parallel size where
        the worker declares devices, else 0). Which ones is the fleet's business (its `DeviceBook`) where it
        knows the workers' device indices, the cluster's where it books them itself (Ray's GPUs)."""

    async def close(self) -> None:
        """Releases the cluster connection (engines are stopped by the fleet before)."""


class LocalCluster:
    """Embedded mode: the configured workers (plus virtual ones for simulated experts), engines built here.

    The worker list never changes, so a local worker is never lost; a dead engine process is found by the
    fleet's health check instead.
    """

    inventory_interval_s = None

    def __init__(self, config: SwitchboardConfig, engine_factory: EngineFactory = build_engine) -> None:
        self._workers = est.live_workers(config)
        self.engine_factory = engine_factory

    def workers(self) -> list[Worker]:
        return list(self._workers)

    def engine_for(self, replica_id: str, expert: ExpertConfig, worker_id: str, num_devices: int = 0) -> Engine:
        return self.engine_factory(expert)

    async def close(self) -> None:
        return None
