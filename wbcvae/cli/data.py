"""`wbcvae data …`: look at a data source, write the synthetic world, draw the montage."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect data sources, write the synthetic world")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    summary = sub.add_parser("summary", help="cells per class and per patient/sample of any supported source")
    summary.add_argument("source", type=Path, help="image folder / CSV manifest / .h5ad / van Galen folder / synthetic world")
    summary.add_argument("--unknown", choices=("skip", "fail"), default="skip", help="what to do with unmapped labels")
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
    montage.set_defaults(run=_montage)


def _summary(args: argparse.Namespace) -> None:
    from wbcvae.data.summary import summarise

    print(summarise(args.source, unknown=args.unknown))


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
    montage(args.world, real, args.out, per_class=args.per_class)
    print(f"montage written to {args.out}")
