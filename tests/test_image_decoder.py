"""The image head and its loss terms: upsample + conv decoder, predicted cell mask, masked SSIM and gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
import yaml
from torch.nn import functional as F

from wbcvae.errors import InputError
from wbcvae.models.image_vae import ImageVAE, Upsample2x, cell_on_grey
from wbcvae.models.losses import LOGVAR_RANGE, colour_distance, colour_histogram, colour_profile, masked_gradient_l1, masked_ssim
from wbcvae.models.perceptual import PerceptualNetwork, perceptual_distance
from wbcvae.segmentation.maskrcnn import PIXEL_MEAN, PIXEL_STD
from wbcvae.segmentation.pretrain import fit_to_detector_pixels
from wbcvae.training.image_plan import ImageVAEPlan

TINY = dict(in_channels=8, feature_size=4, image_size=32, latent_dim=4, hidden_channels=8)


def crops(n: int = 6, size: int = 32, seed: int = 0, cell_radius: float = 1 / 3) -> dict[str, torch.Tensor]:
    """A handful of feature-store-like cells: a dark disc (nucleus) in a paler disc (the cell mask, of
    radius `cell_radius`·size), with features that see the cell (its pooled mask) under noise."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    targets, masks = [], []
    for _ in range(n):
        cy, cx = (torch.rand(2, generator=generator) * size / 4 + 3 * size / 8).tolist()
        r = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()
        cell, nucleus = (r < cell_radius * size).float(), (r < cell_radius * size / 2).float()
        colour = torch.tensor([0.9, 0.7, 0.8]).view(3, 1, 1) - 0.5 * nucleus
        targets.append(colour * cell + 0.95 * (1 - cell))
        masks.append(cell[None])
    masks = torch.stack(masks)
    seen = F.adaptive_avg_pool2d(masks, TINY["feature_size"]).expand(-1, TINY["in_channels"], -1, -1)
    features = seen + 0.3 * torch.randn(seen.shape, generator=generator)
    return {"features": features, "target": torch.stack(targets), "mask": masks, "label": torch.arange(n)}


def fit(plan: ImageVAEPlan, batch: dict, steps: int) -> None:
    """`steps` of Adam at the plan's learning rate on one batch."""
    optimiser = torch.optim.Adam(plan.parameters(), lr=plan.hparams.lr)
    for _ in range(steps):
        loss, _, _ = plan.total_loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

def test_residual_decoder_and_mask_head_shapes():
    vae = ImageVAE(**TINY, image_decoder="residual", image_channels=16)
    h_hat, image_hat, mask_logits = vae.decode(torch.randn(3, 4))
    assert h_hat.shape == (3, 8, 4, 4)
    assert image_hat.shape == (3, 3, 32, 32) and mask_logits.shape == (3, 1, 32, 32)
    assert 0 <= image_hat.min() and image_hat.max() <= 1
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) and m.stride != (1, 1) for m in vae.image_head.modules())


def test_the_posterior_variance_stays_finite_when_the_encoder_drifts():
    vae = ImageVAE(**TINY, image_decoder="residual", image_channels=16)
    with torch.no_grad():
        vae.to_logvar.bias.fill_(500.0)  # exp(500) overflows float32: the drift that stopped pbc-scale training
    mu, logvar = vae.encode(torch.randn(2, 8, 4, 4))
    assert logvar.max() == LOGVAR_RANGE[1] and torch.isfinite(logvar.exp()).all()


def test_unknown_image_decoder_is_named():
    with pytest.raises(InputError, match="image_decoder"):
        ImageVAE(**TINY, image_decoder="unet")


