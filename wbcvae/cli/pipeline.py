"""`wbcvae pipeline --config …`: every stage, from data to the report, resuming where a killed run stopped."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONFIG = Path("experiments/pipeline/demo.yaml")


def register(subparsers: argparse._SubParsersAction) -> None:
    pipeline = subparsers.add_parser("pipeline", help="data → segmentation → features → VAEs → alignment → trajectories → real RNA → report")
    pipeline.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"pipeline YAML (default {DEFAULT_CONFIG})")
    pipeline.add_argument("--out", type=Path, help="run folder (overrides the config's `out`)")
    pipeline.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config value, e.g. --set world.cells_per_class=12 (repeatable)",
    )
    pipeline.set_defaults(run=_pipeline)


def _pipeline(args: argparse.Namespace) -> None:
    from wbcvae.pipeline import load_pipeline_config, run_pipeline

    run_pipeline(load_pipeline_config(args.config, args.overrides), out=args.out)
