"""`wbcvae trajectory --ckpt … --preset granulopoiesis`: walk a trained joint model, decode, cluster, report."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from wbcvae.trajectory.presets import PRESETS  # light: no torch

    traj = subparsers.add_parser(
        "trajectory",
        help="fit a GP path through the joint latent, decode it into images and genes, cluster gene kinetics",
        description="Example: wbcvae trajectory --ckpt runs/alignment/version_0/checkpoints/last.ckpt --preset granulopoiesis",
    )
    traj.add_argument("--ckpt", type=Path, required=True, help="joint alignment checkpoint (wbcvae align)")
    traj.add_argument("--preset", action="append", choices=sorted(PRESETS), help="repeat for several (default: all)")
    traj.add_argument("--out", type=Path, default=None, help="output folder (default: beside the checkpoint, trajectories/)")
    traj.add_argument("--path", choices=("data", "chord"), default="data",
                      help="data: through diffusion-pseudotime quantiles of the cells (default); chord: the study's class anchors")
    traj.add_argument("--start-waypoints", choices=("extent", "count"), default="extent",
                      help="data path: the start class' pseudotime quantiles for the share of DPT it spans (default) or of the cells")
    traj.add_argument("--waypoints", action="store_true", help="chord: anchor every stage of the series, not only its two ends")
    traj.add_argument("--anchor-mode", choices=("centroid", "cells"), default="centroid")
    traj.add_argument("--steps", type=int, default=100)
    traj.add_argument("--samples", type=int, default=16, help="posterior paths decoded for the uncertainty")
    traj.add_argument("--k-range", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                      help="k-Shape cluster counts tried; the best silhouette wins (default: 3 6, as in the pipeline)")
    traj.add_argument("--min-lengthscale", type=float, default=0.25, help="shortest RBF lengthscale of the path GP, in path pseudotime (0 … 1)")
    traj.add_argument("--seed", type=int, default=0)
    traj.add_argument("--truth", type=Path, default=None, help="synthetic world (or its rna.h5ad): score against ground truth")
    traj.add_argument("--features", type=Path, default=None,
                      help="feature store of image cells (e.g. the one the model was aligned on): their latents anchor the paths "
                           "beside the RNA cells, and each strip shows the real crop nearest each frame (default: the image "
                           "latents saved in the checkpoint, no crops)")
    traj.add_argument("--rna", type=Path, default=None,
                      help="RNA source the model was aligned on (default: --truth): its cells are the yardstick of flat vs "
                           "changed genes and give the DPT trends; without it only the decoded samples' spread is used")
    traj.set_defaults(run=_trajectory)


def _trajectory(args: argparse.Namespace) -> None:
    from wbcvae.alignment.module import load_alignment
    from wbcvae.errors import InputError
    from wbcvae.report.html import write_report
    from wbcvae.features.store import FeatureStore
    from wbcvae.trajectory.callback import run_presets, store_crops, store_images
    from wbcvae.trajectory.presets import PRESETS
    from wbcvae.trajectory.run import TrajectorySettings, report_section

    module = load_alignment(args.ckpt)
    out = args.out or args.ckpt.resolve().parent.parent / "trajectories"
    settings = TrajectorySettings(
        path=args.path,
        start_waypoints=args.start_waypoints,
        waypoints=args.waypoints,
        anchor_mode=args.anchor_mode,
        steps=args.steps,
        samples=args.samples,
        **({"k_range": tuple(args.k_range)} if args.k_range else {}),
        seed=args.seed,
        min_lengthscale=args.min_lengthscale,
    )
    truth = _truth(args.truth, module) if args.truth else None
    rna = args.rna or args.truth
    expression = _cells(rna, module) if rna else None
    images = crops = None
    if args.features:
        store = FeatureStore(args.features)
        images = store_images(module, store)
        crops = store_crops(store, images)
    results = run_presets(module, out, args.preset or tuple(PRESETS), settings, truth, images, expression, crops)
    if not results:
        raise InputError(f"{args.ckpt}: no trajectory could be fitted (the warnings above name the missing classes)")
    for name, result in results.items():
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.metrics.items()}
        print(f"{name}: {shown}")
    metrics = {name: result.metrics for name, result in results.items()}
    report = write_report(out / "report", [report_section(r) for r in results.values()], metrics, title=f"wbcvae trajectories: {args.ckpt}")
    print(f"wrote {len(results)} trajectories to {out}; report: {report}")


def _cells(source: Path, module):
    from wbcvae.errors import InputError
    from wbcvae.trajectory.expression import cell_expression

    expression = cell_expression(source, None, module.gene_names)
    if len(expression) != len(module.rna_latent):
        raise InputError(f"{source}: {len(expression)} cells, but the model was aligned on {len(module.rna_latent)} RNA cells")
    return expression


def _truth(source: Path, module):
    from wbcvae.data.rna import read_rna
    from wbcvae.errors import InputError
    from wbcvae.trajectory.recovery import GroundTruth

    adata = read_rna(source)
    if adata.n_obs != len(module.rna_latent):
        raise InputError(f"{source}: {adata.n_obs} cells, but the model was aligned on {len(module.rna_latent)} RNA cells")
    truth = GroundTruth.from_anndata(module.rna_latent.numpy(), adata.obs, adata.var)
    if truth is None:
        raise InputError(f"{source}: no ground truth (obs lineage/pseudotime and var kinetic_<lineage>): not a synthetic world")
    return truth
