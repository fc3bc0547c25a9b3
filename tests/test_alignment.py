"""Joint alignment: the class-statistics loss, its robustness to awkward batches, the module, the metrics."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from wbcvae.alignment.loss import Correspondence, alignment_loss, class_moments, statistics
from wbcvae.alignment.metrics import alignment_metrics, modality_mixing
from wbcvae.alignment.module import JointAlignmentModule, LabelledLatents, RnaCells, load_alignment
from wbcvae.alignment.warm_start import image_class_means, procrustes, procrustes_warm_start
from wbcvae.errors import InputError
from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.rna_plan import RnaVAEPlan
from wbcvae.training.toy_data import TensorDictDataset
from wbcvae.vocabulary import CLASS_INDEX

LATENT = 6
PAIR_CLASSES = ("myeloblast", "monocyte", "neutrophil_segmented")


# --- the loss ---------------------------------------------------------------------------------------


def test_statistics_match_torch_and_add_over_ranks_that_see_different_classes():
    torch.manual_seed(0)
    z = torch.randn(40, LATENT)
    groups = torch.arange(40) % 3
    whole = statistics(class_moments(z, groups, 3))
    for g in range(3):
        torch.testing.assert_close(whole.mean[g], z[groups == g].mean(0))
        torch.testing.assert_close(whole.cov[g], torch.cov(z[groups == g].T), atol=1e-5, rtol=1e-4)
    # "rank 0" holds only class 0, "rank 1" classes 1 and 2: summed moments give the same statistics.
    rank0, rank1 = groups == 0, groups != 0
    summed = class_moments(z[rank0], groups[rank0], 3) + class_moments(z[rank1], groups[rank1], 3)
    torch.testing.assert_close(statistics(summed).cov, whole.cov)
    torch.testing.assert_close(statistics(summed).mean, whole.mean)


def test_missing_and_single_cell_classes_give_flags_not_nan():
    z = torch.randn(5, LATENT)
    groups = torch.tensor([0, 0, 0, 1, -1])  # class 1 has one cell, class 2 none, one cell in no pair
    stats = statistics(class_moments(z, groups, 3))
    assert stats.has_mean.tolist() == [True, True, False]
    assert stats.has_cov.tolist() == [True, False, False]
    assert stats.count.tolist() == [3, 1, 0]
    assert torch.isfinite(stats.mean).all() and torch.isfinite(stats.cov).all()
    with pytest.raises(InputError, match="min_cells_for_cov"):
        statistics(class_moments(z, groups, 3), min_cells_for_cov=1)


def _rna_targets(n_per_class: int = 100):
    torch.manual_seed(1)
    groups = torch.arange(3 * n_per_class) % 3
    centres = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, -3.0, 1.0, 0, 0]])
    scales = torch.tensor([0.5, 1.0, 0.3])
    z = centres[groups] + scales[groups, None] * torch.randn(len(groups), LATENT)
    return statistics(class_moments(z, groups, 3))


def test_alignment_loss_finite_and_decreasing_on_awkward_batches():
    """Batches cycle through: all classes; class 2 missing; class 1 with a single cell; no aligned cell."""
    torch.manual_seed(0)
    target = _rna_targets()
    encoder = nn.Linear(3 + 5, LATENT)
    optimiser = torch.optim.Adam(encoder.parameters(), lr=0.05)
    labels = {
        "all": torch.arange(24) % 3,
        "missing_class": torch.arange(16) % 2,
        "one_cell_class": torch.tensor([0] * 8 + [1] + [2] * 8),
        "no_pair": torch.full((6,), -1),
    }
    history: dict[str, list[float]] = {name: [] for name in labels}
    for step in range(240):
        name = list(labels)[step % len(labels)]
        groups = labels[name]
        x = torch.cat([nn.functional.one_hot(groups.clamp(min=0), 3).float(), torch.randn(len(groups), 5)], dim=1)
        stats = statistics(class_moments(encoder(x), groups, 3))
        terms = alignment_loss(stats, target)
        optimiser.zero_grad()
        terms.loss.backward()
        assert torch.isfinite(terms.loss), f"step {step} ({name}): loss {terms.loss}"
        assert all(torch.isfinite(p.grad).all() for p in encoder.parameters()), f"step {step} ({name}): NaN gradient"
        optimiser.step()
        history[name].append(terms.loss.item())
        if name == "one_cell_class":
            assert terms.pairs_with_mean.item() == 3 and terms.pairs_with_cov.item() == 2
        if name == "no_pair":
            assert terms.loss.item() == 0.0
    for name in ("all", "missing_class", "one_cell_class"):
        assert history[name][-1] < 0.2 * history[name][0], f"{name}: {history[name][0]:.3f} → {history[name][-1]:.3f}"


def test_correspondence_maps_cell_types_and_classes_and_names_bad_keys():
    corr = Correspondence.from_mapping(
        {"myeloblast": ["HSC", "Prog"], "monocyte": "Mono", "neutrophil_segmented": ["neutrophil_segmented"]}
    )
    labels = torch.tensor([CLASS_INDEX["monocyte"], -1, CLASS_INDEX["myeloblast"], CLASS_INDEX["basophil"], CLASS_INDEX["neutrophil_segmented"]])
    assert corr.image_groups(labels).tolist() == [1, -1, 0, -1, 2]
    groups = corr.rna_groups(["HSC", "Prog", "Mono", "B", "neutrophil"], ["myeloblast", "myeloblast", "monocyte", "lymphocyte_typical", "neutrophil_segmented"])
    assert groups.tolist() == [0, 0, 1, -1, 2]
    with pytest.raises(InputError, match="'neutrophil'"):
        Correspondence.from_mapping({"neutrophil": ["neutrophil"]})


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_tell_aligned_from_misaligned():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (3, LATENT))
    rna_groups, image_groups = np.arange(300) % 3, np.arange(90) % 3
    rna = centres[rna_groups] + rng.normal(0, 0.5, (300, LATENT))
    image = centres[image_groups] + rng.normal(0, 0.5, (90, LATENT))
    aligned, table = alignment_metrics(image, image_groups, rna, rna_groups, PAIR_CLASSES)
    assert aligned["nearest_centroid_accuracy"] == 1.0
    assert aligned["centroid_distance_ratio"] < 0.1
    assert aligned["mixing_entropy"] > 0.8 and abs(aligned["modality_silhouette"]) < 0.1
    assert list(table["class"]) == list(PAIR_CLASSES) and table["image_cells"].tolist() == [30, 30, 30]
    shifted, _ = alignment_metrics(image + 10.0, image_groups, rna, rna_groups, PAIR_CLASSES)
    swapped, _ = alignment_metrics(image, (image_groups + 1) % 3, rna, rna_groups, PAIR_CLASSES)
    assert shifted["mixing_entropy"] < 0.1 and shifted["centroid_distance_ratio"] > 1
    assert swapped["nearest_centroid_accuracy"] == 0.0
    assert np.isnan(modality_mixing(image[:1], rna)[0])  # one image cell: no mixing to measure
    # Few cells per modality (k is capped below the class size): apart is still apart, together still mixed.
    assert modality_mixing(image[:6], rna[:6] + 20.0)[0] == 0.0
    assert modality_mixing(image[:6], image[:6] + 1e-3 * rng.normal(size=(6, LATENT)))[0] > 0.6


# --- the LightningModule ----------------------------------------------------------------------------


def tiny_plans(seed: int = 0) -> tuple[ImageVAEPlan, RnaVAEPlan]:
    torch.manual_seed(seed)
    image = ImageVAEPlan(in_channels=8, feature_size=4, image_size=32, latent_dim=LATENT, hidden_channels=8, kl_warmup_steps=10)
    rna = RnaVAEPlan(n_genes=12, hidden=(16,), latent_dim=LATENT)
    return image, rna


def tiny_image_data(n: int = 48, classes: tuple[str, ...] = PAIR_CLASSES) -> TensorDictDataset:
    """Feature batches whose classes differ; a "basophil" image (in no pair) and a class seen once."""
    generator = torch.Generator().manual_seed(0)
    names = [classes[i % len(classes)] for i in range(n - 2)] + ["basophil", "neutrophil_banded"]
    labels = torch.tensor([CLASS_INDEX[c] for c in names])
    features = torch.randn(n, 8, 4, 4, generator=generator) + labels[:, None, None, None].float() * 0.5
    return TensorDictDataset(
        {"features": features, "target": torch.rand(n, 3, 32, 32, generator=generator), "mask": torch.ones(n, 1, 32, 32), "label": labels}
    )


def tiny_rna_cells(n: int = 150) -> RnaCells:
    generator = torch.Generator().manual_seed(2)
    classes = [PAIR_CLASSES[i % 3] for i in range(n)] + ["neutrophil_banded"] * 3
    centres = {c: torch.randn(LATENT, generator=generator) * 3 for c in sorted(set(classes))}  # sorted: no hash-seed dependence
    latent = torch.stack([centres[c] for c in classes]) + 0.5 * torch.randn(len(classes), LATENT, generator=generator)
    cell_types = [{"myeloblast": "HSC", "monocyte": "Mono"}.get(c, c) for c in classes]
    return RnaCells(latent, cell_types, classes)


class _AlignHistory(L.Callback):
    def __init__(self):
        self.val_align: list[float] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_align.append(float(trainer.callback_metrics["val/align"]))


ALIGNED_STORE = {"source": "crops", "fingerprint": {"checkpoint_sha256": "abc", "pose": "canonical"}}  # the provenance the tiny joint model keeps


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny joint model fine-tuned for a few epochs; its folder holds the checkpoint."""
    folder = tmp_path_factory.mktemp("align")
    L.seed_everything(0)  # the loader's shuffle draws from the global RNG: same run whatever ran before
    image, rna = tiny_plans()
    correspondence = {"myeloblast": ["HSC"], "monocyte": ["Mono"], "neutrophil_segmented": ["neutrophil_segmented"], "neutrophil_banded": ["neutrophil_banded"]}
    module = JointAlignmentModule(
        image, rna, tiny_rna_cells(), correspondence, gene_names=[f"G{i}" for i in range(12)], delta=20.0, lr=1e-2,
        image_store=ALIGNED_STORE,
    )
    history = _AlignHistory()
    trainer = L.Trainer(
        max_epochs=8, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=folder, callbacks=[history],
    )  # fmt: skip
    data = tiny_image_data()
    trainer.fit(module, DataLoader(data, batch_size=8, shuffle=True), DataLoader(data, batch_size=16))
    trainer.save_checkpoint(folder / "joint.ckpt")
    return module, history, folder


