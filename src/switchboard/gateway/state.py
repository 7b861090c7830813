"""What the gateway's handlers share: the config, the live fleet, the expert chooser and the metrics."""

from __future__ import annotations

import dataclasses

from switchboard.config.schema import SwitchboardConfig
from switchboard.gateway.choosing import ExpertChooser
from switchboard.observability.metrics import Observability
from switchboard.runtime.fleet import LiveFleet


@dataclasses.dataclass
class GatewayState:
    config: SwitchboardConfig
    fleet: LiveFleet
    chooser: ExpertChooser
    started_at: int
    observability: Observability
