"""Builds the engine for an expert from its config."""

from __future__ import annotations

from switchboard.config.schema import ExpertConfig, LlamaCppBackend, OpenAIBackend, ProcessBackend, SimulatedBackend
from switchboard.engines.base import Engine


class PooledEngineFactory:
    """`build_engine`, with one pool of pre-started llama.cpp workers shared by every llama.cpp replica
    (engines/llamacpp/pool.py). `start()` begins filling it; `close()` ends its workers."""

    def __init__(self, num_standby_workers: int) -> None:
        from switchboard.engines.llamacpp.pool import StandbyPool

        self.pool = StandbyPool(num_standby_workers) if num_standby_workers > 0 else None

    def __call__(self, expert: ExpertConfig, environ: dict[str, str] | None = None) -> Engine:
        if isinstance(expert.backend, LlamaCppBackend):
            from switchboard.engines.llamacpp.engine import LlamaCppEngine

            return LlamaCppEngine.from_config(expert.id, expert.context_tokens, expert.backend, self.pool)
        return build_engine(expert, environ)

    def start(self) -> None:
        if self.pool is not None:
            self.pool.start()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


def build_engine(expert: ExpertConfig, environ: dict[str, str] | None = None) -> Engine:
    """A fresh, not yet started engine for one replica of `expert`."""
    backend = expert.backend
    if isinstance(backend, OpenAIBackend):
        from switchboard.engines.openai_upstream import OpenAIUpstreamEngine

        return OpenAIUpstreamEngine.from_config(expert.id, backend, environ)
    if isinstance(backend, LlamaCppBackend):
        from switchboard.engines.llamacpp.engine import LlamaCppEngine

        return LlamaCppEngine.from_config(expert.id, expert.context_tokens, backend)
    if isinstance(backend, SimulatedBackend):
        from switchboard.engines.simulated import SimulatedEngine

        return SimulatedEngine.from_config(expert.id, expert.params_b, backend)
    if isinstance(backend, ProcessBackend):
        from switchboard.engines.process import ProcessEngine

        return ProcessEngine.from_config(expert.id, backend)
    raise TypeError(f"unknown backend {type(backend).__name__}")
