"""`wbcvae data …`: look at a data source, write the synthetic world, draw the montage."""

from __future__ import annotations

import argparse
from pathlib import Path

from wbcvae.data.bad_files import BAD_FILE_POLICIES


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect data sources, write the synthetic world")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    summary = sub.add_parser("summary", help="cells per class and per patient/sample of any supported source")
    summary.add_argument("source", type=Path, help="image folder / CSV manifest / .h5ad / van Galen folder / synthetic world")
    summary.add_argument("--unknown", choices=("skip", "fail"), default="skip", help="what to do with unmapped labels")
    summary.add_argument("--check", action="store_true", help="decode every image and list the unreadable ones")
    add_bad_files_argument(summary)
    summary.set_defaults(run=_summary)

    synth = sub.add_parser("synth", help="write a synthetic world (images + RNA + ground truth) to OUT")
    synth.add_argument("out", type=Path)
    synth.add_argument("--cells-per-class", type=int, default=60, help="image crops per class")
    synth.add_argument("--rna-cells", type=int, default=3000)
    synth.add_argument("--genes", type=int, default=2000)
    synth.add_argument("--crop-size", type=int, default=288)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    synth.set_defaults(run=_synth)

    montage = sub.add_parser("montage", help="synthetic and real crops side by side, per class, as one PNG")
    montage.add_argument("world", type=Path, help="a synthetic world written by `wbcvae data synth`")
    montage.add_argument("--real", type=Path, default=None, help="real crops in the PBC layout (optional)")
    montage.add_argument("--out", type=Path, required=True)
    montage.add_argument("--per-class", type=int, default=3)
    add_bad_files_argument(montage)
    montage.set_defaults(run=_montage)


def add_bad_files_argument(parser: argparse.ArgumentParser) -> None:
    """`--bad-files skip|fail`, the same for every command that reads images or sample tables."""
    parser.add_argument(
        "--bad-files", choices=BAD_FILE_POLICIES, default="skip",
        help="unreadable images / sample tables: skip (count and name them) or fail (stop at the first)",
    )


def _summary(args: argparse.Namespace) -> None:
    from wbcvae.data.summary import summarise

    print(summarise(args.source, unknown=args.unknown, check=args.check, bad_files=args.bad_files))


def _synth(args: argparse.Namespace) -> None:
    from wbcvae.data.synthetic.world import write_world

    write_world(
        args.out,
        cells_per_class=args.cells_per_class,
        rna_cells=args.rna_cells,
        n_genes=args.genes,
        crop_size=args.crop_size,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"synthetic world written to {args.out}")


def _montage(args: argparse.Namespace) -> None:
    from wbcvae.data.montage import montage

    real = args.real if args.real is not None and args.real.is_dir() else None
    if args.real is not None and real is None:
        print(f"note: {args.real} not found; the montage shows synthetic crops only")
    montage(args.world, real, args.out, per_class=args.per_class, bad_files=args.bad_files)
    print(f"montage written to {args.out}")
