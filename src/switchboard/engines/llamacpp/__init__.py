"""The `llamacpp` backend: a real GGUF model run by llama-cpp-python in its own worker process.

The engine is imported on first use (PEP 562): the worker process runs `-m switchboard.engines.llamacpp.worker`,
which imports this package first, and needs none of the engine's HTTP client machinery (httpx, the upstream
engine: 0.06-0.2 s of every worker's start here)."""

from typing import Any

__all__ = ["LlamaCppEngine", "default_model_path"]


def __getattr__(name: str) -> Any:
    if name == "LlamaCppEngine":
        from switchboard.engines.llamacpp.engine import LlamaCppEngine

        return LlamaCppEngine
    if name == "default_model_path":
        from switchboard.engines.llamacpp.paths import default_model_path

        return default_model_path
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