def test_module_reduces_alignment_loss_and_logs_metrics(trained):
    module, history, _ = trained
    assert all(np.isfinite(history.val_align))
    assert history.val_align[-1] < 0.5 * history.val_align[0], history.val_align
    assert set(module.last_metrics) >= {"nearest_centroid_accuracy", "centroid_distance_ratio", "mixing_entropy"}
    assert module.last_metrics["nearest_centroid_accuracy"] > 2 * module.last_metrics["chance_accuracy"]
    assert module.last_metrics["centroid_distance_ratio"] < 0.5
    assert not any(p.requires_grad for p in module.rna_plan.parameters()) and not module.rna_plan.training
    assert module.image_plan.hparams.kl_warmup_steps == 0  # the trained VAE is not warmed up again


def test_checkpoint_rebuilds_the_module_alone(trained):
    module, _, folder = trained
    loaded = load_alignment(folder / "joint.ckpt")
    z = torch.randn(4, LATENT)
    module.eval()
    torch.testing.assert_close(loaded.image_plan.vae.decode(z)[1], module.image_plan.vae.decode(z)[1])
    torch.testing.assert_close(loaded.rna_plan.vae.decode(z), module.rna_plan.vae.decode(z))
    torch.testing.assert_close(loaded.target_cov, module.target_cov)
    assert loaded.gene_names == module.gene_names and loaded.rna_cell_types == module.rna_cell_types
    assert loaded.hparams.image_store == ALIGNED_STORE
    np.testing.assert_allclose(loaded.image_latents.latent, module.image_latents.latent)
    with pytest.raises(InputError, match="not a readable checkpoint"):
        (folder / "junk.ckpt").write_text("junk")
        load_alignment(folder / "junk.ckpt")
    checkpoint = torch.load(folder / "joint.ckpt", weights_only=True)
    del checkpoint["state_dict"]["image_plan.vae.to_mu.weight"]  # as if written by other model code
    torch.save(checkpoint, folder / "older.ckpt")
    with pytest.raises(InputError, match="do not fit this version"):
        load_alignment(folder / "older.ckpt")


