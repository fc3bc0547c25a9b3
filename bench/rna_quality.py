"""How well RNA β-VAE checkpoints reconstruct held-out cells, beside PCA-50, the mean and (a synthetic world) the truth.

The measures and yardsticks are `wbcvae.training.rna_quality`'s (plain log-expression MSE, MSE on held-out
molecules, NB log-likelihood); the pipeline records the same for its RNA stages. This script scores checkpoints
side by side and writes `rna_quality.json`.

With `--scvi` (scvi-tools installed: `pip install -e '.[bench]'`) the anchor a user would run instead is scored
beside them: scvi-tools' SCVI with its defaults (one hidden layer of 128, no batch key), a 50-d latent and an NB
likelihood, trained on the same training cells and kept genes for its own default number of epochs (`--scvi-epochs`
sets it; its KL weight warms up over 400 epochs). It reconstructs from its posterior mean, as our model does (z = μ);
its NB mean is the kept genes' library (on held-out molecules, B's) times its decoded share, so its scores are read
as our count model's.

    python bench/rna_quality.py runs/rna_vae/version_0/checkpoints/last.ckpt [more.ckpt …] [--out runs/quality/rna] [--split-seed 0]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from wbcvae.training.rna_quality import (
    MEASURES,
    expected_log_expression,
    held_out_halves,
    held_out_reconstruction,
    log_normalised,
    nb_log_likelihood,
)
from wbcvae.training.yardsticks import mse
from wbcvae.utils.atomic import atomic_path


class ScviYardstick:
    """scvi-tools' SCVI trained on `collect`'s training cells (the kept genes' counts), read as our count model."""

    def __init__(self, train: dict, epochs: int | None, seed: int = 0) -> None:
        import anndata as ad
        import scvi

        scvi.settings.seed = seed
        cells = ad.AnnData(train["counts"].astype(np.float32))
        scvi.model.SCVI.setup_anndata(cells)
        self.model = scvi.model.SCVI(cells, n_latent=50, gene_likelihood="nb")
        self.model.train(max_epochs=epochs, batch_size=128, train_size=1.0, accelerator="cpu", enable_progress_bar=False)
        self.model.module.eval()
        self.epochs = int(self.model.history["elbo_train"].shape[0])

    @torch.no_grad()
    def share_theta(self, counts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's decoded share of the kept genes' molecules (cells × genes) and each gene's θ, from the
        posterior mean z of cells with these kept-gene counts."""
        import anndata as ad

        z = torch.from_numpy(self.model.get_latent_representation(ad.AnnData(counts.astype(np.float32)), give_mean=True))
        out = self.model.module.generative(z=z, library=torch.zeros(len(z), 1), batch_index=torch.zeros(len(z), 1))
        return out["px"].scale.double(), out["px"].theta.double().reshape(-1, counts.shape[1])[0]

    def scores(self, test: dict, split_seed: int) -> dict[str, float]:
        """The three measures of `held_out_reconstruction` for `collect`'s held-out cells."""
        share, theta = self.share_theta(test["counts"])
        mean = share * torch.as_tensor(test["counts"].sum(1, keepdims=True), dtype=torch.float64)
        library = torch.as_tensor(test["library"], dtype=torch.float64)
        half_a, half_b, _, library_b = held_out_halves(test, split_seed)
        share_a, _ = self.share_theta(half_a)
        mean_b = share_a * torch.as_tensor(half_b.sum(1, keepdims=True), dtype=torch.float64)
        recon_b = expected_log_expression(mean_b, theta, torch.as_tensor(library_b, dtype=torch.float64)).numpy()
        return {
            "log_expression_mse": mse(expected_log_expression(mean, theta, library).numpy(), test["truth"]),
            "held_out_molecules_mse": mse(recon_b, log_normalised(half_b, library_b)),
            "nb_log_likelihood": nb_log_likelihood(test["counts"], mean.numpy(), theta.numpy()),
        }


def evaluate(ckpt: Path, device: str, max_cells: int, split_seed: int = 0, scvi: bool = False, scvi_epochs: int | None = None) -> dict:
    """`held_out_reconstruction` of one checkpoint; with `scvi`, SCVI scored beside it, trained for `scvi_epochs`
    (None: its own default)."""
    anchor = {}

    def train_scvi(train: dict) -> ScviYardstick:
        anchor["scvi"] = ScviYardstick(train, scvi_epochs)
        return anchor["scvi"]

    scores = held_out_reconstruction(ckpt, device, max_cells, split_seed, anchors={"scvi": train_scvi} if scvi else None)
    return {**scores, **({"scvi_epochs": anchor["scvi"].epochs} if scvi else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("runs/quality/rna"), help="folder for rna_quality.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-cells", type=int, default=5000, help="cells per split at most")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the held-out molecules' halves (the same for every checkpoint)")
    parser.add_argument("--scvi", action="store_true", help="train and score scvi-tools' SCVI beside each checkpoint")
    parser.add_argument("--scvi-epochs", type=int, default=None, help="SCVI's epochs (default: its own heuristic)")
    args = parser.parse_args()
    if args.scvi and importlib.util.find_spec("scvi") is None:
        parser.error("--scvi needs scvi-tools: pip install -e '.[bench]'")
    results = [evaluate(ckpt, args.device, args.max_cells, args.split_seed, args.scvi, args.scvi_epochs) for ckpt in args.checkpoints]
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out / "rna_quality.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    columns = {"model": "model", "pca50": "PCA-50", "training_mean": "mean", **({"scvi": "SCVI"} if args.scvi else {})}
    if any("truth" in r["log_expression_mse"] for r in results):
        columns["truth"] = "truth"
    labels = " / ".join(columns.values())
    print(f"| data | likelihood | hidden | epochs | held-out cells × genes | log-expression MSE: {labels} "
          f"| MSE on held-out molecules: {labels} | NB log-lik.: {labels} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['data']} | {r['likelihood']} | {r['hidden']} | {r['epochs']} | {r['held_out_cells']} × {r['genes']} ({r['held_out']}) | "
              + " | ".join(" / ".join(f"{r[measure][name]:.4f}" if name in r[measure] else "—" for name in columns) for measure in MEASURES) + " |")  # fmt: skip
    if args.scvi:
        print("SCVI epochs: " + ", ".join(str(r["scvi_epochs"]) for r in results))
    print(f"\nwritten to {args.out / 'rna_quality.json'}")


if __name__ == "__main__":
    main()
