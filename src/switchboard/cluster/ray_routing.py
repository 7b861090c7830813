"""A gateway's own routing decisions on a Ray fleet (docs/ray.md, "Local decisions"; issue 17, item 1).

The control actor pushes its fleet model to every gateway (a long poll on the view version, like Ray Serve's
`LongPollClient`, answered at least every `POLL_INTERVAL_S` so loads stay fresh) with the warm replica actors'
handles: a `RoutingView`. `LocalRouter` admits and balances a request in the gateway with the control plane's
own fast path (`ControlPlane.admit_fast`: the configured admission and balance policies, e.g. power-of-two
choices or prefix affinity on the cached loads), over that model plus this gateway's own requests in flight.
When the answer is a warm replica with a free sequence slot and no queue, the gateway calls that replica actor
itself: one actor call per request. Anything else (a start, a queue behind a start, a rejection) goes to the
control actor, which decides it as before. Fleet-aware routing of `model: auto` requests is decided here too, on
the same model, with the same pure function as the control actor (`runtime.fleet.fleet_route`), and reported
(`Routed`) so that the control actor's pre-warming and wake-ups see it.

What the gateway started and finished reaches the control actor as `Started` / `Ended` events in batches
(`LoadReports`; requests started and served within one batch as one `Served` per replica): every
`REPORT_INTERVAL_S`, or once `REPORT_MAX_EVENTS` are pending, and at once after an engine failure (the control
actor stops and replaces a lost replica). The control actor counts them in its
model, so autoscaling, keep-alive and every other gateway's view see this gateway's load within about
`REPORT_INTERVAL_S + POLL_INTERVAL_S`; a gateway's own requests are always counted exactly in its own decisions.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from typing import Any

from switchboard.engines.base import Timing
from switchboard.fleet import ops
from switchboard.fleet.state import FleetSnapshot, QueuedRequest, ReplicaLoad
from switchboard.policies.actions import AssignRequest
from switchboard.policies.control import ControlPlane
from switchboard.policies.routing import RouteDecision
from switchboard.types import ReplicaId, ReplicaState

POLL_INTERVAL_S = 0.5
"""The longest a gateway's long poll waits for a new view version; the answer then carries fresh loads."""
REPORT_INTERVAL_S = 0.1
"""How often a gateway sends the control actor what it started and finished (when it has something)."""
REPORT_MAX_EVENTS = 64
"""A batch is sent early once this many events are pending."""


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingView:
    """What the control actor pushes to one gateway: its fleet model (loads *without* that gateway's own
    reported requests, which the gateway adds itself, exactly) and the warm replicas' actors."""

    version: tuple[str, int]
    model: FleetSnapshot
    actors: Mapping[str, tuple[Any, str]]
    """Warm replica id -> (its Ray actor handle, its Ray node id)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    """The gateway assigned `request` to warm replica `replica_id` itself."""

    request: QueuedRequest
    replica_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """A request the gateway assigned itself ended: served (`ok`), or failed (`error` when an engine error)."""

    request_id: str
    ok: bool
    error: Any = None
    """A `RemoteEngineError`, or None."""
    replica_id: str = ""
    """The replica it ran on ("": not said): an end that arrives before its start matches only that start."""


@dataclasses.dataclass(frozen=True, slots=True)
class Timed:
    """An answer's own timing on replica `replica_id` (llama.cpp's `timings`): the control actor measures the
    expert's speed by it (`LiveFleet.observe_timing`), as an embedded gateway does."""

    replica_id: str
    timing: Timing