def test_trajectory_refuses_a_store_read_in_another_pose_than_the_aligned_one(trained, tmp_path, capsys):
    import wbcvae.cli.main as cli_main
    from wbcvae.features.store import FeatureStore

    _, _, folder = trained
    meta = pd.DataFrame({"path": ["/crops/0.png"], "label": ["monocyte"], "patient": "", "source_label": "MO", "mask_path": ""})
    FeatureStore.create(tmp_path / "as_is", meta, provenance={"fingerprint": {"checkpoint_sha256": "abc"}})  # read before poses existed
    args = ["trajectory", "--ckpt", str(folder / "joint.ckpt"), "--features", str(tmp_path / "as_is"), "--out", str(tmp_path / "out")]
    assert cli_main.main(args) == 2
    assert "pose 'as_is', the store the image model was aligned on in pose 'canonical'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


DDP_SCRIPT = """
import sys, lightning as L, torch
from torch.utils.data import DataLoader
sys.path.insert(0, {tests!r})
from test_alignment import tiny_plans, tiny_rna_cells, tiny_image_data, PAIR_CLASSES
from wbcvae.alignment.module import JointAlignmentModule

torch.set_num_threads(1)
image, rna = tiny_plans()
module = JointAlignmentModule(image, rna, tiny_rna_cells(), {{c: [c] for c in PAIR_CLASSES}}, delta=5.0, lr=3e-3)
# Unshuffled, a DistributedSampler gives rank r the rows r, r+2, …: rank 0 sees only myeloblasts and
# monocytes, rank 1 only monocytes and segmented neutrophils (and a different class count per step).
data = tiny_image_data(n=40, classes=("myeloblast", "monocyte", "monocyte", "neutrophil_segmented"))
trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
metrics = trainer.callback_metrics
assert torch.isfinite(metrics["val/loss"]), metrics
# Moments are summed over ranks: steps see all three pairs though no rank holds more than two, so the
# mean over steps exceeds 2 (the last batch holds the two rows in no pair, hence not exactly 3).
assert metrics["val/pairs_with_cov"].item() > 2, metrics["val/pairs_with_cov"]
print("rank", trainer.global_rank, "ok", float(metrics["val/align"]))
"""


