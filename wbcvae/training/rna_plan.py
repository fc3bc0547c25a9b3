"""Training plan of the RNA β-VAE: λ·reconstruction + φ·(1 − cos(z, z_atlas)) + β·KL.

The reconstruction is the study's MSE(X̂, X) on scaled log expression (`likelihood: mse`) or, as scVI,
the negative-binomial negative log-likelihood of the kept genes' raw counts (`likelihood: nb`); both
are means over cells and genes, so λ, φ and β keep their meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from wbcvae.errors import InputError
from wbcvae.models.losses import kl_divergence
from wbcvae.models.rna_vae import LIKELIHOODS, RnaVAE, negative_binomial_log_prob
from wbcvae.training.plan import Batch, Outputs, VAEPlan, check_lr_schedule


class RnaVAEPlan(VAEPlan):
    """Trains `self.vae` (an `RnaVAE`) on batches with `x`, `z_atlas`, `label` (and, for "nb", `counts`
    and `library`, which `RnaDataset` always serves).

    The cosine term pulls each cell's z towards the direction of its reference-atlas embedding, so
    the latent inherits the atlas's geometry. `n_genes` may be left out: it is then read from the
    DataModule (`n_genes`) once the data are set up, and recorded in the checkpoint's hparams.
    """

    kind = "rna"
    input_key = "x"

    def __init__(
        self,
        n_genes: int | None = None,
        hidden: Sequence[int] = (800, 600, 200),
        latent_dim: int = 50,
        lam: float = 1.0,
        phi: float = 1.0,
        beta: float = 1e-3,
        kl_warmup_steps: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        likelihood: str = "mse",
    ) -> None:
        super().__init__()
        check_lr_schedule(lr_schedule)
        if likelihood not in LIKELIHOODS:
            raise InputError(f"model.likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.save_hyperparameters()
        self.vae: RnaVAE | None = None
        self.preprocessor_path: Path | None = None
        if n_genes is not None:
            self.vae = RnaVAE(n_genes, hidden, latent_dim, likelihood)

    def configure_model(self) -> None:
        """Build the VAE once the DataModule knows how many genes it serves (runs before DDP wraps it)."""
        if self.vae is not None:
            return
        n_genes = getattr(self.trainer.datamodule, "n_genes", None)
        if n_genes is None:
            raise InputError("model.n_genes is not set and the DataModule has no `n_genes` to take it from")
        self.hparams.n_genes = int(n_genes)
        self.vae = RnaVAE(int(n_genes), self.hparams.hidden, self.hparams.latent_dim, self.hparams.likelihood)

    def on_fit_start(self) -> None:
        """Save the DataModule's fitted preprocessing in the run folder: `wbcvae embed` must transform new
        cells exactly as the training cells were."""
        super().on_fit_start()
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank
        preprocessor = getattr(self.trainer.datamodule, "preprocessor", None)
        if preprocessor is not None:
            self.vae.set_log_range(torch.from_numpy(preprocessor.gene_min), torch.from_numpy(preprocessor.gene_span))
        if preprocessor is not None and self.trainer.is_global_zero:
            self.preprocessor_path = preprocessor.save(run_dir / "preprocessor.json").resolve()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.preprocessor_path is not None:
            checkpoint["wbcvae"]["preprocessor"] = {
                "path": str(self.preprocessor_path),
                "json": self.preprocessor_path.read_text(),  # the checkpoint still works when moved
            }

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float], Outputs]:
        outputs = self.vae(batch[self.input_key])
        z_atlas = batch["z_atlas"]
        if z_atlas.shape[-1] != outputs["z"].shape[-1]:
            raise InputError(
                f"z_atlas has {z_atlas.shape[-1]} dimensions but the RNA VAE's latent has {outputs['z'].shape[-1]}"
                " (set model.latent_dim or give an atlas embedding of that size)"
            )
        reconstruction = f"expression_{self.vae.likelihood}"
        terms = {
            reconstruction: self.reconstruction_loss(batch, outputs),
            "atlas_cosine": (1 - F.cosine_similarity(outputs["z"], z_atlas, dim=-1)).mean(),
            "kl": kl_divergence(outputs["mu"], outputs["logvar"]),
        }
        weights = {reconstruction: self.hparams.lam, "atlas_cosine": self.hparams.phi, "kl": self.beta()}
        return terms, weights, outputs

    def reconstruction_loss(self, batch: Batch, outputs: Outputs) -> torch.Tensor:
        """MSE of the scaled expression, or the NB negative log-likelihood of the counts (mean per element)."""
        if self.vae.likelihood == "mse":
            return F.mse_loss(outputs["x_hat"], batch["x"])
        mean = batch["library"] * outputs["rho"]
        return -negative_binomial_log_prob(batch["counts"], mean, outputs["theta"]).mean()