@dataclasses.dataclass(frozen=True, slots=True)
class Served:
    """Requests the gateway assigned to warm replica `replica_id` itself that were served before it reported
    them: each a (expert id, prompt tokens, expected output tokens). One event instead of a `Started` and an
    `Ended` each, counted by the control actor in one pass (`LiveFleet.arrive_served`, `end_served`): on the
    bare serving path that accounting was the control actor's largest cost per request (issue 17)."""

    replica_id: str
    requests: tuple[tuple[str, int, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Routed:
    """The gateway made a fleet-aware routing decision (`model: auto`) itself, on its view, at `at_s`: the
    control actor records it as its own (`LiveFleet.record_route`: pre-warming's demand, wake-ups, the log)."""

    at_s: float
    preferred: str
    """The router's own pick."""
    decision: RouteDecision


@dataclasses.dataclass(frozen=True, slots=True)
class LocalAssignment:
    replica_id: str
    actor: Any
    node_id: str
    hardware: str


class LocalRouter:
    """The gateway's decisions on its last `RoutingView`. Not thread-safe: the gateway's event loop owns it."""

    def __init__(self, plane: ControlPlane, rng: random.Random) -> None:
        self.plane = plane
        self.rng = rng
        self.view: RoutingView | None = None
        self._model: FleetSnapshot | None = None
        self._own: dict[str, tuple[str, QueuedRequest]] = {}
        """Request id -> (replica id, request): this gateway's requests on replicas it chose itself."""
        self._lost: set[str] = set()
        """Replicas this gateway saw fail under a request, left out until the control actor has stopped them."""

    def install(self, view: RoutingView) -> None:
        """Decides on `view` from now on, with this gateway's own requests in flight added to its loads."""
        self.view = view
        self._lost &= set(view.model.replicas)
        model = view.model
        for replica_id, request in self._own.values():
            model = _with_running(model, replica_id, +1, request.num_tokens)
        self._model = self._without_lost(model)

    def _without_lost(self, model: FleetSnapshot) -> FleetSnapshot:
        if not self._lost:
            return model
        return model.evolve(replicas={r: x for r, x in model.replicas.items() if r not in self._lost})

    def model_at(self, now_s: float) -> FleetSnapshot | None:
        """The fleet model this gateway decides on (its own requests counted), advanced to `now_s`; None before
        the first view."""
        if self._model is None:
            return None
        return ops.at_time(self._model, max(now_s, self._model.now_s))

    def assign(self, request: QueuedRequest, now_s: float) -> LocalAssignment | None:
        """The warm replica `request` runs on, chosen here and counted as running on it; None when the control
        actor must decide (no view yet, a start or queue is needed, the policies reject, the replica is full)."""
        model = self.model_at(now_s)
        if model is None or self.view is None:
            return None
        fast = self.plane.admit_fast(model, request, self.rng)
        if fast.needs_step or len(fast.actions) != 1 or not isinstance(fast.actions[0], AssignRequest):
            return None
        replica_id = fast.actions[0].replica_id
        replica = model.replicas[replica_id]
        where = self.view.actors.get(replica_id)
        # A full replica queues in the control actor (its queue order decides who runs next), as embedded mode does.
        if where is None or replica.state is not ReplicaState.WARM or replica.load.queue \
                or replica.load.num_running >= replica.capacity.max_num_seqs:
            return None
        self._model = _with_running(model, replica_id, +1, request.num_tokens)
        self._own[request.request_id] = (replica_id, request)
        return LocalAssignment(replica_id, where[0], where[1], replica.hardware)

    def adopt(self, request: QueuedRequest, replica_id: str) -> None:
        """Counts `request`, running on `replica_id` by the control actor's leave, as this gateway's own (its
        lease died with the control actor that granted it)."""
        self._own[request.request_id] = (replica_id, request)
        if self._model is not None:
            self._model = _with_running(self._model, replica_id, +1, request.num_tokens)

    def finish(self, request_id: str) -> None:
        """A request `assign` placed ended (however): its replica's load drops."""
        found = self._own.pop(request_id, None)
        if found is not None and self._model is not None:
            self._model = _with_running(self._model, found[0], -1, found[1].num_tokens)

    def forget(self, replica_id: str) -> None:
        """`replica_id` failed under a request (its actor or node died): never chosen again here."""
        self._lost.add(replica_id)
        if self._model is not None:
            self._model = self._without_lost(self._model)

    def in_flight(self) -> list[Started]:
        """This gateway's requests on replicas it chose, as the events that started them (a restarted control
        actor rebuilds its loads from these)."""
        return [Started(request, replica_id) for replica_id, request in self._own.values()]


def _with_running(model: FleetSnapshot, replica_id: str, num_requests: int, num_tokens: int) -> FleetSnapshot:
    """`model` with `num_requests` more (or fewer) running requests of `num_tokens` each on `replica_id`."""
    replica = model.replicas.get(ReplicaId(replica_id))
    if replica is None:
        return model
    load = replica.load
    running = max(0, load.num_running + num_requests)
    tokens = max(0, load.num_running_tokens + num_requests * num_tokens)
    return ops.set_load(model, ReplicaId(replica_id), ReplicaLoad(running, tokens, load.queue))


def without_requests(model: FleetSnapshot, requests: list[tuple[str, QueuedRequest]]) -> FleetSnapshot:
    """`model` without `requests` (replica id, request) running: what the control actor sends a gateway whose
    own requests these are (it adds them back itself, exactly)."""
    for replica_id, request in requests:
        model = _with_running(model, replica_id, -1, request.num_tokens)
    return model


class LoadReports:
    """The events a gateway has not sent yet, in the order they happened; a request that started and was served
    (`Ended` ok, no error) before they are sent is folded, as it ends, into one `Served` per replica."""

    def __init__(self) -> None:
        self._pending: list[Started | Ended | Routed | Timed | None] = []
        self._started_at: dict[str, int] = {}
        """Request id -> the index of its pending `Started`."""
        self._served: dict[str, list[tuple[str, int, int]]] = {}
        self._num_folded = 0

    def add(self, event: Started | Ended | Routed | Timed) -> None:
        if isinstance(event, Ended) and event.ok and event.error is None:
            start_index = self._started_at.pop(event.request_id, None)
            if start_index is not None:
                start = self._pending[start_index]
                assert isinstance(start, Started)
                self._pending[start_index] = None
                self._num_folded += 1
                request = start.request
                self._served.setdefault(start.replica_id, []).append(
                    (request.expert_id, request.num_prompt_tokens, request.num_output_tokens_expected))
                return
        if isinstance(event, Started):
            self._started_at[event.request.request_id] = len(self._pending)
        self._pending.append(event)

    @property
    def is_due(self) -> bool:
        """Enough events for a batch of their own (`Served` requests are sent with the next, whenever it goes:
        they are counted in one step, and no request is running on their account)."""
        return len(self._pending) - self._num_folded >= REPORT_MAX_EVENTS

    def take(self) -> list[Served | Started | Ended | Routed | Timed]:
        """The `Served` events first, then the other pending events in order. A request that failed keeps its
        two events: its error may stop the replica."""
        served = [Served(replica_id, tuple(requests)) for replica_id, requests in self._served.items()]
        taken = served + [event for event in self._pending if event is not None]
        self._pending, self._started_at, self._served, self._num_folded = [], {}, {}, 0
        return taken