@pytest.mark.slow
def test_ddp_ranks_with_different_classes_neither_hang_nor_nan(tmp_path):
    script = tmp_path / "ddp_align.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(__import__("pathlib").Path(__file__).parent))))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # Both ranks finished. Their prints may interleave mid-line ("rank 1rank 0 ok  3.37\nok 3.37"): count the words.
    assert len(re.findall(r"\bok\b", done.stdout)) == 2, done.stdout


# --- `wbcvae align` at toy size --------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_sources(tmp_path_factory):
    """A 30-row feature store (the real format) and a 120-cell RNA .h5ad with synthetic-world truth."""
    import anndata as ad
    import scipy.sparse as sp

    from wbcvae.features.store import FeatureStore

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("toy_sources")
    classes = np.array(["myeloblast", "monocyte", "neutrophil_banded", "neutrophil_segmented", "promyelocyte"])
    n = 30
    labels = classes[np.arange(n) % len(classes)]
    meta = pd.DataFrame({"path": [f"/crops/{i}.png" for i in range(n)], "label": labels, "patient": "", "source_label": labels, "mask_path": ""})
    store = FeatureStore.create(folder / "store", meta, provenance=ALIGNED_STORE)
    offsets = (np.arange(n) % len(classes))[:, None, None, None]
    store.write(np.arange(n), {
        "features": (rng.normal(size=(n, 256, 14, 14)) + offsets).astype(np.float16),
        "mask": np.ones((n, 1, 128, 128), np.uint8),
        "target": rng.integers(0, 256, (n, 3, 128, 128), dtype=np.uint8),
        "score": np.ones(n, np.float32), "box": np.zeros((n, 4), np.float32), "origin": np.zeros(n, np.uint8),
    })  # fmt: skip
    m = 120
    kinds = np.arange(m) % len(classes)
    means = rng.gamma(1.0, 2.0, size=(len(classes), 60))
    counts = rng.poisson(means[kinds] * rng.uniform(0.5, 1.5, size=(m, 1))).astype(np.int32)
    obs = pd.DataFrame(
        {"cell_type": classes[kinds], "lineage": np.where(classes[kinds] == "monocyte", "monocytic", "granulocytic"),
         "pseudotime": rng.uniform(0, 1, m)},
        index=[f"cell{i}" for i in range(m)],
    )  # fmt: skip
    kinetics = np.array(["up", "down", "transient", "flat"])[np.arange(60) % 4]
    var = pd.DataFrame({"kinetic_granulocytic": kinetics, "kinetic_monocytic": kinetics}, index=[f"G{i:03d}" for i in range(60)])
    ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var).write_h5ad(folder / "rna.h5ad")
    return folder / "store", folder / "rna.h5ad"


