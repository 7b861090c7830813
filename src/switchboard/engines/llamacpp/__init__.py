"""The `llamacpp` backend: a real GGUF model run by llama-cpp-python in its own worker process."""

from switchboard.engines.llamacpp.engine import LlamaCppEngine, default_model_path

__all__ = ["LlamaCppEngine", "default_model_path"]
