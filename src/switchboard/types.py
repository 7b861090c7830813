"""The vocabulary every layer speaks: identifiers, units and small value types.

Names carry their units (seconds, tokens, USD per million tokens) so a reader never has to guess.
"""

from __future__ import annotations

import enum
from typing import NewType

ExpertId = NewType("ExpertId", str)
ReplicaId = NewType("ReplicaId", str)
WorkerId = NewType("WorkerId", str)
HardwareKind = NewType("HardwareKind", str)
RequestId = NewType("RequestId", str)

Seconds = float
Tokens = int
UsdPerMTok = float
UsdPerHour = float
Bytes = int

AUTO_MODEL = "auto"
"""The reserved model name that asks the router to choose the expert."""


class BackendKind(str, enum.Enum):
    OPENAI = "openai"
    LLAMACPP = "llamacpp"
    SIMULATED = "simulated"


class ReplicaState(str, enum.Enum):
    """A replica's life cycle: cold → starting → warm → draining → stopped."""

    COLD = "cold"
    STARTING = "starting"
    WARM = "warm"
    DRAINING = "draining"
    STOPPED = "stopped"


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    FUNCTION_CALL = "function_call"
