"""Builds the engine for an expert from its config."""

from __future__ import annotations

from switchboard.config.schema import ExpertConfig, LlamaCppBackend, OpenAIBackend, ProcessBackend, SimulatedBackend
from switchboard.engines.base import Engine


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
