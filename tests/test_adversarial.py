"""The adversarial term of the image β-VAE: a patch discriminator beside the decoder, at tiny shapes."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from test_image_decoder import TINY, crops
from wbcvae.errors import InputError
from wbcvae.models.adversarial import PatchDiscriminator, adaptive_weight, adversarial_losses, latent_mixes
from wbcvae.training.image_plan import ImageVAEPlan


def adversarial_plan(**settings) -> ImageVAEPlan:
    torch.manual_seed(0)
    return ImageVAEPlan(**TINY, image_channels=16, adversarial_weight=1.0, adversarial_cells=4, lr=3e-3, **settings)


def test_the_discriminator_gives_one_logit_per_patch_and_mixes_lie_between_two_cells():
    assert PatchDiscriminator()(torch.rand(2, 3, 32, 32)).shape == (2, 1, 4, 4)
    mu = torch.tensor([[0.0, 0.0], [1.0, 2.0], [3.0, 1.0]])
    mixes = latent_mixes(mu)
    # each mix is on a segment between two rows of mu: its coordinates lie within the rows' range
    assert ((mixes >= mu.min(0).values) & (mixes <= mu.max(0).values)).all()


def test_each_player_only_moves_its_own_weights():
    plan = adversarial_plan()
    batch = crops()
    outputs = plan.vae(batch["features"])
    decoder_loss, discriminator_loss = adversarial_losses(plan.discriminator, plan.vae, outputs, batch["target"], batch["mask"])
    discriminator = list(plan.discriminator.parameters())
    vae = [p for p in plan.vae.parameters() if p.requires_grad]
    on_vae = torch.autograd.grad(discriminator_loss, vae, allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in on_vae)  # the decoded images reach it detached
    on_discriminator = torch.autograd.grad(decoder_loss, discriminator, allow_unused=True)
    assert all(g is None for g in on_discriminator)  # its weights are read detached
    assert any(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(decoder_loss, vae, allow_unused=True, retain_graph=True))


def test_the_adaptive_weight_pulls_the_last_layer_as_hard_as_the_pixel_term():
    plan = adversarial_plan()
    batch = crops()
    terms = plan.total_loss(batch)[1]
    last = plan.vae.to_pixels[0].weight
    pixel = 100 * terms["image_mse"]  # γ of the plan
    weight = adaptive_weight(pixel, terms["image_adversarial"], last)
    pixel_grad = torch.autograd.grad(pixel, last, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(weight * terms["image_adversarial"], last)[0]
    # equal norms, up to the guard against a vanishing adversarial gradient (its norm + 1e-4 in the ratio)
    assert torch.allclose(adversarial_grad.norm(), pixel_grad.norm(), rtol=0.1)


def test_the_discriminator_learns_while_the_decoder_still_learns_the_cells():
    plan = adversarial_plan()
    batch = crops()
    plan.vae.mask_head.set_prior(batch["mask"].mean(0))
    first = plan.total_loss(batch)[1]
    optimiser = torch.optim.Adam(plan.parameters(), lr=3e-3)
    for _ in range(40):
        optimiser.zero_grad()
        loss, terms, _ = plan.total_loss(batch)
        loss.backward()
        optimiser.step()
    assert all(torch.isfinite(value) for value in terms.values())
    assert terms["discriminator_bce"] < 0.8 * first["discriminator_bce"]  # it tells real cells from decoded ones
    assert terms["image_mse"] < 0.8 * first["image_mse"]  # and the pixel term still falls
    plan.eval()
    with torch.no_grad():
        terms, weights, _ = plan.losses(batch)
    assert weights["discriminator_bce"] == 0  # the discriminator's own loss is not part of a validation score
    assert weights["image_adversarial"] == pytest.approx(float(plan.adversarial_balance))


def test_the_decoders_term_waits_for_its_start_step_and_the_settings_are_checked():
    plan = adversarial_plan(adversarial_start=10)
    assert plan.losses(crops())[1]["image_adversarial"] == 0  # step 0 < 10: the discriminator learns alone
    no_term = ImageVAEPlan(**TINY)
    terms, weights, _ = no_term.losses(crops())
    assert no_term.discriminator is None and terms["image_adversarial"] == 0 and weights["discriminator_bce"] == 0
    with pytest.raises(InputError, match="adversarial_cells must be at least 2"):
        ImageVAEPlan(**TINY, adversarial_weight=1.0, adversarial_cells=1)


def test_before_its_start_the_term_leaves_the_vaes_draws_and_gradients_alone():
    """The discriminator and the mixes draw from generators of their own: until `adversarial_start` a run with the
    term is the run without it (the same feature statistics, the same z)."""
    batch = crops()
    torch.manual_seed(0)
    plain, drawn_next = ImageVAEPlan(**TINY, image_channels=16), torch.rand(3)
    adversarial = adversarial_plan(adversarial_start=10)  # seeded 0 too
    assert torch.equal(drawn_next, torch.rand(3))  # building the discriminator left the global stream alone
    assert all(torch.equal(a, b) for a, b in zip(plain.vae.state_dict().values(), adversarial.vae.state_dict().values()))
    seen = []
    for plan in (plain, adversarial):
        torch.manual_seed(5)
        loss, _, outputs = plan.total_loss(batch)
        loss.backward()
        seen.append((outputs["z"], torch.rand(3), [p.grad for p in plan.vae.parameters()]))
    (z, after, grads), (z_adversarial, after_adversarial, grads_adversarial) = seen
    assert torch.equal(z, z_adversarial) and torch.equal(after, after_adversarial)  # the global RNG moved alike
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_adversarial))


def test_a_blurred_cell_is_what_the_discriminator_learns_to_call_decoded():
    """The premise: real crops and their blur are told apart by patches alone (the decoder's blur is what it punishes)."""
    torch.manual_seed(0)
    batch = crops(8)
    real = torch.where(batch["mask"] > 0, batch["target"], torch.full_like(batch["target"], 0.5))
    blurred = torch.where(batch["mask"] > 0, F.avg_pool2d(batch["target"], 5, stride=1, padding=2), torch.full_like(real, 0.5))
    discriminator = PatchDiscriminator(16)
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    for _ in range(60):
        optimiser.zero_grad()
        real_logits, fake_logits = discriminator(real), discriminator(blurred)
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        loss.backward()
        optimiser.step()
    assert discriminator(real).mean() > discriminator(blurred).mean() + 1