def test_strip_crops_are_read_back_from_the_feature_store(toy_sources):
    """Image cells find their crop in the store by manifest index; RNA cells have none; no store, no crops."""
    from wbcvae.features.store import FeatureStore
    from wbcvae.models.image_vae import cell_on_grey
    from wbcvae.trajectory.callback import store_crops

    store = FeatureStore(toy_sources[0])
    rna = LabelledLatents(np.zeros((3, 2)), np.full(3, "myeloblast", dtype=object), np.full(3, "rna", dtype=object))
    index = store.meta["index"].to_numpy()[[7, 2]]
    images = LabelledLatents(np.eye(2), np.array(["monocyte", "promyelocyte"], dtype=object), np.full(2, "image", dtype=object), index)
    crops = store_crops(store, LabelledLatents.concat([rna, images]))
    assert len(crops.latent) == 2
    shown, names = crops.nearest(np.array([[0.1, 0.9]]))
    target, mask = (torch.from_numpy(store.array(name)[[2]].astype(np.float32)) for name in ("target", "mask"))
    torch.testing.assert_close(shown, cell_on_grey(target / 255.0, mask))
    assert names == ["promyelocyte"] and store_crops(None, images) is None


def test_an_incomplete_store_is_refused_before_any_image_is_encoded(tmp_path, trained):
    from wbcvae.features.store import FeatureStore
    from wbcvae.trajectory.callback import store_images

    paths = ["/crops/0.png", "/crops/1.png"]
    meta = pd.DataFrame({"path": paths, "label": "monocyte", "patient": "", "source_label": "MO", "mask_path": ""})
    store = FeatureStore.create(tmp_path / "store", meta, provenance=ALIGNED_STORE)
    with pytest.raises(InputError, match=r"store: 2 of 2 rows not extracted yet"):
        store_images(trained[0], store)


def test_a_store_of_other_features_is_refused_with_both_shapes(toy_sources, trained):
    from wbcvae.features.store import FeatureStore
    from wbcvae.trajectory.callback import store_images

    with pytest.raises(InputError, match=r"store: features are 256×14×14, the model reads 8×4×4"):
        store_images(trained[0], FeatureStore(toy_sources[0]))


