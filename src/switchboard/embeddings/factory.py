"""Builds the engine for an embedding expert from its config."""

from __future__ import annotations

from collections.abc import Mapping

from switchboard.config.schema import EmbeddingExpertConfig, OnnxEmbeddingBackend
from switchboard.embeddings.base import EmbeddingEngine


def build_embedding_engine(expert: EmbeddingExpertConfig, environ: Mapping[str, str] | None = None) -> EmbeddingEngine:
    """A fresh, not yet started engine for `expert`."""
    if isinstance(expert.backend, OnnxEmbeddingBackend):
        from switchboard.embeddings.local import OnnxEmbeddingEngine

        return OnnxEmbeddingEngine(expert.id, expert.backend, environ)
    from switchboard.embeddings.upstream import OpenAIEmbeddingEngine

    return OpenAIEmbeddingEngine.from_config(expert.id, expert.backend, environ)
