"""Exports a sentence-transformers BERT model to ONNX for the local embedding expert, once.

`python -m switchboard.embeddings.prepare [--model-dir DIR] [--out FILE]` (also `switchboard embeddings
prepare`; `make install` runs it). Needs torch and transformers (the `router-offline` extra); serving the
result does not. The file appears atomically: an interrupted export leaves no half-written model behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from switchboard.embeddings.local import ONNX_FILE_NAME, default_onnx_path


def prepare(out: Path | None = None, model_dir: Path | None = None, *, force: bool = False) -> Path:
    """The ONNX file for `model_dir` (default: the packaged all-MiniLM-L6-v2) at `out` (default: the cache),
    exported unless it is there already (or `force`). Returns its path."""
    from switchboard.router.distill import export_onnx

    out = Path(out) if out is not None else default_onnx_path(model_dir, os.environ)
    if out.is_file() and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        fp32, int8 = export_onnx(Path(tmp), model_dir)
        if out.name == ONNX_FILE_NAME and not (out.parent / int8.name).exists():
            # The int8 model is the router latency benchmark's (benchmarks/router_latency.py reads this cache).
            shutil.move(str(int8), out.parent / int8.name)
        os.replace(fp32, out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    print(prepare(args.out, args.model_dir, force=args.force))


if __name__ == "__main__":
    main()
