"""Joint alignment: the class-statistics loss, its robustness to awkward batches, the module, the metrics."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from wbcvae.alignment.loss import Correspondence, alignment_loss, class_moments, statistics
from wbcvae.alignment.metrics import alignment_metrics, modality_mixing
from wbcvae.alignment.module import JointAlignmentModule, RnaCells, load_alignment
from wbcvae.errors import InputError
from wbcvae.training.image_plan import ImageVAEPlan
from wbcvae.training.rna_plan import RnaVAEPlan
from wbcvae.training.toy_data import TensorDictDataset
from wbcvae.vocabulary import CLASS_INDEX

LATENT = 6
PAIR_CLASSES = ("myeloblast", "monocyte", "neutrophil_segmented")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine: threads only fight
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny joint model fine-tuned for a few epochs; its folder holds the checkpoint."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("align")
    L.seed_everything(0)  # the loader's shuffle draws from the global RNG: same run whatever ran before
    image, rna = tiny_plans()
    correspondence = {"myeloblast": ["HSC"], "monocyte": ["Mono"], "neutrophil_segmented": ["neutrophil_segmented"], "neutrophil_banded": ["neutrophil_banded"]}
    module = JointAlignmentModule(image, rna, tiny_rna_cells(), correspondence, gene_names=[f"G{i}" for i in range(12)], delta=20.0, lr=1e-2)
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
    np.testing.assert_allclose(loaded.image_latents.latent, module.image_latents.latent)
    with pytest.raises(InputError, match="not a readable checkpoint"):
        (folder / "junk.ckpt").write_text("junk")
        load_alignment(folder / "junk.ckpt")


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
    assert done.stdout.count(" ok ") == 2, done.stdout  # both ranks finished (their lines may interleave)