@pytest.mark.slow
def test_align_command_writes_checkpoint_metrics_trajectories_and_report(toy_sources, tmp_path, monkeypatch, capsys):
    import json

    import wbcvae.cli.main as cli_main
    from wbcvae.features.datamodule import FeatureDataModule
    from wbcvae.training.cli import run_cli

    store, rna = toy_sources
    L.seed_everything(0)
    image_trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    image_trainer.fit(ImageVAEPlan(), FeatureDataModule(store, batch_size=8))
    image_trainer.save_checkpoint(tmp_path / "image.ckpt")
    rna_cli = run_cli("rna", [
        "--data", "wbcvae.data.rna_datamodule.RnaDataModule", "--data.source", str(rna), "--data.n_top_genes", "40",
        "--data.atlas", "pca", "--data.batch_size", "16", "--model.hidden", "[32, 16]", "--wandb", "false",
        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "rna"), "--trainer.enable_progress_bar", "false",
    ])  # fmt: skip
    config = tmp_path / "align.yaml"
    config.write_text(
        f"features: {store}\nrna: {rna}\nbatch_size: 8\nmax_epochs: 2\naccelerator: cpu\n"
        "trajectory: {steps: 12, samples: 2, k_range: [3, 3], fit_iters: 20}\n"
    )
    monkeypatch.setattr(cli_main, "COMMANDS", ("align",))
    args = ["align", "--config", str(config), "--image-ckpt", str(tmp_path / "image.ckpt"), "--no-wandb",
            "--rna-ckpt", rna_cli.trainer.checkpoint_callback.last_model_path, "--out", str(tmp_path / "runs")]  # fmt: skip
    assert cli_main.main(args) == 0
    run = tmp_path / "runs" / "alignment" / "version_0"
    assert f"report: {run / 'report' / 'index.html'}" in capsys.readouterr().out
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    assert set(metrics["alignment"]) >= {"nearest_centroid_accuracy", "centroid_distance_ratio", "mixing_entropy"}
    # Ground truth was found in the RNA source: the granulocytic path is scored on it.
    assert -1 <= metrics["trajectory/granulopoiesis"]["pseudotime_spearman"] <= 1
    assert "ari_shapes" in metrics["trajectory/granulopoiesis"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "joint_latent.png").is_file()
    assert (run / "trajectories" / "monocytopoiesis" / "strip.png").is_file()
    assert len(pd.read_csv(run / "trajectories" / "monocytopoiesis" / "strip_cells.csv")) == 10  # the store's crops, one a frame
    assert load_alignment(run / "checkpoints" / "last.ckpt").gene_names[:1] != ["gene0"]  # names from the RNA run
    # From the checkpoint, with the store: the strip shows its crops as the callback's did.
    monkeypatch.setattr(cli_main, "COMMANDS", ("align", "trajectory"))
    again = ["trajectory", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--features", str(store), "--preset", "monocytopoiesis",
             "--out", str(tmp_path / "again"), "--steps", "12", "--samples", "2", "--k-range", "3", "3"]  # fmt: skip
    assert cli_main.main(again) == 0
    assert len(pd.read_csv(tmp_path / "again" / "monocytopoiesis" / "strip_cells.csv")) == 10
    # bench/strip_nuclei.py reads the run: the decoded strip's nucleus, frame by frame
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import strip_nuclei

    frames = strip_nuclei.frame_nuclei(run, "monocytopoiesis", 10)
    assert len(frames) == 10 and np.all(np.diff(frames["t"]) > 0) and frames["t"].iloc[-1] == 1
    assert frames["solidity"].dropna().between(0, 1).all() and (frames["pieces"] >= 0).all()
    assert (frames["pieces"] == 0).eq(frames["solidity"].isna()).all()  # no nucleus, no solidity
    # A typo in the config is one line naming the key, exit 2, and no new run folder.
    config.write_text(config.read_text() + "deltaa: 3\n")
    assert cli_main.main(args) == 2
    assert "'deltaa'" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs" / "alignment").iterdir()) == ["version_0"]


# --- the warm start ---------------------------------------------------------------------------------


def test_procrustes_recovers_a_rotation_scale_and_shift():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(8, LATENT, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(LATENT, LATENT, generator=generator))
    target = 2.5 * source @ rotation + torch.arange(LATENT).float()
    rigid = procrustes(source, target)
    assert abs(rigid.scale - 2.5) < 1e-4 and torch.allclose(rigid.apply(source), target, atol=1e-4)


def test_warm_start_puts_image_classes_on_rna_classes_and_keeps_every_reconstruction():
    image, rna = tiny_plans()
    correspondence = {"myeloblast": ["HSC"], "monocyte": ["Mono"], "neutrophil_segmented": ["neutrophil_segmented"]}
    module = JointAlignmentModule(image, rna, tiny_rna_cells(), correspondence).eval()
    loader = DataLoader(tiny_image_data(), batch_size=16)
    features = torch.cat([batch["features"] for batch in loader])
    before = image.vae.decode(image.vae.encode(features)[0])
    fitted = procrustes_warm_start(module, loader)
    means, _ = image_class_means(module, loader)
    after = image.vae.decode(image.vae.encode(features)[0])
    assert fitted["pairs"] == 3 and fitted["mean_term_after"] < 0.5 * fitted["mean_term_before"]
    assert float(((means - module.target_mean) ** 2).mean()) == pytest.approx(fitted["mean_term_after"], rel=1e-3)
    for old, new in zip(before, after):  # features, image and mask decode as before the move
        assert torch.allclose(old, new, atol=1e-4)
