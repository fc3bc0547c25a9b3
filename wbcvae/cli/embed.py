"""`wbcvae embed --ckpt … --source … --out x.h5ad`: cells → latent μ as AnnData (`obsm["X_wbcvae"]`)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    embed = subparsers.add_parser("embed", help="write the latent μ of every cell of a source as an .h5ad")
    embed.add_argument("--ckpt", type=Path, required=True, help="a β-VAE checkpoint (image or RNA) from `wbcvae train`")
    embed.add_argument("--source", type=Path, required=True, help="feature store (image VAE) or RNA source (RNA VAE)")
    embed.add_argument("--out", type=Path, required=True, help="the .h5ad to write")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, …")
    embed.add_argument("--preprocessor", type=Path, default=None, help="RNA only: a saved preprocessing JSON to use instead of the run's")
    embed.set_defaults(run=_embed)


def _embed(args: argparse.Namespace) -> None:
    from wbcvae.training.embed import EMBEDDING_KEY, embed

    adata = embed(args.ckpt, args.source, args.out, args.batch_size, args.device, args.preprocessor)
    print(f"{adata.n_obs} cells × {adata.obsm[EMBEDDING_KEY].shape[1]} latent dimensions written to {args.out} (obsm[{EMBEDDING_KEY!r}])")
