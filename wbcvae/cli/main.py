"""`wbcvae` console entry point: one subcommand per concern, each registered by its own module.

A module in `COMMANDS` exposes `register(subparsers)`; it adds its parser and sets `run=` to a
function taking the parsed arguments. Heavy imports (torch, scanpy) happen inside `run`, so
`wbcvae --help` stays fast. Bad input (`InputError`) becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from wbcvae.errors import InputError

COMMANDS = ("data", "segment", "features", "train", "embed", "align", "trajectory", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wbcvae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"wbcvae.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
