"""Training plan of the image β-VAE on feature-store batches: the study's α·MSE(ĥ, h) + γ·MSE(m·Î, m·I) + β·KL,
plus terms that keep the masked image's structure (SSIM, image gradients) and the predicted cell mask's BCE + Dice."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.nn import functional as F

from wbcvae.errors import InputError
from wbcvae.models.adversarial import PatchDiscriminator, adaptive_weight, adversarial_losses
from wbcvae.models.image_vae import ImageVAE
from wbcvae.models.losses import COLOUR_BINS, colour_distance, colour_profile, kl_divergence, masked_gradient_l1, masked_ssim, soft_dice_loss
from wbcvae.models.perceptual import PerceptualNetwork, perceptual_distance
from wbcvae.training.plan import Batch, Outputs, VAEPlan, check_lr_schedule, run_seed
from wbcvae.vocabulary import CLASSES


class ImageVAEPlan(VAEPlan):
    """Trains `self.vae` (an `ImageVAE`) on batches with `features`, `target`, `mask`, `label`.

    The image term compares only pixels inside the cell mask m, so red cells and background in the
    crop cost nothing. The feature term is measured on standardised features (1.0 = no better than
    the channel means), with statistics fitted on up to `statistics_batches` training batches when
    training starts (kept in the checkpoint, so not refitted on resume). Reconstruction terms are
    means over elements and KL is summed over latent dimensions, so useful β are small and γ large
    (see the configs in experiments/image_vae).

    Beyond the study's three terms: `ssim_weight`·(1 − masked SSIM) and `gradient_weight`·masked
    L1 of image gradients penalise the blur MSE tolerates; `mask_weight`·(BCE + soft Dice) trains the
    predicted cell mask that figures draw the decoded cell in (its logits start at the per-pixel prior
    of the training masks, fitted with the feature statistics; Dice keeps a cell of ~10 % of the crop
    from losing to the background); `colour_weight`·the earth mover's distance between the colour
    histograms of m·Î and m·I keeps the cell's colours (blue cytoplasm, pink granules) that pixel MSE
    averages away. With `colour_bins` the encoder reads the crop's colour profile beside h
    (`encoder_inputs`) and `colour_profile_weight`·MSE asks z to give that profile back (standardised;
    0 for a model that reads no colours), so the latent keeps what tells the classes' colours apart.
    With `class_weight` > 0 a linear classifier reads μ and `class_weight`·its cross-entropy on the
    batch's labels (cells labelled −1 are skipped) makes the latent name the cell type, as scANVI's
    classifier does; the labels are the ones alignment already uses. The term is 0 without the classifier.
    With `perceptual_network` (the `.pth` of `wbcvae segment pretrain`) `perceptual_weight`·the distance
    between m·Î and m·I in that frozen ResNet's first stages asks for the nucleus' outline and lobes; the
    file is read when a fresh run starts, then its tensors travel in the checkpoint. The term is 0 without it,
    and is measured on the batch's first `perceptual_cells` cells (a random sample of a shuffled batch): on a
    CPU the ResNet costs about as much per cell as the rest of a training step.
    With `adversarial_weight` > 0 a patch discriminator learns beside the β-VAE to tell the crops from the decoded
    cells (reconstructions and mixes of two cells' latents, `wbcvae.models.adversarial`), on the batch's first
    `adversarial_cells` cells; the decoder's term is weighted `adversarial_weight` × the ratio of the pixel term's
    gradient to its own at the last layer (VQGAN's balance), the discriminator's own loss (`discriminator_bce`)
    counts only while training and reaches only the discriminator. The decoder's term starts at optimiser step
    `adversarial_start` (the discriminator learns from the first), once the decoder draws a cell at all.
    Every term is computed and logged whatever its weight (a weight of 0 turns a term into a metric),
    so runs with different objectives compare on one scale.
    """

    kind = "image"
    input_key = "features"

    def __init__(
        self,
        in_channels: int = 256,
        feature_size: int = 14,
        image_size: int = 128,
        latent_dim: int = 50,
        hidden_channels: int = 128,
        image_decoder: str = "study",
        image_channels: int = 64,
        colour_bins: int = 0,
        alpha: float = 1.0,
        gamma: float = 100.0,
        beta: float = 1e-3,
        ssim_weight: float = 0.0,
        gradient_weight: float = 0.0,
        mask_weight: float = 1.0,
        colour_weight: float = 0.0,
        colour_profile_weight: float = 0.0,
        class_weight: float = 0.0,
        perceptual_weight: float = 0.0,
        perceptual_network: str | None = None,
        perceptual_backbone: str = "resnet18",
        perceptual_cells: int = 8,
        adversarial_weight: float = 0.0,
        adversarial_cells: int = 16,
        adversarial_start: int = 0,
        kl_warmup_steps: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "constant",
        statistics_batches: int = 64,
    ) -> None:
        super().__init__()
        check_lr_schedule(lr_schedule)
        self.save_hyperparameters()
        self.vae = ImageVAE(
            in_channels, feature_size, image_size, latent_dim, hidden_channels, image_decoder, image_channels, colour_bins,
            n_classes=len(CLASSES) if class_weight > 0 else 0,
        )  # fmt: skip
        if perceptual_weight > 0 and not perceptual_network:
            raise InputError("perceptual_weight needs perceptual_network: the .pth that `wbcvae segment pretrain` writes")
        if perceptual_cells < 1:
            raise InputError(f"perceptual_cells must be at least 1 (cells of each batch the perceptual term is measured on), got {perceptual_cells}")
        self.perceptual = PerceptualNetwork(perceptual_backbone) if perceptual_network else None
        if adversarial_cells < 2:
            raise InputError(f"adversarial_cells must be at least 2 (a mix needs two cells), got {adversarial_cells}")
        self.discriminator = None
        if adversarial_weight > 0:
            # Its own seed, leaving the global stream alone: the feature statistics' shuffled batches, drawn next,
            # stay those of a run without the term.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self.discriminator = PatchDiscriminator()
        # The decoder's adversarial weight of the last training step; validation has no gradients to measure it.
        self.register_buffer("adversarial_balance", torch.ones(()), persistent=False)
        self.register_buffer("statistics_cells", torch.zeros((), dtype=torch.long))  # 0: not fitted yet

    def on_fit_start(self) -> None:
        if self.statistics_cells == 0:  # a fresh run (a resumed or loaded one has both in its checkpoint)
            self.fit_feature_statistics()
            if self.perceptual is not None:
                self.perceptual.load_file(self.hparams.perceptual_network)
        super().on_fit_start()  # reseeds after the pass above, so that pass leaves no trace on the run

    @torch.no_grad()
    def fit_feature_statistics(self) -> None:
        """Per-channel mean and std of the training features, each pixel's share of cells (the mask
        head's prior) and, when the model reads them, the mean and std of the colour profiles; from up to
        `statistics_batches` batches (summed over DDP ranks, so every rank starts alike)."""
        if self.trainer.datamodule is None:
            rank_zero_warn("no DataModule to fit feature statistics on: features are used unstandardised")
            return
        loader = self.trainer.datamodule.train_dataloader()
        channels = self.hparams.in_channels
        sums = torch.zeros(3, channels, dtype=torch.float64, device=self.device)  # count, Σh, Σh²
        size = self.hparams.image_size
        mask_sums = torch.zeros(1 + size * size, dtype=torch.float64, device=self.device)  # cells, Σm per pixel
        colour_sums = torch.zeros(3, self.vae.colour_dim, dtype=torch.float64, device=self.device)  # count, Σc, Σc²
        for _, batch in zip(range(self.hparams.statistics_batches), loader):
            if self.vae.colour_dim:
                colour = self.encoder_inputs(batch)["colour"].double()
                colour_sums += torch.stack([torch.full_like(colour[0], len(colour)), colour.sum(0), colour.pow(2).sum(0)])
            h = batch["features"].to(self.device, torch.float64).transpose(0, 1).flatten(1)  # C × (B·F·F)
            sums += torch.stack([torch.full_like(h[:, 0], h.shape[1]), h.sum(1), h.pow(2).sum(1)])
            mask = batch["mask"].to(self.device, torch.float64)
            mask_sums += torch.cat([mask.new_tensor([len(mask)]), mask.sum(0).flatten()])
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        mask_sums = self.trainer.strategy.reduce(mask_sums, reduce_op="sum")
        self.vae.mask_head.set_prior((mask_sums[1:] / mask_sums[0].clamp_min(1)).view(size, size).float())
        count, total, squares = sums
        mean = total / count
        std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
        self.vae.set_feature_statistics(mean.float(), std.float())
        if self.vae.colour_dim:
            cells, colour_total, colour_squares = self.trainer.strategy.reduce(colour_sums, reduce_op="sum")
            colour_mean = colour_total / cells
            self.vae.set_colour_statistics(colour_mean.float(), (colour_squares / cells - colour_mean.pow(2)).clamp_min(0).sqrt().float())
        self.statistics_cells.fill_(int(count[0]) // (self.hparams.feature_size**2))

    def encoder_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The crops' colour profiles, when the model reads them beside h."""
        if not self.vae.colour_dim:
            return {}
        return {"colour": colour_profile(batch["target"].to(self.device), batch["mask"].to(self.device), self.vae.colour_bins)}

    def losses(self, batch: Batch) -> tuple[dict[str, torch.Tensor], dict[str, float], Outputs]:
        inputs = self.encoder_inputs(batch)
        outputs = self.vae(batch[self.input_key], **inputs)
        image_hat, target, mask = outputs["image_hat"], batch["target"], batch["mask"]
        hp = self.hparams
        terms = {
            "features_mse": F.mse_loss(self.vae.standardise(outputs["h_hat"]), self.vae.standardise(batch["features"])),
            "image_mse": F.mse_loss(mask * image_hat, mask * target),
            "kl": kl_divergence(outputs["mu"], outputs["logvar"]),
            "image_ssim_loss": 1 - masked_ssim(image_hat, target, mask).mean(),
            "image_gradient_l1": masked_gradient_l1(image_hat, target, mask),
            "mask_bce": F.binary_cross_entropy_with_logits(outputs["mask_logits"], mask),
            "mask_dice_loss": soft_dice_loss(outputs["mask_logits"], mask),
            "image_colour_emd": colour_distance(image_hat, target, mask, hp.colour_bins or COLOUR_BINS),
            "colour_profile_mse": (
                F.mse_loss(outputs["colour_hat"], self.vae.standardise_colour(inputs["colour"])) if inputs else image_hat.new_zeros(())
            ),
            "class_ce": class_cross_entropy(outputs.get("class_logits"), batch["label"].to(image_hat.device)),
            "image_perceptual": (
                perceptual_distance(self.perceptual, *(x[: hp.perceptual_cells] for x in (image_hat, target, mask)))
                if self.perceptual is not None
                else image_hat.new_zeros(())
            ),
        }
        terms["image_adversarial"], terms["discriminator_bce"] = self.adversarial_terms(outputs, target, mask)
        weights = {
            "features_mse": hp.alpha,
            "image_mse": hp.gamma,
            "kl": self.beta(),
            "image_ssim_loss": hp.ssim_weight,
            "image_gradient_l1": hp.gradient_weight,
            "mask_bce": hp.mask_weight,
            "mask_dice_loss": hp.mask_weight,
            "image_colour_emd": hp.colour_weight,
            "colour_profile_mse": hp.colour_profile_weight,
            "class_ce": hp.class_weight,
            "image_perceptual": hp.perceptual_weight,
            "image_adversarial": hp.adversarial_weight * self.balance_adversarial(terms),
            "discriminator_bce": float(self.training and self.discriminator is not None),
        }
        return terms, weights, outputs

    def adversarial_terms(self, outputs: Outputs, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the decoder's adversarial loss, the discriminator's) on the batch's first `adversarial_cells`; 0 without one."""
        if self.discriminator is None:
            return target.new_zeros(()), target.new_zeros(())
        cells = self.hparams.adversarial_cells
        judged = {name: outputs[name][:cells] for name in ("mu", "image_hat", "mask_logits")}
        # The mixes draw from a generator of their own, seeded by the step: the β-VAE's own draws (z) stay those of a
        # run without the term, so until `adversarial_start` the two runs are the same run, and a resume redraws alike.
        mixes = torch.Generator().manual_seed(run_seed(self.global_step))
        return adversarial_losses(self.discriminator, self.vae, judged, target[:cells], mask[:cells], mixes)

    def balance_adversarial(self, terms: dict[str, torch.Tensor]) -> float:
        """The adversarial term's weight relative to `adversarial_weight`: measured while gradients flow, else the last
        one; 0 without a discriminator (no read of the buffer, a device sync on a GPU) and before `adversarial_start`."""
        if self.discriminator is None or (self.training and self.global_step < self.hparams.adversarial_start):
            return 0.0
        if torch.is_grad_enabled() and terms["image_adversarial"].requires_grad:
            pixel = self.hparams.gamma * terms["image_mse"]
            self.adversarial_balance.copy_(adaptive_weight(pixel, terms["image_adversarial"], self.vae.to_pixels[0].weight))
        return float(self.adversarial_balance)


def class_cross_entropy(logits: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled cells (label ≥ 0); 0 without a classifier or a labelled cell."""
    labelled = labels >= 0
    if logits is None or not labelled.any():
        return labels.new_zeros((), dtype=torch.float32)
    return F.cross_entropy(logits[labelled], labels[labelled])
