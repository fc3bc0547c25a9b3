"""Training the two β-VAEs: the CLI, checkpoints and exact resume, DDP, dashboards, the NaN guard, embed."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torchvision
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

from wbcvae.cli import embed as embed_cli
from wbcvae.errors import InputError
from wbcvae.models import ImageVAE, NonFiniteLossError, RnaVAE
from wbcvae.training import ImageVAEPlan, RnaVAEPlan
from wbcvae.training.cli import run_cli
from wbcvae.training.embed import EMBEDDING_KEY
from wbcvae.training.toy_data import ToyFeatureDataModule, ToyRnaDataModule

REPO = Path(__file__).resolve().parents[1]

# Tiny shapes: 8 feature channels of 4×4 and 32×32 crops keep a step in milliseconds.
TOY = {
    "image": [
        "--data", "wbcvae.training.toy_data.ToyFeatureDataModule", "--data.n_cells", "40", "--data.batch_size", "4",
        "--data.in_channels", "8", "--data.feature_size", "4", "--data.image_size", "32",
        "--model.in_channels", "8", "--model.feature_size", "4", "--model.image_size", "32",
        "--model.hidden_channels", "8", "--model.latent_dim", "8",
    ],
    "rna": [
        "--data", "wbcvae.training.toy_data.ToyRnaDataModule", "--data.n_cells", "40", "--data.batch_size", "4",
        "--data.genes", "40", "--data.latent_dim", "8", "--model.hidden", "[32, 16]", "--model.latent_dim", "8",
    ],
}  # fmt: skip
QUIET = [
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.log_every_n_steps", "1", "--latent_map.method", "pca",
]  # fmt: skip


def run_dir(root: Path, kind: str) -> Path:
    return root / f"{kind}_vae" / "version_0"


def read_metrics(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv")


@pytest.mark.parametrize("kind, vae_class", [("image", ImageVAE), ("rna", RnaVAE)])
def test_fast_dev_run(kind, vae_class, tmp_path):
    cli = run_cli(kind, [*TOY[kind], *QUIET, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.state.finished
    assert isinstance(cli.model.vae, vae_class)
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    (prediction,) = cli.trainer.predict(cli.model, datamodule=cli.datamodule)  # fast_dev_run: one batch
    assert prediction["mu"].shape == (4, 8) and prediction["index"].shape == (4,)


def test_the_pbc_config_stack_trains_with_what_it_sets(tmp_path):
    """`make pbc-pretrained`'s three image configs, on toy data: they parse together and their settings arrive."""
    configs = [f"experiments/image_vae/{name}.yaml" for name in ("laptop", "pbc_train", "pbc_pretrained")]
    stack = [argument for config in configs for argument in ("--config", str(REPO / config))]
    cli = run_cli("image", [*stack, "--wandb", "false", *TOY["image"], *QUIET, "--trainer.fast_dev_run", "true",
                            "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["val/loss"])
    hparams = cli.model.hparams
    assert (hparams.alpha, hparams.lr_schedule, hparams.colour_bins, hparams.class_weight) == (10.0, "cosine", 16, 1.0)
    assert cli.model.vae.classifier is not None


def test_image_run_layout_and_offline_wandb_dashboards(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    root = tmp_path / "runs"
    cli = run_cli("image", [*TOY["image"], *QUIET, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(root)])
    folder = run_dir(root, "image")

    # The full resolved config sits next to the checkpoints, and reproduces the command line.
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"]["hidden_channels"] == 8 and config["trainer"]["max_epochs"] == 2
    assert config["model"]["alpha"] == 1.0 and config["model"]["beta"] == pytest.approx(1e-3)
    best = list((folder / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and (folder / "checkpoints" / "last.ckpt").is_file()

    # The last checkpoint holds the trained weights and loads back through Lightning.
    reloaded = ImageVAEPlan.load_from_checkpoint(folder / "checkpoints" / "last.ckpt", map_location="cpu")
    trained = cli.model.vae.state_dict()
    assert all(torch.equal(trained[k].cpu(), v) for k, v in reloaded.vae.state_dict().items())

    metrics = read_metrics(folder)
    knn = metrics["val/knn5_acc"].dropna()
    assert len(knn) == 2 and knn.between(0, 1).all()

    # One offline W&B run holding the reconstruction grid and the latent map.
    runs = list((tmp_path / "wandb_home" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = runs[0] / "files" / "media" / "images"
    grids = sorted((media / "reconstruction").glob("grid_*.png"))
    assert len(grids) == 2 and list((media / "latent").glob("map_*.png"))
    # Three rows (input, masked target, reconstruction) of 4 cells (the batch size) of 32 px, 2 px apart.
    assert Image.open(grids[0]).size == (4 * 34 + 2, 3 * 34 + 2)


class StopAfter(L.Callback):
    """Ends a run after `epochs` of its planned `max_epochs`, as a crash or a time limit would."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, plan: L.LightningModule) -> None:
        trainer.should_stop = trainer.current_epoch + 1 >= self.epochs


@pytest.mark.parametrize("lr_schedule", ["constant", "cosine"])
def test_resume_after_stop_gives_the_weights_of_an_uninterrupted_run(lr_schedule, tmp_path):
    rates = []

    def train(folder: Path, stop_after: int = 4, ckpt_path: Path | None = None) -> dict[str, torch.Tensor]:
        L.seed_everything(0, verbose=False)
        plan = RnaVAEPlan(n_genes=40, hidden=(32, 16), latent_dim=8, lr_schedule=lr_schedule)
        trainer = L.Trainer(
            max_epochs=4, accelerator="cpu", deterministic=True, logger=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=folder, save_last=True), StopAfter(stop_after)],
        )  # fmt: skip
        trainer.fit(plan, ToyRnaDataModule(n_cells=60, genes=40, latent_dim=8, batch_size=8), ckpt_path=ckpt_path)
        rates.append(trainer.optimizers[0].param_groups[0]["lr"])
        return plan.state_dict()

    uninterrupted = train(tmp_path / "a")
    stopped = train(tmp_path / "b", stop_after=2)
    resumed = train(tmp_path / "b", ckpt_path=tmp_path / "b" / "last.ckpt")
    assert any(not torch.equal(stopped[k], uninterrupted[k]) for k in stopped)  # the resumed half did train
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    # cosine: the rate is halfway down when the run stops and ends at 0 once resumed, as without the stop
    expected = [0.0, 5e-4, 0.0] if lr_schedule == "cosine" else [1e-3] * 3
    assert rates == pytest.approx(expected, abs=1e-9)


def test_an_unknown_lr_schedule_is_refused_by_name():
    with pytest.raises(InputError, match="model.lr_schedule must be one of .*'linear'"):
        ImageVAEPlan(lr_schedule="linear")


def test_non_finite_loss_stops_naming_step_and_term(tmp_path):
    plan = ImageVAEPlan(in_channels=8, feature_size=4, image_size=32, hidden_channels=8, latent_dim=8)
    with torch.no_grad():
        plan.vae.to_mu.bias.fill_(1e20)  # μ² overflows float32: KL becomes infinite (log σ² is clamped)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)  # fmt: skip
    data = ToyFeatureDataModule(n_cells=16, in_channels=8, feature_size=4, image_size=32, batch_size=4)
    with pytest.raises(NonFiniteLossError, match=r"train step 0: .*kl=inf"):
        trainer.fit(plan, data)


@pytest.fixture(scope="module")
def tiny_h5ad(tmp_path_factory) -> Path:
    """90 cells of three Tabula Sapiens types with distinct mean expression over 80 genes (Poisson counts)."""
    rng = np.random.default_rng(0)
    kinds = np.arange(90) % 3
    means = rng.gamma(1.0, 2.0, size=(3, 80))
    counts = rng.poisson(means[kinds] * rng.uniform(0.5, 1.5, size=(90, 1))).astype(np.int32)
    obs = pd.DataFrame(
        {"cell_ontology_class": np.array(["neutrophil", "classical monocyte", "b cell"])[kinds]},
        index=[f"cell{i}" for i in range(90)],
    )
    path = tmp_path_factory.mktemp("rna") / "tiny.h5ad"
    ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{i:03d}" for i in range(80)])).write_h5ad(path)
    return path


def test_rna_run_csv_dashboards_then_embed_to_anndata(tiny_h5ad, tmp_path):
    root = tmp_path / "runs"
    rna_data = [
        "--data", "wbcvae.data.rna_datamodule.RnaDataModule", "--data.source", str(tiny_h5ad),
        "--data.n_top_genes", "40", "--data.markers", "[G000, G001]", "--data.atlas", "pca", "--data.batch_size", "16",
        "--model.hidden", "[32, 16]",
    ]  # fmt: skip
    cli = run_cli("rna", [*rna_data, *QUIET, "--wandb", "false", "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(root)])
    folder = run_dir(root, "rna")

    # Without W&B the dashboards are PNG files in the run folder and scalars in metrics.csv.
    figures = {p.name for p in (folder / "figures").iterdir()}
    assert {"reconstruction_gene_sets_epoch001.png", "latent_map_epoch001.png"} <= figures
    val = read_metrics(folder).dropna(subset=["val/loss"])
    # The "all genes" set is the whole reconstruction error, as the loss term computes it.
    assert np.allclose(val["val/recon_mse/all"], val["val/expression_mse"], rtol=1e-5)
    assert val["val/recon_mse/markers"].notna().all()
    assert (folder / "preprocessor.json").is_file()

    # `wbcvae embed`: obs = the cells' metadata, obsm = μ, uns = provenance; μ is what the encoder gives.
    out = tmp_path / "embedding.h5ad"
    parser = argparse.ArgumentParser()
    embed_cli.register(parser.add_subparsers())
    args = parser.parse_args(["embed", "--ckpt", str(folder / "checkpoints" / "last.ckpt"), "--source", str(tiny_h5ad),
                              "--out", str(out), "--batch-size", "32", "--device", "cpu"])  # fmt: skip
    args.run(args)
    embedded = ad.read_h5ad(out)
    assert embedded.obsm[EMBEDDING_KEY].shape == (90, 50)
    assert list(embedded.obs_names) == [f"cell{i}" for i in range(90)]
    assert {"cell_type", "label", "sample", "patient"} <= set(embedded.obs.columns)
    assert embedded.uns["wbcvae"]["model"]["kind"] == "rna"
    assert embedded.uns["wbcvae"]["data"]["source"] == str(tiny_h5ad.resolve())
    plan = cli.model.eval().cpu()
    x = cli.datamodule.datasets["predict"][list(range(90))]["x"]
    with torch.no_grad():
        expected = plan.vae.encode(x)[0].numpy()
    assert np.allclose(embedded.obsm[EMBEDDING_KEY], expected, atol=1e-5)


def _cli_command(kind: str, *args: str) -> list[str]:
    """`wbcvae train KIND …` as a user types it (DDP re-launches this same command for rank 1)."""
    return [sys.executable, "-m", "wbcvae", "train", kind, *TOY[kind], *QUIET, *args]


def _environment(**env: str) -> dict[str, str]:
    """This environment, one thread per process, the repo importable, and never an online W&B run."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env}
    environment.pop("WANDB_API_KEY", None)
    return environment


def _run(command: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=_environment(**env), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("kind", ["image", "rna"])
def test_ddp_two_cpu_processes_one_run(kind, tmp_path):
    root = tmp_path / "runs"
    wandb = ["--wandb", "true"] if kind == "image" else ["--wandb", "false"]
    _run(
        _cli_command(kind, "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "2",
                     "--trainer.default_root_dir", str(root), *wandb),
        cwd=tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path),
    )  # fmt: skip
    assert [p.name for p in (root / f"{kind}_vae").glob("version_*")] == ["version_0"]  # one run per job
    checkpoint = torch.load(run_dir(root, kind) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # 24 training cells, batch 4: 6 steps per epoch on one process, 3 when two ranks split the data.
    assert checkpoint["global_step"] == 2 * 3
    assert read_metrics(run_dir(root, kind))["val/knn5_acc"].notna().sum() == 2
    if kind == "image":
        assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


@pytest.mark.slow
def test_sigkill_then_ckpt_path_resume_matches_uninterrupted_run(tmp_path):
    """A real kill: the training process is SIGKILLed mid-run, then resumed from its last checkpoint."""
    args = ["--trainer.max_epochs", "12", "--trainer.deterministic", "true", "--wandb", "false", "--data.n_cells", "400"]
    _run(_cli_command("rna", *args, "--trainer.default_root_dir", str(tmp_path / "a")), cwd=tmp_path)

    root = tmp_path / "b"
    last = run_dir(root, "rna") / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(_cli_command("rna", *args, "--trainer.default_root_dir", str(root)), cwd=tmp_path,
                               env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while not last.is_file() and process.poll() is None:
            time.sleep(0.05)
    finally:
        process.kill()
    assert process.wait() == -9, "the run finished before it could be killed"
    _run(_cli_command("rna", *args, "--trainer.default_root_dir", str(root), "--ckpt_path", str(last)), cwd=tmp_path)

    def weights(run: Path) -> dict[str, torch.Tensor]:
        return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]

    uninterrupted, resumed = weights(run_dir(tmp_path / "a", "rna")), weights(root / "rna_vae" / "version_1")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory) -> Path:
    """A complete 24-row feature store (the real format) of random features, 3 classes, 4 patients."""
    from wbcvae.features.store import FeatureStore

    rng = np.random.default_rng(0)
    n = 24
    labels = np.array(["monocyte", "eosinophil", "basophil"])[np.arange(n) % 3]
    meta = pd.DataFrame({"path": [f"/crops/{i}.png" for i in range(n)], "label": labels,
                         "patient": [f"P{i % 4}" for i in range(n)], "source_label": labels, "mask_path": ""})  # fmt: skip
    store = FeatureStore.create(tmp_path_factory.mktemp("store") / "features", meta, provenance={"source": "test"})
    store.write(np.arange(n), {
        "features": rng.normal(size=(n, 256, 14, 14)).astype(np.float16),
        "mask": (rng.random((n, 1, 128, 128)) > 0.5).astype(np.uint8),
        "target": rng.integers(0, 256, (n, 3, 128, 128), dtype=np.uint8),
        "score": np.ones(n, np.float32), "box": np.zeros((n, 4), np.float32), "origin": np.zeros(n, np.uint8),
    })  # fmt: skip
    return store.root


def test_image_plan_on_feature_store_then_embed(feature_store, tmp_path):
    from wbcvae.features.datamodule import FeatureDataModule

    plan = ImageVAEPlan()  # the study's shapes: 256×14×14 → 50 → 3×128×128
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    data = FeatureDataModule(feature_store, batch_size=8)
    trainer.fit(plan, data)
    assert trainer.global_step == 2
    # The VAE standardises features with per-channel statistics of the training split (all of it here).
    train_rows = np.sort(data.datasets["train"].rows)
    train_features = np.load(feature_store / "features.npy")[train_rows].astype(np.float64)
    assert plan.statistics_cells == len(train_rows)
    assert np.allclose(plan.vae.feature_mean.flatten(), train_features.mean(axis=(0, 2, 3)), atol=1e-4)
    assert np.allclose(plan.vae.feature_std.flatten(), train_features.std(axis=(0, 2, 3)), atol=1e-4)

    from wbcvae.training.embed import embed

    embedded = embed(tmp_path / "last.ckpt", feature_store, tmp_path / "image.h5ad", batch_size=10, device="cpu")
    reread = ad.read_h5ad(tmp_path / "image.h5ad")
    assert reread.obsm[EMBEDDING_KEY].shape == (24, 50)
    assert list(reread.obs["label"].astype(str)) == list(np.array(["monocyte", "eosinophil", "basophil"])[np.arange(24) % 3])
    assert reread.uns["wbcvae"]["model"]["kind"] == "image"
    features = torch.from_numpy(np.load(feature_store / "features.npy").astype(np.float32))
    with torch.no_grad():
        expected = plan.eval().vae.encode(features)[0].numpy()
    assert np.allclose(embedded.obsm[EMBEDDING_KEY], expected, atol=1e-5)


def test_an_image_plan_reading_colours_fits_their_statistics_beside_the_features_and_embeds(feature_store, tmp_path):
    from wbcvae.features.datamodule import FeatureDataModule
    from wbcvae.models.image_vae import COLOUR_STD_FLOOR
    from wbcvae.models.losses import colour_profile
    from wbcvae.training.embed import embed

    plan = ImageVAEPlan(colour_bins=8)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    data = FeatureDataModule(feature_store, batch_size=8)
    trainer.fit(plan, data)
    train_rows = np.sort(data.datasets["train"].rows)
    assert plan.statistics_cells == len(train_rows)  # the cells the features were counted over, whatever else is fitted
    target = torch.from_numpy(np.load(feature_store / "target.npy")[train_rows].astype(np.float32) / 255)
    mask = torch.from_numpy(np.load(feature_store / "mask.npy")[train_rows].astype(np.float32))
    profiles = colour_profile(target, mask, 8).double()
    assert torch.allclose(plan.vae.colour_mean.double(), profiles.mean(0), atol=1e-5)
    assert torch.allclose(plan.vae.colour_std.double(), profiles.std(0, unbiased=False).clamp_min(COLOUR_STD_FLOOR), atol=1e-5)
    embedded = embed(tmp_path / "last.ckpt", feature_store, tmp_path / "image.h5ad", batch_size=10, device="cpu")
    assert embedded.obsm[EMBEDDING_KEY].shape == (24, 50)


def test_a_fresh_run_reads_the_perceptual_network_and_its_checkpoint_carries_it(feature_store, tmp_path):
    """The `.pth` is read when the run starts; the checkpoint then holds its tensors, so the model loads
    (to align, embed or score it) where the file is gone."""
    from wbcvae.checkpoints import load_plan
    from wbcvae.features.datamodule import FeatureDataModule

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=13).state_dict(), weights)
    plan = ImageVAEPlan(perceptual_weight=1.0, perceptual_network=str(weights), perceptual_cells=2)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    trainer.fit(plan, FeatureDataModule(feature_store, batch_size=8))
    saved = torch.load(weights, weights_only=True)
    assert torch.equal(plan.perceptual.conv1.weight, saved["conv1.weight"])
    assert torch.equal(plan.perceptual.layer2[0].conv1.weight, saved["layer2.0.conv1.weight"])
    weights.unlink()
    loaded, _ = load_plan(tmp_path / "last.ckpt", kind="image")
    assert torch.equal(loaded.perceptual.layer2[0].conv1.weight, saved["layer2.0.conv1.weight"])


def test_the_adversarial_term_trains_through_lightning_and_its_discriminator_travels_in_the_checkpoint(feature_store, tmp_path):
    """Both players in Lightning's one optimiser (the adaptive weight's gradients inside a training step), a
    validation pass without gradients, and a checkpoint that loads the discriminator back."""
    from wbcvae.checkpoints import load_plan
    from wbcvae.features.datamodule import FeatureDataModule

    plan = ImageVAEPlan(adversarial_weight=1.0, adversarial_cells=4, adversarial_start=1)
    trainer = L.Trainer(max_steps=3, limit_val_batches=1, val_check_interval=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])  # fmt: skip
    trainer.fit(plan, FeatureDataModule(feature_store, batch_size=8))
    logged = trainer.callback_metrics
    assert torch.isfinite(logged["val/image_adversarial"]) and logged["val/discriminator_bce"] > 0
    assert plan.adversarial_balance > 0  # measured in the training steps after the start
    loaded, _ = load_plan(tmp_path / "last.ckpt", kind="image")
    assert torch.equal(loaded.discriminator.body[0].weight, plan.discriminator.body[0].weight)


# --- one kNN protocol, inputs checked before a run folder, one-line config errors, a quiet run --------


def test_logged_knn_is_the_protocol_of_training_metrics(tmp_path):
    """`val/knn5_acc` = validation cells voted by their 5 nearest training cells (the bench's protocol)."""
    from wbcvae.training.metrics import knn_accuracy, latent_reference

    root = tmp_path / "runs"
    cli = run_cli("rna", [*TOY["rna"], *QUIET, "--wandb", "false", "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(root)])
    plan = cli.model.eval()
    reference, reference_labels = latent_reference(plan, cli.datamodule.train_dataloader())
    assert len(reference) == 24  # every training cell (fewer than REFERENCE_CELLS)
    batches = list(cli.datamodule.val_dataloader())
    with torch.no_grad():
        mu = torch.cat([plan.vae.encode(b["x"])[0] for b in batches]).numpy()
    labels = torch.cat([b["label"] for b in batches]).numpy()
    logged = read_metrics(run_dir(root, "rna"))["val/knn5_acc"].dropna()
    assert logged.iloc[-1] == pytest.approx(knn_accuracy(reference, reference_labels, mu, labels, k=5))


def test_a_seeded_reference_subset_is_the_same_every_time():
    from torch.utils.data import DataLoader

    from wbcvae.training.metrics import latent_reference

    data = ToyRnaDataModule(n_cells=40, genes=40, latent_dim=8, batch_size=4)
    plan = RnaVAEPlan(n_genes=40, hidden=(16,), latent_dim=8).train()
    loader = DataLoader(data.dataset, batch_size=4, shuffle=True)
    first, labels = latent_reference(plan, loader, max_cells=10)
    again, _ = latent_reference(plan, loader, max_cells=10)
    assert first.shape == (10, 8) and np.array_equal(first, again) and labels.min() >= 0
    assert plan.training  # put back as it was


@pytest.mark.parametrize("wandb", ["false", pytest.param("true", marks=pytest.mark.slow)])  # W&B's start: ~10 s
def test_rejected_data_leaves_no_run_folder(tiny_h5ad, tmp_path, monkeypatch, wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    root = tmp_path / "runs"
    (root / "rna_vae" / "version_0").mkdir(parents=True)  # an earlier run: left alone
    (root / "rna_vae" / "version_0" / "metrics.csv").write_text("epoch\n0\n")
    bad = ["--data", "wbcvae.data.rna_datamodule.RnaDataModule", "--data.source", str(tiny_h5ad), "--data.cell_type_key", "nothere"]
    with pytest.raises(InputError, match="no obs column 'nothere'"):
        run_cli("rna", [*bad, *QUIET, "--wandb", wandb, "--trainer.default_root_dir", str(root)])
    assert sorted(p.name for p in (root / "rna_vae").iterdir()) == ["version_0"]


def test_a_checkpoint_of_the_other_kind_is_refused_before_anything_is_written(tmp_path):
    rna = tmp_path / "rna.ckpt"
    plan = RnaVAEPlan(n_genes=40, hidden=(16,), latent_dim=8)
    torch.save({"state_dict": plan.state_dict(), "hyper_parameters": dict(plan.hparams), "wbcvae": {"kind": "rna"}}, rna)
    root = tmp_path / "runs"
    with pytest.raises(InputError, match="an RNA β-VAE checkpoint; expected an image β-VAE"):
        run_cli("image", [*TOY["image"], *QUIET, "--trainer.default_root_dir", str(root), "--ckpt_path", str(rna)])
    assert not root.exists()


def test_a_bad_config_value_is_one_line_naming_key_type_and_file(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  lr: fast\n")
    with pytest.raises(InputError) as err:
        run_cli("rna", [*TOY["rna"], "--config", str(config)])
    assert str(err.value) == f"{config}: key model.lr: expected float, got 'fast'"
    with pytest.raises(InputError, match=r"^--data.n_cell on the command line: not a setting"):
        run_cli("rna", ["--data", "wbcvae.training.toy_data.ToyRnaDataModule", "--data.n_cell", "3"])


def test_a_bad_alignment_setting_is_one_line_naming_key_type_and_file(tmp_path):
    from wbcvae.alignment.run import AlignConfig

    config = tmp_path / "align.yaml"
    for text, expected in (("delta: lots\n", "key delta: expected float, got 'lots'"),
                           ("max_epochs: true\n", "key max_epochs: expected int, got True"),
                           ("trajectories: granulopoiesis\n", "key trajectories: expected list[str], got 'granulopoiesis'")):  # fmt: skip
        config.write_text(text)
        with pytest.raises(InputError) as err:
            AlignConfig.from_yaml(config)
        assert str(err.value) == f"{config}: {expected}"


def test_experiment_configs_resolve_from_any_working_folder(tmp_path, monkeypatch):
    from wbcvae.utils.config import resolve_config

    monkeypatch.chdir(tmp_path)
    assert resolve_config("experiments/rna_vae/laptop.yaml") == REPO / "experiments" / "rna_vae" / "laptop.yaml"
    (tmp_path / "experiments" / "rna_vae").mkdir(parents=True)
    (tmp_path / "experiments" / "rna_vae" / "laptop.yaml").write_text("{}")
    assert resolve_config("experiments/rna_vae/laptop.yaml") == Path("experiments/rna_vae/laptop.yaml")  # the user's own first


@pytest.mark.slow
def test_a_normal_run_is_quiet_and_says_where_its_checkpoint_went(tmp_path):
    done = _run(_cli_command("rna", "--trainer.max_epochs", "1", "--wandb", "true", "--trainer.default_root_dir", "runs"),
                cwd=tmp_path, WANDB_MODE="offline", WANDB_DIR=str(tmp_path))  # fmt: skip
    output = done.stdout + done.stderr
    for noise in ("💡", "LeafSpec", "n_jobs value", "anonymous setting", "LightningCLI's args"):
        assert noise not in output
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("wrote an RNA β-VAE checkpoint runs/rna_vae/version_0/checkpoints/best-")
    assert (tmp_path / last.split()[5]).is_file()
