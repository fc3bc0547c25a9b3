"""The β-VAE maths: shapes, the KL term, reparameterisation, warm-up, the NaN guard, kNN accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence as torch_kl

from wbcvae.models import ImageVAE, NonFiniteLossError, RnaVAE, check_finite, kl_divergence, kl_weight, reparameterise
from wbcvae.models.losses import LOGVAR_RANGE
from wbcvae.training.metrics import knn_accuracy


@pytest.mark.parametrize("image_decoder", ["residual", "study"])
def test_image_vae_paper_shapes(image_decoder):
    vae = ImageVAE(image_decoder=image_decoder)  # the study's sizes: 256×14×14 in, 50-d latent, 3×128×128 out
    h = torch.randn(2, 256, 14, 14)
    mu, logvar = vae.encode(h)
    assert mu.shape == logvar.shape == (2, 50)
    h_hat, image_hat, mask_logits = vae.decode(mu)
    assert h_hat.shape == (2, 256, 14, 14)
    assert image_hat.shape == (2, 3, 128, 128)
    assert mask_logits.shape == (2, 1, 128, 128)
    assert 0 <= image_hat.min() and image_hat.max() <= 1
    assert set(vae(h)) == {"mu", "logvar", "z", "h_hat", "image_hat", "mask_logits"}  # and `colour_hat` when it reads colours


def test_image_vae_works_in_standardised_feature_units():
    torch.manual_seed(0)
    plain = ImageVAE(in_channels=8, feature_size=4, image_size=32, hidden_channels=8, latent_dim=4)
    scaled = ImageVAE(in_channels=8, feature_size=4, image_size=32, hidden_channels=8, latent_dim=4)
    scaled.load_state_dict(plain.state_dict())
    mean, std = torch.linspace(-6, 6, 8), torch.linspace(0.5, 4, 8)
    scaled.set_feature_statistics(mean, std)
    x = torch.randn(3, 8, 4, 4)
    h = x * std.view(-1, 1, 1) + mean.view(-1, 1, 1)  # the same cells in the features' own units
    assert torch.allclose(scaled.encode(h)[0], plain.encode(x)[0], atol=1e-5)
    z = torch.randn(3, 4)
    (h_plain, image_plain, _), (h_scaled, image_scaled, _) = plain.decode(z), scaled.decode(z)
    assert torch.allclose(h_scaled, h_plain * std.view(-1, 1, 1) + mean.view(-1, 1, 1), atol=1e-5)
    assert torch.allclose(image_scaled, image_plain)
    assert "feature_mean" in scaled.state_dict()  # travels with the weights


def test_image_vae_refuses_sizes_it_cannot_decode():
    with pytest.raises(ValueError, match="image_size"):
        ImageVAE(feature_size=14, image_size=64)  # 64/8 = 8 < 14: the image head cannot shrink


def test_rna_vae_shapes_and_symmetric_decoder():
    vae = RnaVAE(n_genes=120, hidden=(64, 32, 16), latent_dim=8)
    out = vae(torch.rand(5, 120))
    assert out["mu"].shape == out["z"].shape == (5, 8)
    assert out["x_hat"].shape == (5, 120)
    assert 0 <= out["x_hat"].min() and out["x_hat"].max() <= 1
    encoder_widths = [m.out_features for m in vae.encoder if isinstance(m, torch.nn.Linear)]
    decoder_widths = [m.out_features for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
    assert encoder_widths == [64, 32, 16]
    assert decoder_widths == [16, 32, 64, 120]


def test_z_is_sampled_only_while_training():
    vae = RnaVAE(n_genes=30, hidden=(16,), latent_dim=4)
    x = torch.rand(6, 30)
    vae.train()
    out = vae(x)
    assert not torch.equal(out["z"], out["mu"])
    vae.eval()
    out = vae(x)
    assert torch.equal(out["z"], out["mu"])
    assert not torch.equal(vae(x, sample=True)["z"], out["mu"])


def test_rna_posterior_variance_stays_finite_when_the_encoder_drifts():
    vae = RnaVAE(n_genes=30, hidden=(16,), latent_dim=4, likelihood="nb")
    with torch.no_grad():
        vae.to_logvar.bias.fill_(500.0)  # exp(500) overflows float32, as the image encoder's did at pbc scale
    _, logvar = vae.encode(torch.rand(3, 30))
    assert logvar.max() == LOGVAR_RANGE[1] and torch.isfinite(kl_divergence(torch.zeros_like(logvar), logvar))


def test_kl_matches_torch_distributions():
    mu, logvar = torch.randn(7, 5), torch.randn(7, 5)
    expected = torch_kl(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1).mean()
    assert torch.allclose(kl_divergence(mu, logvar), expected, atol=1e-5)
    assert kl_divergence(torch.zeros(3, 5), torch.zeros(3, 5)).item() == 0.0


def test_reparameterise_has_the_right_moments_and_gradient():
    torch.manual_seed(0)
    mu = torch.full((200_000, 1), 2.0, requires_grad=True)
    logvar = torch.full((200_000, 1), np.log(0.25), requires_grad=True)  # σ = 0.5
    z = reparameterise(mu, logvar)
    assert z.mean().item() == pytest.approx(2.0, abs=0.01)
    assert z.std().item() == pytest.approx(0.5, abs=0.01)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones_like(mu))  # dz/dμ = 1


def test_kl_warmup_ramps_linearly_then_holds():
    assert kl_weight(0.5, step=0, warmup_steps=0) == 0.5
    assert [kl_weight(0.5, s, warmup_steps=4) for s in (0, 1, 2, 4, 100)] == [0.0, 0.125, 0.25, 0.5, 0.5]


def test_finite_guard_names_step_and_every_bad_term():
    check_finite({"mse": torch.tensor(1.0), "kl": torch.tensor(0.0)}, step=3, stage="train")  # fine: no error
    with pytest.raises(NonFiniteLossError) as err:
        check_finite({"mse": torch.tensor(1.0), "kl": torch.tensor(float("inf")), "cos": torch.tensor(float("nan"))}, 17, "val")
    message = str(err.value)
    assert "val step 17" in message and "kl=inf" in message and "cos=nan" in message and "mse" not in message


def test_knn_accuracy_on_known_geometry():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([0, 1, 2], 30)
    points = centres[labels] + rng.normal(scale=0.5, size=(90, 2))
    assert knn_accuracy(points[::2], labels[::2], points[1::2], labels[1::2]) == 1.0
    shuffled = rng.permutation(labels)
    assert knn_accuracy(points[::2], shuffled[::2], points[1::2], shuffled[1::2]) < 0.6  # chance is 1/3
    assert np.isnan(knn_accuracy(points, -np.ones(90, int), points, -np.ones(90, int)))  # no labelled cells
