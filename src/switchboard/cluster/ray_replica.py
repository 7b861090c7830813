"""A replica as a Ray actor, and the engine proxy the gateway calls it through.

`ReplicaActor` runs one engine (llama.cpp, simulated, or a proxy to an `openai` upstream reachable from its
node) on the node it was pinned to. `RayReplicaEngine` speaks the `Engine` interface for it over the gateway's
channel to the replica (`ray_streams`, over a direct connection: `ray_direct`): requests, whole or streamed, are
opened in batches (those arriving while an open call is in flight go together in the next), and their events are
fetched in batches by plain calls (one call in flight brings the ready events of all of a gateway's requests on
the replica), each returning as
soon as one event is ready, so each token reaches the gateway as soon as the engine yields it (tokens the engine
yields faster than they are fetched travel together; none waits for a later one).

Engine errors cross the process boundary as `RemoteEngineError` values (engine exceptions do not pickle with
their status and code) and are raised again on the gateway side; a dead actor or node becomes `ReplicaLost`,
which the fleet treats like a dead engine process (the replica is stopped and replaced); a lost direct connection
to a live actor is a 502 for the requests it carried.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from switchboard.cluster.ray_direct import DirectCallFailed, DirectConnectionLost, DirectServer
from switchboard.cluster.ray_streams import OpenStreams, RemoteEngineError, StreamChannel, pack_batches
from switchboard.cluster.ray_wire import unpack_request
from switchboard.config.schema import ExpertConfig
from switchboard.engines.base import Completion, EngineError, EngineUnavailable, GenerationRequest, ReplicaLost, StreamEvent


class ReplicaActor:
    """The body of a replica actor (made a Ray actor class by `RayCluster`). One engine, one expert."""

    def __init__(self, expert: dict[str, Any]) -> None:
        from switchboard.engines.factory import build_engine

        config = ExpertConfig.model_validate(expert)
        self.expert_id = config.id
        self.engine = build_engine(config)
        self.is_started = False
        self.num_completed_whole = 0
        """Requests answered whole by `complete`."""
        self.streams = OpenStreams()
        self.direct: DirectServer | None = None
        """The socket gateways send requests over (`ray_direct`), once one asked for it."""
        self._stopped = asyncio.Event()
        self.direct_host: str | None = None
        """The address the direct socket listens on; None: this Ray node's (tests without Ray set one)."""

    @property
    def num_completed(self) -> int:
        """Requests answered in full (`complete`, or a stream to its end): what a test compares with the answers
        clients got, to show that no request ran twice."""
        return self.num_completed_whole + self.streams.num_completed

    async def start(self) -> Any:
        """Starts the engine; returns its cold-start anatomy (or None), or a RemoteEngineError."""
        try:
            await self.engine.start()
        except EngineError as exc:
            return RemoteEngineError.of(exc)
        self.is_started = True
        return getattr(self.engine, "last_cold_start", None)

    def describe(self) -> dict[str, Any]:
        """What a restarted control actor needs to take this replica over: its expert, node, whether its engine
        is serving, and how many requests it has answered."""
        return {"expert_id": self.expert_id, "node_id": self.node_id(), "is_started": self.is_started,
                "num_completed": self.num_completed, "gpu_ids": self.gpu_ids()}

    async def stop(self) -> None:
        self._stopped.set()
        if self.direct is not None:
            self.direct.close()
        await self.engine.stop()

    async def direct_address(self) -> list[Any]:
        """[host, port, token] of this replica's direct socket (`ray_direct`), listening on its node's address
        from the first ask on: gateways send their requests over it rather than by actor calls."""
        if self.direct is None:
            self.direct = DirectServer(self.open_many, self.stream_take, self.stream_cancel, self.streams.cancel_channel)
        if self.direct_host is None:
            import ray

            self.direct_host = ray.util.get_node_ip_address()
        return await self.direct.start(self.direct_host)

    async def wait_stopped(self) -> None:
        """Returns when the replica is stopped; fails (a Ray error, for the caller) when the actor or its node
        dies: what each direct connection watches, so a host that vanished without closing its sockets still ends
        them."""
        await self._stopped.wait()

    def call_counts(self) -> dict[str, int]:
        """Calls this actor answered on the request path and the requests they opened (`open_many`, `stream_take`,
        `complete`), by Ray calls or over direct connections (`direct_calls` of them, on `direct_connections`):
        what `benchmarks/ray_cpu.py` divides into calls per request."""
        streams, direct = self.streams, self.direct
        return {"open_calls": streams.num_open_calls, "opened": streams.num_opened, "take_calls": streams.num_take_calls,
                "complete_calls": self.num_completed_whole,
                "direct_connections": direct.num_connections if direct else 0, "direct_calls": direct.num_calls if direct else 0}

    def gpu_ids(self) -> list[int]:
        """The GPUs Ray gave this actor (its `num_gpus`; empty on a node without GPUs)."""
        import ray

        return [int(i) for i in ray.get_gpu_ids()]

    def node_id(self) -> str:
        """The Ray node this actor runs on (placement checks and operators' `ray list actors` cross-checks)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    async def complete(self, request: GenerationRequest) -> Completion | RemoteEngineError:
        """One request in one call (the gateways batch theirs by `open_many`; benchmarks call this for the bare
        ceiling of one actor call per request)."""
        try:
            completion = await self.engine.complete(request)
        except EngineError as exc:
            return RemoteEngineError.of(exc)
        self.num_completed_whole += 1
        return completion

    async def open_many(self, requests: list[list[Any]], channel_id: str, wait_s: float | None) -> list[list[Any]]:
        """Starts each request (`ray_wire.pack_request`: stream id, request, is_whole) of the caller's `channel_id`
        at once, to run concurrently: streamed, or whole (its one event is the `Completion`). Returns one batch per
        request (`ray_streams.pack_batches`), in order, once each has an event ready or `wait_s` passed (later
        events come from `stream_take`)."""
        opened = []
        for packed in requests:
            stream_id, request, is_whole = unpack_request(packed)
            opened.append((stream_id, self._whole(request) if is_whole else self.engine.stream(request)))
        return pack_batches(await self.streams.open_many(opened, self.expert_id, channel_id, wait_s))

    async def _whole(self, request: GenerationRequest) -> AsyncIterator[Completion]:
        yield await self.engine.complete(request)

    async def stream_take(self, channel_id: str) -> list[list[Any]]:
        """The events ready on any stream of `channel_id` since the last take, one batch per stream (waiting
        for at least one), packed (`ray_streams.pack_batches`)."""
        return pack_batches(await self.streams.take(channel_id))

    def stream_cancel(self, channel_id: str, stream_id: int) -> None:
        """The caller went away: stop generating that stream."""
        self.streams.cancel((channel_id, stream_id))


LOST_PROBE_TIMEOUT_S = 5.0
"""How long a lost direct connection waits for Ray to say whether its replica actor is alive."""


class RayReplicaEngine:
    """The `Engine` for a replica actor. `start` creates the actor (via `make_actor`) and waits for its engine."""

    def __init__(self, replica_id: str, expert_id: str, node_id: str, make_actor: Any, actor: Any = None,
                 channel: StreamChannel | None = None) -> None:
        self.replica_id = replica_id
        self.expert_id = expert_id
        self.node_id = node_id
        self._make_actor = make_actor
        self.actor = actor
        self.last_cold_start: Any = None
        self.lost: str | None = None
        self.devices: tuple[int, ...] = ()
        """The GPU ids Ray gave the actor (`ray.get_gpu_ids()`), once started."""
        self.channel = channel
        """Where this engine's streams are fetched (pass one to share it with other engines for this actor)."""

    @property
    def is_running(self) -> bool:
        """False once the actor or its node is known dead (the fleet's health check then stops the replica)."""
        return self.lost is None

    def _failure(self, exc: BaseException) -> EngineError:
        """A Ray error as the engine error it means: a dead actor or node is `ReplicaLost` (and the replica is
        marked lost); an exception inside the actor is the replica's own 502."""
        from ray.exceptions import NodeDiedError, RayActorError

        if not isinstance(exc, (RayActorError, NodeDiedError)):
            return EngineError(self.expert_id, f"replica {self.replica_id} failed: {type(exc).__name__}: {exc}")
        why = "its node died" if isinstance(exc, NodeDiedError) or "node has died" in str(exc) else "its actor died"
        self.lost = f"replica {self.replica_id} on Ray node {self.node_id[:12]} was lost ({why})"
        return ReplicaLost(self.expert_id, self.lost)

    async def start(self) -> None:
        from ray.exceptions import RayError

        if self.actor is None:
            self.actor = self._make_actor()
        try:
            started = await self.actor.start.remote()
        except RayError as exc:
            raise self._failure(exc) from None
        if isinstance(started, RemoteEngineError):
            raise started.to_exception()
        self.last_cold_start = started
        try:
            self.devices = tuple(await self.actor.gpu_ids.remote())
        except RayError as exc:
            raise self._failure(exc) from None

    async def stop(self) -> None:
        import ray
        from ray.exceptions import RayError

        if self.actor is None:
            return
        actor, self.actor = self.actor, None
        try:
            await actor.stop.remote()
        except RayError:
            pass  # already gone: nothing left to release
        ray.kill(actor, no_restart=True)

    async def complete(self, request: GenerationRequest) -> Completion:
        """The whole answer, through the channel (batched with this process's other requests to the replica)."""
        answer: Any = None
        async for event in self._events(request, whole=True):
            answer = event
        if not isinstance(answer, Completion):
            raise EngineError(self.expert_id, f"replica {self.replica_id} ended a request without an answer")
        return answer

    def _running_actor(self) -> Any:
        if self.actor is None or self.lost is not None:
            raise EngineUnavailable(self.expert_id, self.lost or f"replica {self.replica_id} is not running")
        return self.actor

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """The replica's events, fetched in batches (`StreamChannel`, shared by this process's requests to it).
        (`_events` itself, not a generator around it: each layer costs every token a step.)"""
        return self._events(request, whole=False)

    async def _events(self, request: GenerationRequest, *, whole: bool) -> AsyncIterator[Any]:
        from ray.exceptions import RayError

        self._running_actor()
        if self.channel is None or self.channel.actor != self.actor:
            self.channel = StreamChannel(self.actor)
        try:
            async for event in self.channel.stream(request, whole=whole):
                if isinstance(event, RemoteEngineError):
                    raise event.to_exception()
                yield event
        except (RayError, DirectCallFailed) as exc:
            raise self._failure(exc) from None
        except DirectConnectionLost as exc:
            raise await self._connection_lost(exc) from None

    async def _connection_lost(self, exc: DirectConnectionLost) -> EngineError:
        """What a lost direct connection means: asks Ray whether the actor is alive (`ReplicaLost` if not; a
        502 naming the connection if it is, or if Ray cannot tell within `LOST_PROBE_TIMEOUT_S`)."""
        from ray.exceptions import RayError

        try:
            await asyncio.wait_for(self._running_actor().describe.remote(), LOST_PROBE_TIMEOUT_S)
        except RayError as ray_exc:
            return self._failure(ray_exc)
        except (asyncio.TimeoutError, EngineUnavailable):
            pass
        return EngineError(self.expert_id, f"the connection to replica {self.replica_id} was lost: {exc}")
