"""Rebuilds the packaged default router from the shipped routing data (an offline step; its output is committed).

    .venv/bin/python -m switchboard.router.build_default [--out DIR]

Trains what `router train` trains by default (`pipeline.PACKAGED_CANDIDATES`: `ensemble-format3`, chosen by
leave-one-task-out CV — docs/router.md), its calibration chosen on inner folds that hold whole tasks out, reports
a leave-one-task-out nested CV (seed 0), and writes a router that refers to the built-in static embedder, so the
package carries the embedding table once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from switchboard.router.data import load_shipped
from switchboard.router.evaluate import format_table
from switchboard.router.persist import default_router_dir
from switchboard.router.pipeline import TrainSettings, train_router, write_router


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=default_router_dir())
    args = parser.parse_args(argv)
    shipped = load_shipped()
    examples, prices = shipped.examples, shipped.prices
    settings = TrainSettings()
    result = train_router(examples, prices, settings)
    if result.evaluation is not None:
        print(format_table(result.evaluation))
    write_router(result, args.out, settings, len(examples), embedder_dir=None)
    print(f"default router ({result.chosen_label}) written to {args.out}")


if __name__ == "__main__":
    main()
