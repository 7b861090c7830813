"""On-disk embedding cache keyed by content hash, so retraining never re-embeds a prompt it has seen.

One `.npz` file per embedder name under the cache directory holds the sha256 of each text and its vector.
Writes go to a temporary file and are renamed into place, so a crash never leaves a torn cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

DEFAULT_CACHE_DIR = Path("~/.cache/switchboard/embeddings")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    def __init__(self, cache_dir: Path | str, embedder_name: str) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder_name)
        self.path = Path(cache_dir).expanduser() / f"{safe}.npz"

    def _load(self) -> dict[str, np.ndarray]:
        if not self.path.exists():
            return {}
        with np.load(self.path) as data:
            return dict(zip(data["keys"].tolist(), data["vectors"]))

    def _save(self, entries: dict[str, np.ndarray]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, keys=np.asarray(list(entries)), vectors=np.stack(list(entries.values())))
        os.replace(tmp, self.path)

    def get_or_compute(self, texts: Sequence[str], compute: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
        """Vectors for `texts` in order; only texts not in the cache are passed to `compute` (once each)."""
        entries = self._load()
        keys = [text_key(t) for t in texts]
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts):
            if key not in entries and key not in missing:
                missing[key] = text
        if missing:
            vectors = compute(list(missing.values()))
            entries.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
            self._save(entries)
        return np.stack([entries[k] for k in keys]).astype(np.float32) if keys else np.zeros((0, 0), np.float32)
