"""Router directories: everything needed to route, with no network and no training libraries.

Layout: `router.json` (format, strategy, experts and prices, embedder, CV report), `model.npz` (strategy
arrays), `calibration.npz`, and the embedder: either an `embedder/` directory holding the distilled static
table, or a reference to a built-in one (`"builtin:minilm-static"`, shipped in the package).
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from switchboard.router.calibration import Calibration
from switchboard.router.cost import OutputLengthModel
from switchboard.router.embed import Embedder, EmbedderKind, StaticEmbedder
from switchboard.router.router import Router
from switchboard.router.strategies import STRATEGIES, StrategyName

FORMAT_VERSION = 1
BUILTIN_STATIC = "builtin:minilm-static"


class RouterLoadError(RuntimeError):
    """A router directory is missing a file or has an unsupported format; the message names which."""


def builtin_static_dir() -> Path:
    return Path(str(resources.files("switchboard.data").joinpath("embedder/minilm-static")))


def default_router_dir() -> Path:
    return Path(str(resources.files("switchboard.data").joinpath("router/default")))


def _embedder_dir(router_dir: Path, ref: str) -> Path:
    return builtin_static_dir() if ref == BUILTIN_STATIC else router_dir / ref


def load_embedder(spec: dict[str, Any], router_dir: Path) -> Embedder:
    kind = EmbedderKind(spec["kind"])
    if kind is EmbedderKind.STATIC:
        return StaticEmbedder(_embedder_dir(router_dir, spec["path"]), max_tokens=int(spec.get("max_tokens", 512)))
    if kind is EmbedderKind.SENTENCE_TRANSFORMERS:
        from switchboard.router.embed import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder()
    from switchboard.router.embed import OnnxEmbedder

    return OnnxEmbedder(router_dir / spec["path"])


def save_router(router: Router, out_dir: Path | str, embedder_spec: dict[str, Any], report: dict[str, Any]) -> Path:
    """Writes a router directory. A static embedder is copied in unless its spec points at the built-in one."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "model.npz", **router.model.arrays())
    np.savez(out / "calibration.npz", **router.calibration.arrays())
    if router.output_length is not None:
        np.savez(out / "output_length.npz", **router.output_length.arrays())
    input_usd, output_usd = router.io_prices()
    meta = {
        "format_version": FORMAT_VERSION,
        "strategy": router.model.name.value,
        "experts": list(router.experts),
        "usd_per_mtok": [float(p) for p in router.usd_per_mtok],
        "input_usd_per_mtok": [float(p) for p in input_usd],
        "output_usd_per_mtok": [float(p) for p in output_usd],
        "use_cheap_features": router.use_cheap_features,
        "caution_margin": float(router.caution_margin),
        "caution_by_confidence": bool(router.caution_by_confidence),
        "embedder": embedder_spec,
        "report": report,
    }
    if router.prior_quality is not None:
        meta["prior_quality"] = [float(q) for q in router.prior_quality]
    if router.residual_correlation is not None:  # m × m, about 1.3 KB of JSON for nine experts
        meta["residual_correlation"] = [[round(float(c), 4) for c in row] for row in router.residual_correlation]
    (out / "router.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def copy_static_embedder(source_dir: Path, router_dir: Path) -> dict[str, Any]:
    target = Path(router_dir) / "embedder"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source_dir, target)
    return {"kind": EmbedderKind.STATIC.value, "path": "embedder"}


def load_router(path: Path | str) -> Router:
    """Loads a router directory written by `save_router`; raises RouterLoadError naming what is wrong."""
    path = Path(path)
    try:
        meta = json.loads((path / "router.json").read_text())
    except FileNotFoundError:
        raise RouterLoadError(f"{path}: not a router directory (no router.json)") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise RouterLoadError(f"{path}/router.json: unsupported format_version {meta.get('format_version')!r}")
    try:
        strategy = StrategyName(meta["strategy"])
        experts = tuple(meta["experts"])
        with np.load(path / "model.npz") as arrays:
            model = STRATEGIES[strategy].from_arrays(dict(arrays))
        with np.load(path / "calibration.npz") as arrays:
            calibration = Calibration.from_arrays(dict(arrays), len(experts))
        embedder = load_embedder(meta["embedder"], path)
        output_length = None
        if (path / "output_length.npz").exists():  # absent: the constant default (router.cost)
            with np.load(path / "output_length.npz") as arrays:
                output_length = OutputLengthModel.from_arrays(dict(arrays))
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise RouterLoadError(f"{path}: {exc}") from exc
    io = {k: np.asarray(meta[k], np.float64) for k in ("input_usd_per_mtok", "output_usd_per_mtok") if k in meta}
    return Router(
        experts=experts,
        usd_per_mtok=np.asarray(meta["usd_per_mtok"], np.float64),
        model=model,
        calibration=calibration,
        embedder=embedder,
        use_cheap_features=bool(meta.get("use_cheap_features", True)),
        input_usd_per_mtok=io.get("input_usd_per_mtok"),
        output_usd_per_mtok=io.get("output_usd_per_mtok"),
        output_length=output_length,
        # Routers saved before the conservative rule have neither: the plain rule.
        prior_quality=np.asarray(meta["prior_quality"], np.float64) if "prior_quality" in meta else None,
        caution_margin=float(meta.get("caution_margin", 0.0)),
        caution_by_confidence=bool(meta.get("caution_by_confidence", False)),  # absent: routers saved before it
        # Routers saved before the correlated prior have none: online learning treats the experts as independent.
        residual_correlation=np.asarray(meta["residual_correlation"], np.float64) if "residual_correlation" in meta else None,
    )


def load_default_router() -> Router:
    """The router trained on the shipped routing data (packaged; loads in well under a second)."""
    return load_router(default_router_dir())


def read_report(path: Path | str) -> dict[str, Any]:
    return json.loads((Path(path) / "router.json").read_text()).get("report", {})