def test_upsample_is_nearest_neighbour():
    x = torch.randn(2, 3, 5, 4)
    assert torch.equal(Upsample2x()(x), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_render_shows_the_decoded_cell_only_inside_its_predicted_mask():
    image = torch.rand(2, 3, 8, 8)
    cell = torch.zeros(2, 1, 8, 8)
    cell[..., 2:5, 2:5] = 1
    shown = cell_on_grey(image, cell)
    assert torch.equal(shown[..., 2:5, 2:5], image[..., 2:5, 2:5])
    assert torch.all(shown[..., 0, :] == 0.5)
    vae = ImageVAE(**TINY, image_channels=16)
    z = torch.randn(2, 4)
    _, image_hat, mask_logits = vae.decode(z)
    assert torch.equal(vae.render(z), cell_on_grey(image_hat, mask_logits.sigmoid()))


def test_render_falls_back_to_the_likeliest_region_when_the_predicted_mask_is_empty():
    image = torch.rand(2, 3, 8, 8)
    unsure = torch.full((2, 1, 8, 8), 0.1)
    unsure[..., 2:5, 2:5] = 0.3  # nowhere above ½: the region above half the maximum is shown
    shown = cell_on_grey(image, unsure)
    assert torch.equal(shown[..., 2:5, 2:5], image[..., 2:5, 2:5])
    assert torch.all(shown[..., 0, :] == 0.5)
    assert torch.all(cell_on_grey(image, torch.zeros(2, 1, 8, 8)) == 0.5)  # an empty 0/1 mask shows nothing


def test_masked_ssim_is_one_for_identical_cells_and_ignores_pixels_outside_the_mask():
    batch = crops(4)
    target, mask = batch["target"], batch["mask"]
    assert torch.allclose(masked_ssim(target, target, mask), torch.ones(4), atol=1e-5)
    elsewhere = torch.where(mask > 0, target, torch.rand_like(target))  # same cell, other background
    assert torch.allclose(masked_ssim(elsewhere, target, mask), torch.ones(4), atol=1e-5)
    blurred = F.avg_pool2d(target, 5, stride=1, padding=2)
    assert (masked_ssim(blurred, target, mask) < 0.95).all()
    assert masked_gradient_l1(elsewhere, target, mask) == 0
    assert masked_gradient_l1(blurred, target, mask) > 0


def test_every_loss_term_is_finite_and_weighted_from_the_config():
    plan = ImageVAEPlan(
        **TINY, image_channels=16, colour_bins=8, ssim_weight=2.0, gradient_weight=3.0, mask_weight=0.5, colour_weight=4.0,
        colour_profile_weight=5.0, class_weight=6.0,
    )  # fmt: skip
    loss, terms, outputs = plan.total_loss(crops())
    assert set(terms) == {
        "features_mse", "image_mse", "kl", "image_ssim_loss", "image_gradient_l1", "mask_bce", "mask_dice_loss", "image_colour_emd",
        "colour_profile_mse", "class_ce", "image_perceptual", "image_adversarial", "discriminator_bce",
    }  # fmt: skip
    assert all(torch.isfinite(value) for value in terms.values())
    expected = (
        terms["features_mse"] + 100 * terms["image_mse"] + plan.beta() * terms["kl"]
        + 2 * terms["image_ssim_loss"] + 3 * terms["image_gradient_l1"]
        + 0.5 * (terms["mask_bce"] + terms["mask_dice_loss"]) + 4 * terms["image_colour_emd"] + 5 * terms["colour_profile_mse"]
        + 6 * terms["class_ce"]
    )
    assert torch.allclose(loss, expected)
    assert outputs["mask_logits"].shape == (6, 1, 32, 32)
    assert terms["image_perceptual"] == 0  # no perceptual network: the term is 0
    assert terms["image_adversarial"] == terms["discriminator_bce"] == 0  # no discriminator: both are 0


def test_loss_falls_on_a_handful_of_crops():
    torch.manual_seed(0)
    plan = ImageVAEPlan(**TINY, image_channels=16, ssim_weight=1.0, gradient_weight=1.0, lr=3e-3)
    batch = crops()
    plan.vae.mask_head.set_prior(batch["mask"].mean(0))  # what training does with the statistics
    optimiser = torch.optim.Adam(plan.parameters(), lr=plan.hparams.lr)
    history = []
    for _ in range(30):
        loss, terms, _ = plan.total_loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append({name: float(value.detach()) for name, value in terms.items()} | {"loss": float(loss.detach())})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.7 * first["loss"]
    assert last["image_mse"] < 0.5 * first["image_mse"]
    assert last["image_ssim_loss"] < 0.8 * first["image_ssim_loss"]
    assert last["mask_bce"] < 1.1 * first["mask_bce"]  # it starts at the prior; learning it: the test below


def mask_iou(mask_logits: torch.Tensor, mask: torch.Tensor) -> float:
    predicted, cell = mask_logits > 0, mask > 0.5
    return float(((predicted & cell).flatten(1).sum(1) / (predicted | cell).flatten(1).sum(1).clamp_min(1)).mean())


@pytest.mark.parametrize("image_decoder", ["study", "residual"])
def test_the_predicted_mask_covers_the_cell_within_a_few_dozen_steps(image_decoder):
    """Cells of a tenth of the crop, as in the real stores: from the per-pixel prior (not p = ½, where
    the mask stayed empty for a hundred steps: grey figures) and with Dice beside BCE, the predicted
    mask after 30 steps is the cell."""
    torch.manual_seed(0)
    batch = crops(8, seed=1, cell_radius=1 / 6)  # ~9 % of the pixels
    plan = ImageVAEPlan(**TINY, image_decoder=image_decoder, image_channels=16)
    plan.vae.mask_head.set_prior(batch["mask"].mean(0))
    fit(plan, batch, steps=30)
    with torch.no_grad():
        assert mask_iou(plan.vae(batch["features"], sample=False)["mask_logits"], batch["mask"]) > 0.5


def test_the_study_config_restores_the_study_decoder_and_loss():
    with open("experiments/image_vae/laptop.yaml") as f:
        model = yaml.safe_load(f)["model"]
    with open("experiments/image_vae/study.yaml") as f:
        model |= yaml.safe_load(f)["model"]
    plan = ImageVAEPlan(**{**model, **TINY})
    assert plan.hparams.image_decoder == "study"
    assert plan.hparams.ssim_weight == plan.hparams.gradient_weight == 0


def test_colour_histogram_bins_a_cells_colours_and_ignores_the_background():
    image = torch.zeros(1, 3, 8, 8)
    image[:, 0] = 0.9  # red channel: 0.9 in the cell …
    image[..., :2, :] = 0.1  # … and 0.1 outside it (the mask below leaves out the top two rows)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:, :] = 1
    histogram = colour_histogram(image, mask, bins=5)
    assert histogram.shape == (1, 3, 5)
    torch.testing.assert_close(histogram.sum(-1), torch.ones(1, 3))
    assert histogram[0, 0].argmax() == 4 and histogram[0, 0, 0] == 0  # 0.9 → the top bin; the 0.1 outside is not counted
    profile = colour_profile(image, mask, bins=5)
    assert profile.shape == (1, 16) and profile[0, -1] == pytest.approx(0.75)  # the cell's share of the crop


def test_colour_distance_is_zero_for_the_same_colours_and_takes_a_colour_cast_away():
    batch = crops(4)
    image, mask = batch["target"], batch["mask"]
    assert colour_distance(image, image, mask, bins=16) == 0
    cast = (0.5 * image + 0.3).requires_grad_()  # paler, less contrast: what MSE's blur looks like
    optimiser = torch.optim.Adam([cast], lr=0.01)
    first = colour_distance(cast, image, mask, bins=16).item()
    for _ in range(40):
        loss = colour_distance(cast, image, mask, bins=16)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert torch.isfinite(cast.grad).all() and loss.item() < 0.3 * first


def test_an_encoder_that_reads_colours_needs_them_and_its_plan_learns_with_them():
    torch.manual_seed(0)
    batch = crops(6)
    plan = ImageVAEPlan(**TINY, image_channels=16, colour_bins=8, colour_weight=1.0)
    assert plan.vae.to_mu.in_features == 4 * 2 * 2 + 3 * 8 + 1  # h's code (bottleneck 4 × 2 × 2) and the colour profile
    with pytest.raises(InputError, match="colour profile"):
        plan.vae.encode(batch["features"])
    assert plan.encode(batch).shape == (6, 4)
    optimiser = torch.optim.Adam(plan.parameters(), lr=plan.hparams.lr)
    history = []
    for _ in range(60):
        loss, terms, _ = plan.total_loss(batch)
        history.append({"loss": loss.item(), **{k: v.item() for k, v in terms.items()}})
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"] and history[-1]["image_colour_emd"] < history[0]["image_colour_emd"]


def test_the_latent_gives_the_colour_profile_back_when_asked():
    """`colour_profile_weight`: z = μ decodes to the standardised colour profile better as it learns,
    and the term is 0 (logged, not failing) for a model that reads no colours."""
    torch.manual_seed(0)
    batch = crops(6)
    plan = ImageVAEPlan(**TINY, image_channels=16, colour_bins=8, colour_profile_weight=10.0, lr=3e-3)
    profiles = colour_profile(batch["target"], batch["mask"], 8)
    plan.vae.set_colour_statistics(profiles.mean(0), profiles.std(0))  # what training fits first

    def profile_error() -> float:
        plan.eval()
        with torch.no_grad():
            error = plan.total_loss(batch)[1]["colour_profile_mse"].item()
        plan.train()
        return error

    first = profile_error()
    fit(plan, batch, steps=40)
    assert math.isfinite(first) and profile_error() < 0.7 * first
    _, terms, _ = ImageVAEPlan(**TINY, image_channels=16).total_loss(batch)
    assert terms["colour_profile_mse"].item() == 0.0


def test_the_class_term_makes_the_latent_name_the_cell_type():
    """`class_weight`: a linear read-out of μ learns the labels of cells that differ only by label (so
    the unsupervised terms cannot separate them); cells labelled −1 are skipped; without the
    classifier (the study's β-VAE) the term is 0 and there are no logits."""
    torch.manual_seed(0)
    batch = crops(8)
    batch["label"] = torch.tensor([0, 1, 0, 1, 0, 1, -1, -1])
    batch["features"][batch["label"] == 1] += 1.0  # a feature the classes differ by
    plan = ImageVAEPlan(**TINY, image_channels=16, class_weight=5.0, lr=3e-3)
    first = plan.total_loss(batch)[1]["class_ce"].item()
    fit(plan, batch, steps=40)
    loss, terms, outputs = plan.total_loss(batch)
    assert outputs["class_logits"].shape == (8, 13) and math.isfinite(first)
    assert terms["class_ce"].item() < 0.3 * first
    assert (outputs["class_logits"][:6].argmax(1) == batch["label"][:6]).all()
    unlabelled = {**batch, "label": torch.full((8,), -1)}
    assert plan.total_loss(unlabelled)[1]["class_ce"].item() == 0.0
    _, terms, outputs = ImageVAEPlan(**TINY, image_channels=16).total_loss(batch)
    assert terms["class_ce"].item() == 0.0 and "class_logits" not in outputs


def test_a_checkpoint_from_before_the_colour_profile_loads():
    vae = ImageVAE(**TINY)
    old = {k: v for k, v in vae.state_dict().items() if not k.startswith("colour_")}  # no colour statistics
    fresh = ImageVAE(**TINY)
    fresh.load_state_dict(old)
    batch = crops(2)
    torch.testing.assert_close(fresh.encode(batch["features"])[0], vae.encode(batch["features"])[0])
    # one that reads colours, from before the colour decoder: it loads and keeps the fresh decoder
    reader = ImageVAE(**TINY, colour_bins=8)
    old = {k: v for k, v in reader.state_dict().items() if not k.startswith("colour_decoder.")}
    again = ImageVAE(**TINY, colour_bins=8)
    again.load_state_dict(old)
    colour = colour_profile(batch["target"], batch["mask"], 8)
    torch.testing.assert_close(again.encode(batch["features"], colour)[0], reader.encode(batch["features"], colour)[0])


def pretrained_resnet(path) -> torchvision.models.ResNet:
    """Write a ResNet-18 state dict to `path` as `wbcvae segment pretrain` does (random weights, fitted to the
    detector's pixels); return the ResNet that computes what the file holds, on normalised pixels."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=13)
    torch.save(fit_to_detector_pixels(resnet.state_dict()), path)
    fitted = torchvision.models.resnet18(num_classes=13)
    fitted.load_state_dict(torch.load(path, weights_only=True))
    return fitted.eval()


def test_the_perceptual_network_is_the_pretrained_resnets_first_stages_frozen(tmp_path):
    fitted = pretrained_resnet(tmp_path / "resnet18.pth")
    network = PerceptualNetwork()
    network.load_file(tmp_path / "resnet18.pth")
    image = torch.rand(2, 3, 32, 32)
    x = (image - torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)) / torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    quarter = fitted.layer1(fitted.maxpool(fitted.relu(fitted.bn1(fitted.conv1(x)))))
    first, second = network(image)
    torch.testing.assert_close(first, quarter)
    torch.testing.assert_close(second, fitted.layer2(quarter))
    network.train()  # as Lightning does at the start of a fit: batch norm must keep its statistics
    assert not network.training and not any(module.training for module in network.modules())
    assert not any(parameter.requires_grad for parameter in network.parameters())
    with pytest.raises(InputError, match="fits this network"):
        PerceptualNetwork("resnet50").load_file(tmp_path / "resnet18.pth")
    with pytest.raises(InputError, match="does not exist"):
        network.load_file(tmp_path / "missing.pth")


def test_perceptual_distance_is_zero_for_the_same_cell_and_ignores_the_background(tmp_path):
    pretrained_resnet(tmp_path / "resnet18.pth")
    network = PerceptualNetwork()
    network.load_file(tmp_path / "resnet18.pth")
    batch = crops(4)
    target, mask = batch["target"], batch["mask"]
    elsewhere = torch.where(mask > 0, target, torch.rand_like(target))  # other pixels outside the cell only
    blurred = F.avg_pool2d(target, 5, stride=1, padding=2)
    assert perceptual_distance(network, target, target, mask) == 0
    assert perceptual_distance(network, elsewhere, target, mask) == 0
    assert perceptual_distance(network, blurred, target, mask) > 0


def test_the_perceptual_term_falls_on_a_handful_of_crops_and_needs_its_network(tmp_path):
    pretrained_resnet(tmp_path / "resnet18.pth")
    torch.manual_seed(0)
    plan = ImageVAEPlan(
        **TINY, image_channels=16, perceptual_weight=1.0, perceptual_network=str(tmp_path / "resnet18.pth"), perceptual_cells=4, lr=3e-3
    )  # fmt: skip
    plan.perceptual.load_file(tmp_path / "resnet18.pth")  # what a fresh run's on_fit_start does
    batch = crops()
    first = plan.total_loss(batch)[1]["image_perceptual"].item()
    fit(plan, batch, steps=30)
    assert 0 < plan.total_loss(batch)[1]["image_perceptual"].item() < 0.8 * first
    with pytest.raises(InputError, match="perceptual_network"):
        ImageVAEPlan(**TINY, perceptual_weight=1.0)
    with pytest.raises(InputError, match="perceptual_cells must be at least 1"):
        ImageVAEPlan(**TINY, perceptual_cells=0)
