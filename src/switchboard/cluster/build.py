"""The cluster adapter a config asks for."""

from __future__ import annotations

import os

from switchboard.cluster.base import Cluster, EngineFactory, LocalCluster
from switchboard.config.schema import RayClusterConfig, SwitchboardConfig
from switchboard.engines.factory import build_engine


def build_cluster(config: SwitchboardConfig, engine_factory: EngineFactory = build_engine) -> Cluster:
    """`LocalCluster` for `cluster: {kind: embedded}` (the default), `RayCluster` (connected) for `kind: ray`."""
    if isinstance(config.cluster, RayClusterConfig):
        from switchboard.cluster.ray_cluster import RayCluster

        # Replica actor names must not collide with another fleet's on the same cluster.
        return RayCluster(config.cluster, fleet_tag=os.urandom(4).hex() + "/")
    return LocalCluster(config, engine_factory)
