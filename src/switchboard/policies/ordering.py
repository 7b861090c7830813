"""Queue ordering: which not-yet-started request a replica serves next.

Variants (`QueueOrderSettings.kind`):

- `fifo`: arrival order.
- `shortest-predicted-first`: learning-to-rank scheduling (Fu et al., "Efficient LLM Scheduling by Learning to
  Rank", 2024): serve the request with the shortest *predicted* output first, which approximates shortest-job-
  first and cuts mean latency under load. Only the ranking of predictions matters, so a rough predictor works.
  Requests that have waited `max_wait_s` jump ahead in arrival order, so long answers never starve.

The dispatcher in front of an engine (live) or the simulated engine calls `order` / `next_request` whenever a
batch slot frees; it reorders a queue and never adds or drops a request.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence

from pydantic import Field

from switchboard.fleet.state import QueuedRequest
from switchboard.policies.base import PolicySettings, Registry
from switchboard.types import Seconds


class QueueOrderKind(str, enum.Enum):
    FIFO = "fifo"
    SHORTEST_PREDICTED_FIRST = "shortest-predicted-first"


class QueueOrderSettings(PolicySettings):
    kind: QueueOrderKind = QueueOrderKind.FIFO
    max_wait_s: float = Field(10.0, ge=0, description="shortest-predicted-first: waited this long → served in arrival order.")


class QueueOrderPolicy(abc.ABC):
    def __init__(self, settings: QueueOrderSettings) -> None:
        self.settings = settings

    @abc.abstractmethod
    def sort_key(self, request: QueuedRequest, now_s: Seconds) -> tuple:
        """Smaller keys are served first; ties keep arrival order."""

    def order(self, queue: Sequence[QueuedRequest], now_s: Seconds) -> tuple[QueuedRequest, ...]:
        """A permutation of `queue` (stable): live requests before background ones (a batch's), each in the
        policy's order."""
        return tuple(sorted(queue, key=lambda r: (r.is_background, *self.sort_key(r, now_s), r.arrived_at, r.request_id)))

    def next_request(self, queue: Sequence[QueuedRequest], now_s: Seconds) -> QueuedRequest:
        """The request to start next (a live one if any is queued); raises ValueError on an empty queue."""
        if not queue:
            raise ValueError("empty queue")
        return min(queue, key=lambda r: (r.is_background, *self.sort_key(r, now_s), r.arrived_at, r.request_id))


QUEUE_ORDER_POLICIES: Registry[QueueOrderKind, QueueOrderPolicy] = Registry("queue-order")


@QUEUE_ORDER_POLICIES.register(QueueOrderKind.FIFO)
class Fifo(QueueOrderPolicy):
    def sort_key(self, request: QueuedRequest, now_s: Seconds) -> tuple:
        return ()


@QUEUE_ORDER_POLICIES.register(QueueOrderKind.SHORTEST_PREDICTED_FIRST)
class ShortestPredictedFirst(QueueOrderPolicy):
    def sort_key(self, request: QueuedRequest, now_s: Seconds) -> tuple:
        is_starving = now_s - request.arrived_at >= self.settings.max_wait_s
        return (0, 0) if is_starving else (1, request.num_output_tokens_expected)


def make_queue_order(settings: QueueOrderSettings) -> QueueOrderPolicy:
    return QUEUE_ORDER_POLICIES.create(settings)
