"""`wbcvae` console entry point: one subcommand per concern, each registered by its own module.

A module in `COMMANDS` exposes `register(subparsers)`; it adds its parser and sets `run=` to a
function taking the parsed arguments. Heavy imports (torch, scanpy) happen inside `run`, so
`wbcvae --help` stays fast. Bad input (`InputError`) becomes one line on stderr and exit code 2; a
result that cannot be written (read-only folder, full disk, file-size limit) one line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys

from wbcvae.errors import InputError, WriteError
from wbcvae.utils.atomic import write_failure

COMMANDS = ("data", "segment", "features", "train", "embed", "align", "trajectory", "pipeline")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wbcvae", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"wbcvae.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(signal, "SIGXFSZ"):  # over `ulimit -f` a write then fails with EFBIG instead of killing us mid-file
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    from wbcvae.utils.quiet import silence_third_party_noise

    silence_third_party_noise()
    try:
        return int(args.run(args) or 0)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a WriteError already names its path; any other failed write is named here
        line = str(err) if isinstance(err, WriteError) else write_failure(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
