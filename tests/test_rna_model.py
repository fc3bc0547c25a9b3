"""The RNA β-VAE's count model: the negative-binomial likelihood, the "nb" decoder, and training it."""

from __future__ import annotations

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

from wbcvae.checkpoints import load_plan
from wbcvae.data.rna_datamodule import RnaDataModule
from wbcvae.errors import InputError
from wbcvae.models.rna_vae import RnaVAE, negative_binomial_log_prob
from wbcvae.training import RnaVAEPlan


def test_negative_binomial_log_prob_is_scipys_nbinom():
    counts = torch.tensor([0.0, 1.0, 7.0, 40.0])
    mean, theta = torch.tensor([0.5, 3.0, 7.0, 20.0]), torch.tensor([0.3, 2.0, 10.0, 1.0])
    expected = stats.nbinom.logpmf(counts.numpy(), theta.numpy(), (theta / (theta + mean)).numpy())
    np.testing.assert_allclose(negative_binomial_log_prob(counts, mean, theta).numpy(), expected, rtol=1e-5)


def test_negative_binomial_fit_on_toy_counts_recovers_the_mean():
    """Gamma-Poisson counts with mean 6 and θ = 2: maximising the likelihood from a wrong start stays
    finite, lowers the loss step after step and lands on the mean (and roughly on θ)."""
    rng = np.random.default_rng(0)
    counts = torch.from_numpy(rng.poisson(rng.gamma(2.0, 6.0 / 2.0, size=4000)).astype(np.float32))
    log_mean, log_theta = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.Adam([log_mean, log_theta], lr=0.05)
    losses = []
    for _ in range(300):
        optimiser.zero_grad()
        loss = -negative_binomial_log_prob(counts, log_mean.exp(), log_theta.exp()).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 0.5
    assert np.all(np.diff(losses[:50]) < 0)
    assert log_mean.exp().item() == pytest.approx(counts.mean().item(), rel=0.02)
    assert log_theta.exp().item() == pytest.approx(2.0, rel=0.15)


def test_nb_decoder_gives_count_shares_and_normalised_expression():
    vae = RnaVAE(n_genes=30, hidden=(16,), latent_dim=4, likelihood="nb").eval()
    vae.set_log_range(torch.full((30,), 0.5), torch.full((30,), 2.0))
    z = torch.randn(5, 4)
    rho = vae.decode(z)
    assert rho.shape == (5, 30) and (rho > 0).all() and (rho.sum(1) < 1).all()  # the rest went to genes not kept
    torch.testing.assert_close(vae.expression(z), torch.log1p(1e4 * rho))
    out = vae(torch.rand(5, 30))
    assert out["x_hat"].min() >= 0 and out["x_hat"].max() <= 1 and out["theta"].shape == (30,)
    mse = RnaVAE(n_genes=30, hidden=(16,), latent_dim=4).eval()
    mse.set_log_range(torch.full((30,), 0.5), torch.full((30,), 2.0))
    torch.testing.assert_close(mse.expression(z), 0.5 + 2.0 * mse.decode(z))  # scaled expression back on the log scale
    # an "mse" checkpoint from before the range was kept: loads, its curves stay on the scaled axis
    old = {k: v for k, v in mse.state_dict().items() if k not in ("log_min", "log_span")}
    reloaded = RnaVAE(n_genes=30, hidden=(16,), latent_dim=4).eval()
    reloaded.load_state_dict(old)
    torch.testing.assert_close(reloaded.expression(z), mse.decode(z))
    with pytest.raises(InputError, match="likelihood must be one of"):
        RnaVAEPlan(n_genes=30, likelihood="poisson")


def _cells(n_cells: int = 96, n_genes: int = 60) -> ad.AnnData:
    """Three cell types with distinct expression programmes and a spread of library sizes."""
    rng = np.random.default_rng(1)
    kinds = np.arange(n_cells) % 3
    share = rng.dirichlet(np.full(n_genes, 0.5), size=3)
    library = rng.integers(500, 3000, size=(n_cells, 1))
    counts = rng.poisson(share[kinds] * library).astype(np.int32)
    obs = pd.DataFrame(
        {"cell_type": np.array(["neutrophil", "classical monocyte", "b cell"])[kinds]}, index=[f"c{i}" for i in range(n_cells)]
    )
    return ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j:02d}" for j in range(n_genes)]))


def test_nb_plan_trains_saves_and_reloads(tmp_path):
    """A few epochs of the "nb" plan on toy counts: the NB loss falls, the checkpoint loads with
    weights_only=True (through `load_plan`) and brings back the likelihood and the gene ranges."""
    L.seed_everything(0)
    data = RnaDataModule(_cells(), batch_size=16, n_top_genes=40, atlas="pca")
    plan = RnaVAEPlan(hidden=[32], latent_dim=50, likelihood="nb", lr=3e-3)
    trainer = L.Trainer(
        max_epochs=6, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path), enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(plan, data)
    metrics = pd.read_csv(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")
    nb = metrics["train/expression_nb_step"].dropna().to_numpy()
    assert np.isfinite(nb).all() and nb[-3:].mean() < 0.9 * nb[:3].mean()
    torch.testing.assert_close(plan.vae.log_min, torch.from_numpy(data.preprocessor.gene_min).float())
    path = tmp_path / "nb.ckpt"
    trainer.save_checkpoint(path)
    torch.load(path, weights_only=True)
    loaded, _ = load_plan(path)
    assert loaded.vae.likelihood == "nb"
    torch.testing.assert_close(loaded.vae.log_span, plan.vae.log_span.cpu())
