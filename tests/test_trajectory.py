"""Trajectories: the GP path and its anchors, decoding, k-Shape kinetics, ground-truth recovery, report."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from PIL import Image
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score
from torch import nn

import wbcvae.cli.main as cli_main
from wbcvae.errors import InputError
from wbcvae.report import Section, write_report
from wbcvae.trajectory import kinetics as kinetics_module
from wbcvae.trajectory.decode import CellCrops, as_decoder, decode_path, save_gif, save_image_strip
from wbcvae.trajectory.expression import CellExpression, local_standard_error
from wbcvae.trajectory.gp import CENTROID_NOISE, LatentPathGP, class_anchors
from wbcvae.trajectory.kinetics import TRANSIENT_RATIO, change_statistic, change_threshold_z, cluster_kinetics, znormalise
from wbcvae.trajectory.presets import PRESETS
from wbcvae.trajectory.pseudotime import data_anchors, path_cells
from wbcvae.trajectory.recovery import GroundTruth, pseudotime_spearman
from wbcvae.trajectory.run import TrajectorySettings, _genes_to_draw, chord_sentence, report_section, run_trajectory

DIM = 8
FAST = dict(fit_iters=30)


def clusters_along_a_curve(stages, per_class=30, noise=0.1, seed=0):
    """Cells of each stage around a point of a bent 1-D curve in DIM dimensions, with their pseudotime."""
    rng = np.random.default_rng(seed)
    t = np.concatenate([rng.uniform(i, i + 1, per_class) / len(stages) for i in range(len(stages))])
    classes = np.repeat(stages, per_class)
    latent = curve(t) + noise * rng.normal(size=(len(t), DIM))
    return latent.astype(np.float32), classes, t


def curve(t):
    t = np.asarray(t)[:, None]
    direction = np.linspace(1, 2, DIM)[None]
    return 3 * t * direction + np.sin(3 * t) * np.eye(DIM)[1][None]


# --- the GP path ------------------------------------------------------------------------------------


def test_gp_path_passes_through_its_centroid_anchors():
    stages = ("a", "b", "c", "d")
    latent, classes, _ = clusters_along_a_curve(stages)
    anchors = class_anchors(latent, classes, stages)
    centroids = np.stack([latent[classes == s].mean(0) for s in stages])
    np.testing.assert_allclose(anchors.t.numpy(), [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(anchors.z.numpy(), centroids, rtol=1e-5)
    gp = LatentPathGP(anchors, **FAST)
    mean, var = gp.predict(anchors.t)
    np.testing.assert_allclose(mean.numpy(), centroids, atol=0.02 * np.abs(centroids).max())
    assert var.max() < 1e-3
    path = gp.trajectory(steps=25, num_samples=3)
    assert path.mean.shape == (25, DIM) and path.variance.shape == (25, DIM) and path.samples.shape == (3, 25, DIM)
    # Samples are cells drawn along the path: the path plus the scatter of the first anchor's class.
    offsets = (path.samples[:, 0] - path.mean[0]).numpy()
    assert 0.5 < offsets.std() / anchors.scatter[0].mean().sqrt().item() < 2
    # The mean path follows the curve the classes lie on.
    assert np.abs(path.mean.numpy() - curve(np.linspace(1 / 8, 7 / 8, 25))).max() < np.abs(centroids).max()


def test_two_end_points_as_in_the_study_leave_the_middle_uncertain():
    latent, classes, _ = clusters_along_a_curve(("a", "b"))
    gp = LatentPathGP(class_anchors(latent, classes, ("a", "b")), **FAST)
    _, var = gp.predict(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert var[1].mean() > 1000 * max(var[0].mean(), var[2].mean())


def test_sampled_cell_anchors_learn_noise_and_pass_near_the_centroids():
    stages = ("a", "b", "c")
    latent, classes, _ = clusters_along_a_curve(stages, noise=0.3)
    anchors = class_anchors(latent, classes, stages, mode="cells", cells_per_stage=12)
    assert len(anchors.t) == 36 and anchors.stages[:12] == ["a"] * 12
    gp = LatentPathGP(anchors, **FAST)
    assert gp.likelihood.noise.item() > 10 * CENTROID_NOISE
    mean, _ = gp.predict(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    centroids = np.stack([latent[classes == s].mean(0) for s in stages])
    assert np.abs(mean.numpy() - centroids).max() < 0.5


def test_anchors_name_a_missing_class():
    latent, classes, _ = clusters_along_a_curve(("a", "b"))
    with pytest.raises(InputError, match="'promyelocyte'"):
        class_anchors(latent, classes, ("a", "promyelocyte"))
    with pytest.raises(InputError, match="anchor mode"):
        class_anchors(latent, classes, ("a", "b"), mode="median")


def cells_on_a_bend(n=300, seed=0):
    """Cells along a half circle (radius 3, in the first two of DIM dimensions): the first third
    labelled `a`, the rest `b`, as the synthetic monocytic lineage (myeloblast, then monocyte)."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 1, n))
    latent = np.zeros((n, DIM))
    latent[:, 0], latent[:, 1] = 3 * np.cos(np.pi * t), 3 * np.sin(np.pi * t)
    latent += 0.1 * rng.normal(size=latent.shape)
    return latent.astype(np.float32), np.where(t < 1 / 3, "a", "b"), t


def test_data_path_follows_a_bent_trajectory_that_the_chord_cuts_across():
    latent, classes, t = cells_on_a_bend()
    cells = path_cells(latent, classes, ("a", "b"))
    assert spearmanr(cells.dpt, t[cells.rows]).statistic > 0.98  # DPT rooted at the far end of `a`
    data = LatentPathGP(data_anchors(latent, classes, cells), **FAST).trajectory(steps=41, num_samples=0)
    chord = LatentPathGP(class_anchors(latent, classes, ("a", "b")), **FAST).trajectory(steps=41, num_samples=0)

    def distance_to_the_bend(points):  # nearest of 1,000 points of the noise-free half circle
        bend = np.stack([3 * np.cos(np.linspace(0, np.pi, 1000)), 3 * np.sin(np.linspace(0, np.pi, 1000))], 1)
        return np.linalg.norm(points[:, None, :2] - bend[None], axis=-1).min(1)

    assert distance_to_the_bend(data.mean.numpy()).max() < 0.3  # along the cells all the way
    assert distance_to_the_bend(chord.mean.numpy()[20:21]) > 1.0  # the chord's middle misses the bend
    # The data path spans the lineage; the chord only runs between the two classes' middles.
    assert spearmanr(np.arange(41), distance_to_the_bend(data.mean.numpy())).statistic < 0.5
    assert data.mean[0, 0] > 2.5 and data.mean[-1, 0] < -2.5


def test_a_dense_start_cloud_holds_two_waypoints_and_the_later_cells_the_rest():
    """A start class with most of the cells and no order inside (a round cloud, as the synthetic myeloblasts):
    at equal counts it would hold most of the waypoints; by the DPT it spans, two, and the eight others trace `b`."""
    rng = np.random.default_rng(0)
    cloud = rng.normal(scale=0.5, size=(600, DIM))
    t = np.sort(rng.uniform(0, 1, 300))
    line = np.zeros((300, DIM))
    line[:, 0] = 1.0 + 6.0 * t
    line += 0.1 * rng.normal(size=line.shape)
    latent, classes = np.vstack([cloud, line]).astype(np.float32), np.repeat(["a", "b"], [600, 300])

    capped, equal = path_cells(latent, classes, ("a", "b")), path_cells(latent, classes, ("a", "b"), start_waypoints="count")
    named = lambda cells: data_anchors(latent, classes, cells).stages  # noqa: E731
    assert named(capped) == ["a"] * 2 + ["b"] * 8 and named(equal).count("a") >= 6
    along_b = capped.centroids[2:, 0]
    assert np.all(np.diff(along_b) > 0) and np.ptp(along_b) > 4  # eight steps out along the line
    assert np.allclose(np.diff(along_b), np.diff(along_b).mean(), rtol=0.5)  # at about even spacing
    assert np.all(np.diff(capped.t[np.argsort(capped.dpt)]) >= 0)  # pseudotime still follows DPT


def test_a_start_class_that_matures_along_the_path_keeps_its_waypoints():
    """Evenly spread along the path (banded → segmented neutrophil), the start class spans the DPT its cells
    take, so it keeps about its equal-count share of the waypoints."""
    latent, classes, _ = cells_on_a_bend(n=400)
    classes = np.where(np.arange(400) < 200, "a", "b")
    cells = path_cells(latent, classes, ("a", "b"))
    assert data_anchors(latent, classes, cells).stages.count("a") in (4, 5)
    with pytest.raises(InputError, match="start_waypoints must be one of"):
        path_cells(latent, classes, ("a", "b"), start_waypoints="few")


def test_data_path_needs_its_end_classes_connected():
    latent, classes, _ = cells_on_a_bend()
    latent[classes == "b"] += 100.0  # two clouds, no cells in between
    with pytest.raises(InputError, match="does not reach 'b'"):
        path_cells(latent, classes, ("a", "b"))
    with pytest.raises(InputError, match="no cells of class 'c'"):
        path_cells(latent, classes, ("a", "c"))


# --- gene kinetics ----------------------------------------------------------------------------------


def known_curves(per_kind=25, steps=60, seed=0):
    """Curves of each kinetic with random timing and amplitude (plus a little noise); constant flats."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, steps)
    curves, truth = [], []
    for kind in ("up", "down", "transient", "flat"):
        for _ in range(per_kind):
            centre, amplitude = rng.uniform(0.3, 0.7), rng.uniform(0.3, 1.0)
            shape = {
                "up": 1 / (1 + np.exp(-(t - centre) * 15)),
                "down": 1 / (1 + np.exp((t - centre) * 15)),
                "transient": np.exp(-((t - centre) ** 2) / 0.02),
                "flat": np.zeros_like(t),
            }[kind]
            curves.append(0.2 + amplitude * shape + rng.normal(0, 0.003, steps))
            truth.append(kind)
    curves[-1] = np.full(steps, 0.5)  # exactly constant: its z-normalisation would be 0/0
    return np.array(curves).T, np.array(truth), t


def test_kshape_names_recover_known_up_down_transient_flat_curves():
    expression, truth, t = known_curves()
    genes = [f"g{i}" for i in range(len(truth))]
    result = cluster_kinetics(expression, genes, t, spread=np.full(expression.shape, 0.01))
    table = result.table.set_index("gene").loc[genes]
    assert np.isfinite(result.curves.to_numpy()).all()
    assert (table["shape"].to_numpy() == truth).mean() == 1.0
    assert adjusted_rand_score(truth, table["cluster"]) > 0.8
    # Ranked by change within each cluster, rank 1 the largest.
    for _, members in result.table[result.table.cluster >= 0].groupby("cluster"):
        assert members.sort_values("rank")["change"].is_monotonic_decreasing


@pytest.mark.parametrize("n_shapes", [3, 5])
def test_the_number_of_clusters_is_the_number_of_shapes(n_shapes):
    """Curves of n distinct shapes (up, down, a bump, a dip, two bumps) with a little noise: the
    silhouette picks k = n among 3 … 6."""
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 50)
    shapes = [
        1 / (1 + np.exp(-(t - 0.5) * 20)),
        1 / (1 + np.exp((t - 0.5) * 20)),
        np.exp(-((t - 0.5) ** 2) / 0.01),
        -np.exp(-((t - 0.5) ** 2) / 0.01),
        np.exp(-((t - 0.25) ** 2) / 0.004) + np.exp(-((t - 0.75) ** 2) / 0.004),
    ][:n_shapes]
    curves = np.array([shape * rng.uniform(0.5, 1.5) + rng.normal(0, 0.02, len(t)) for shape in shapes for _ in range(12)]).T
    result = cluster_kinetics(curves, [f"g{i}" for i in range(curves.shape[1])], t, k_range=(3, 6))
    assert result.k_used == n_shapes and max(result.silhouettes, key=result.silhouettes.get) == n_shapes
    assert adjusted_rand_score(np.repeat(np.arange(n_shapes), 12), result.table.set_index("gene").loc[[f"g{i}" for i in range(curves.shape[1])], "cluster"]) == 1.0


def test_a_gene_is_changed_when_its_change_exceeds_the_spread_of_cells_along_the_path():
    t = np.linspace(0, 1, 100)
    rising = 1 / (1 + np.exp(-(t - 0.5) * 15))
    # Same decoded curves, two spreads: a rise of 0.3 against a per-step sd of 0.02 and of 0.2.
    curves = np.stack([0.3 * rising, 0.3 * rising, 0.015 * rising, np.zeros_like(t)], axis=1)
    spread = np.stack([np.full_like(t, 0.02), np.full_like(t, 0.2), np.full_like(t, 0.002), np.full_like(t, 0.02)], axis=1)
    change, change_z = change_statistic(curves, spread)
    # With an even spread the largest standardised difference is the range over √2 sd.
    np.testing.assert_allclose(change_z, change / np.hypot(spread[0], spread[0]))
    result = cluster_kinetics(curves, ["clear", "noisy", "small", "constant"], t, spread=spread)
    shapes = result.table.set_index("gene")["gene_shape"]
    assert shapes.to_dict() == {"clear": "up", "noisy": "flat", "small": "up", "constant": "flat"}
    # The bar: 5 % family-wise over the 4,950 pairs of 100 steps, about 4.4 sd of a difference.
    assert change_threshold_z(100) == pytest.approx(4.41, abs=0.01) and change_threshold_z(10) < change_threshold_z(100)


def test_the_gene_table_says_how_near_each_call_is_to_the_transient_threshold():
    """`bump_share`: the bump beyond both ends over the net change, the number `shape_of` compares with 0.5."""
    t = np.linspace(0, 1, 100)
    rise_and_fall = np.interp(t, [0, 0.3, 1], [0.0, 0.4, -1.0])  # clears its higher end, 0, by 0.4 and ends 1 lower
    curves = np.stack([rise_and_fall, np.interp(t, [0, 0.3, 1], [0.0, 0.6, -1.0]), t, np.exp(-(((t - 0.5) / 0.1) ** 2))], axis=1)
    table = cluster_kinetics(curves, ["small bump", "large bump", "rise", "peak"], t).table.set_index("gene")
    start, end = rise_and_fall[:5].mean(), rise_and_fall[-5:].mean()
    assert table.at["small bump", "bump_share"] == pytest.approx((rise_and_fall.max() - start) / (start - end))
    assert table.at["small bump", "bump_share"] < TRANSIENT_RATIO < table.at["large bump", "bump_share"]
    assert table.loc[["small bump", "large bump", "rise"], "gene_shape"].tolist() == ["down", "transient", "up"]
    assert table.at["rise", "bump_share"] < 0.05 and table.at["peak", "bump_share"] > 100  # the rise: only its ends averaged


def test_a_peak_where_cells_scatter_is_held_against_its_quiet_flanks():
    """A granule protein's peak among heterogeneous progenitors: wide spread at the top, narrow on the
    flanks. The range against the spread at its top and bottom (3.2 sd) would call it flat; the rising
    flank, where the cells agree, shows the change (a pair of steps well beyond 4.4 sd)."""
    t = np.linspace(0, 1, 100)
    peak = 1.8 * np.exp(-((t - 0.65) ** 2) / 0.01)
    spread = 0.05 + 0.55 * (peak / peak.max()) ** 4  # the scatter widens near the top only
    change, change_z = change_statistic(peak[:, None], spread[:, None])
    assert change[0] / np.hypot(spread.max(), spread.min()) < change_threshold_z(100) < change_z[0]
    assert cluster_kinetics(np.stack([peak, peak], axis=1), ["AZU1", "copy"], t, spread=np.stack([spread, spread], axis=1)).table["gene_shape"].eq("transient").all()
    # Without a spread a curve is changed when it moves at all.
    assert change_statistic(np.stack([peak, np.ones_like(t)], axis=1), None)[1].tolist() == [np.inf, 0.0]


def test_kshape_pitfalls_constant_curves_duplicates_and_empty_clusters(monkeypatch):
    t = np.linspace(0, 1, 40)
    constant = cluster_kinetics(np.ones((40, 5)), list("abcde"), t)
    assert set(constant.table["shape"]) == {"flat"} and constant.k_used == 0
    assert np.array_equal(znormalise(np.ones((2, 5))), np.zeros((2, 5)))
    # Three distinct curves repeated: k up to 6 asks for more clusters than there are shapes.
    base = np.stack([t, 1 - t, np.exp(-((t - 0.5) ** 2) / 0.02)], axis=1)
    repeated = cluster_kinetics(np.repeat(base, 4, axis=1), [f"g{i}" for i in range(12)], t, k_range=(3, 6))
    assert repeated.k_used <= 3
    assert sorted(repeated.table["cluster"].unique()) == list(range(repeated.k_used))
    # Every initialisation leaves a cluster empty for k > 2: tslearn would keep stale labels; we ask for fewer.
    original = kinetics_module._VectorisedKShape._fit_one_init

    def failing(self, X, rs):
        if self.n_clusters > 2:  # as tslearn does: centres drawn, then a cluster found empty
            from tslearn.clustering.utils import EmptyClusterError

            self.cluster_centers_ = X[: self.n_clusters].copy()
            raise EmptyClusterError
        return original(self, X, rs)

    monkeypatch.setattr(kinetics_module._VectorisedKShape, "_fit_one_init", failing)
    expression, truth, _ = known_curves(per_kind=6)
    fallback = cluster_kinetics(expression, [f"g{i}" for i in range(len(truth))], k_range=(3, 4))
    assert fallback.k_used == 2 and fallback.table["cluster"].max() == 1


@pytest.mark.slow
def test_vectorised_kshape_matches_tslearn():
    """Same labels, centroids and inertia as tslearn's own KShape (which compiles numba: slow)."""
    from tslearn.clustering import KShape

    expression, _, _ = known_curves(per_kind=10, steps=30)
    z = znormalise(expression.T[:-10])[:, :, None]  # the moving genes
    ours = kinetics_module._VectorisedKShape(n_clusters=3, n_init=2, random_state=0).fit(z)
    theirs = KShape(n_clusters=3, n_init=2, random_state=0).fit(z)
    assert np.array_equal(ours.labels_, theirs.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, theirs.cluster_centers_, atol=1e-8)
    assert ours.inertia_ == pytest.approx(theirs.inertia_)


# --- decoding ---------------------------------------------------------------------------------------


class StandInImageVAE(nn.Module):
    """z → (ĥ, image 3×16×16), like `ImageVAE.decode`; has dropout so eval mode matters."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(nn.Dropout(0.5), nn.Linear(DIM, 3 * 16 * 16))

    def decode(self, z):
        return z, torch.sigmoid(self.layer(z)).view(-1, 3, 16, 16)


def planted_gene_decoder(kinds):
    """Genes as known functions of the position along `curve`: the ground truth of each gene's kinetic."""
    direction = torch.tensor(np.linspace(1, 2, DIM), dtype=torch.float32)
    centres = torch.linspace(0.35, 0.65, len(kinds))

    def decode(z):
        s = (z @ direction / (3 * direction @ direction)).clamp(0, 1)[:, None]  # ≈ pseudotime
        shapes = {
            "up": torch.sigmoid((s - centres) * 15),
            "down": torch.sigmoid(-(s - centres) * 15),
            "transient": torch.exp(-((s - centres) ** 2) / 0.02),
            "flat": torch.zeros_like(s - centres),
        }
        return torch.stack([shapes[k][:, i] for i, k in enumerate(kinds)], dim=1) + 0.1

    return decode


def test_decoding_writes_strip_gif_and_matrix_of_the_right_shapes(tmp_path):
    latent, classes, _ = clusters_along_a_curve(("a", "b"))
    path = LatentPathGP(class_anchors(latent, classes, ("a", "b")), **FAST).trajectory(steps=12, num_samples=3, name="toy")
    vae = StandInImageVAE().train()
    kinds = ["up", "down", "transient", "flat", "up"]
    decoded = decode_path(path, as_decoder(vae), planted_gene_decoder(kinds), [f"G{i}" for i in range(5)], strip_frames=6)
    assert vae.training  # back to how it was
    assert decoded.strip_steps.tolist() == [0, 2, 4, 7, 9, 11]  # first and last step always shown
    assert decoded.images.shape == (12, 3, 16, 16) and decoded.image_std.shape == (6, 16, 16)
    assert decoded.genes.shape == (12, 5) and decoded.gene_std.shape == (12, 5)
    assert decoded.gene_frame().shape == (12, 5) and decoded.gene_frame().index[-1] == 1.0
    # The shaded band holds the samples' central 95 %: never outside what the decoder gives (≥ 0.1 here, where
    # mean − 2 sd may fall), of no width where the gene is flat.
    low, high = decoded.gene_band
    assert decoded.gene_band.shape == (2, 12, 5) and (low >= 0.1 - 1e-6).all() and (low <= high).all()
    assert (high - low)[:, 3].max() < 1e-6 and (high - low)[:, [0, 1, 2, 4]].max() > 0
    # Decoding is deterministic (dropout off): decoding the mean path twice gives the same images.
    again = decode_path(path, as_decoder(vae), planted_gene_decoder(kinds), [f"G{i}" for i in range(5)])
    torch.testing.assert_close(again.images, decoded.images)
    strip = Image.open(save_image_strip(decoded, tmp_path / "strip.png"))
    gif = Image.open(save_gif(decoded, tmp_path / "path.gif"))
    assert strip.width > strip.height and gif.n_frames == 12 and gif.size == (16, 16)
    with pytest.raises(ValueError, match="5 genes but 4 gene names"):
        decode_path(path, as_decoder(vae), planted_gene_decoder(kinds), ["a", "b", "c", "d"])


def grey_crops(n_cells: int) -> Callable:
    """Crops whose grey level names their cell: cell i is i / n_cells everywhere."""
    return lambda rows: torch.as_tensor(rows / n_cells, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 16, 16)


def test_the_strip_shows_the_real_cell_nearest_each_frame(tmp_path):
    latent, classes, _ = clusters_along_a_curve(("a", "b"))
    crops = CellCrops(latent, np.asarray(classes), grey_crops(len(latent)))
    images, names = crops.nearest(latent[[5, 40]] + 1e-4)
    assert images[:, 0, 0, 0].tolist() == pytest.approx([5 / len(latent), 40 / len(latent)])
    assert names == [classes[5], classes[40]] == ["a", "b"]
    path = LatentPathGP(class_anchors(latent, classes, ("a", "b")), **FAST).trajectory(steps=12, num_samples=3, name="toy")
    decoded = decode_path(path, as_decoder(StandInImageVAE()), planted_gene_decoder(["up"]), ["G0"], strip_frames=6)
    nearest = crops.nearest(path.mean[decoded.strip_steps].numpy())
    with_cells = Image.open(save_image_strip(decoded, tmp_path / "with.png", nearest))
    without = Image.open(save_image_strip(decoded, tmp_path / "without.png"))
    assert with_cells.width == without.width and with_cells.height > 1.3 * without.height  # a third row


# --- recovery, end to end, report ------------------------------------------------------------------


def test_pseudotime_spearman_reads_the_order_of_the_path():
    latent, classes, t = clusters_along_a_curve(("a", "b", "c"))
    forward = curve(np.linspace(0, 1, 20))
    assert pseudotime_spearman(forward, latent, t) > 0.95
    assert pseudotime_spearman(forward[::-1], latent, t) < -0.95


def test_run_trajectory_recovers_a_planted_programme(tmp_path):
    preset = PRESETS["granulopoiesis"]
    latent, classes, t = clusters_along_a_curve(preset.series, per_class=20, noise=0.05)
    kinds = ["up", "down", "transient", "flat"] * 8
    genes = ["CXCR2", "CD34", "MPO"] + [f"G{i:02d}" for i in range(3, len(kinds))]  # three of the preset's markers, their shapes planted
    truth = GroundTruth(latent, np.full(len(t), "granulocytic"), t, pd.DataFrame({"kinetic_granulocytic": kinds}, index=genes))
    settings = TrajectorySettings(steps=40, samples=3, k_range=(3, 4), **FAST)
    crops = CellCrops(latent, np.asarray(classes), grey_crops(len(latent)))
    result = run_trajectory(
        preset, latent, classes, as_decoder(StandInImageVAE()), planted_gene_decoder(kinds), genes, tmp_path, settings, truth, crops=crops
    )
    m = result.metrics
    assert result.trajectory.anchors.mode == "quantiles" and m["anchors"] == 10
    assert m["pseudotime_spearman"] > 0.95
    assert m["ari_shapes"] > 0.9 and m["shape_accuracy"] > 0.95 and m["genes_compared"] == len(genes)
    assert (m["genes_up"], m["genes_down"], m["genes_transient"], m["genes_flat"]) == (8, 8, 8, 8)
    assert m["transient_recall"] == 1.0 and "chord_ari_shapes" in m and m["chord_anchors"] == 2
    folder = tmp_path / "granulopoiesis"
    for name in ("strip.png", "path.gif", "heatmap.png", "markers.png", "paths.png", "genes.csv", "path.csv", "kinetics.csv", "clusters.csv"):
        assert (folder / name).is_file(), name
    assert pd.read_csv(folder / "genes.csv").shape == (40, len(genes) + 1)
    # Each cluster is named by the commonest shape of its genes' own curves, and k by the best silhouette.
    clusters = pd.read_csv(folder / "clusters.csv").set_index("cluster").drop(index=-1)
    own = clusters[["own_up", "own_down", "own_transient"]]
    assert (own.idxmax(axis=1).str.removeprefix("own_") == clusters["shape"]).all() and own.sum().sum() == 24
    assert m[f"silhouette_k{m['k_used']}"] == max(m[f"silhouette_k{k}"] for k in (3, 4))
    # The real cells nearest the strip's frames run through the lineage in its order, from its first stage to its last.
    stages = [preset.series.index(c) for c in pd.read_csv(folder / "strip_cells.csv")["nearest_cell"]]
    assert stages[0] == 0 and stages[-1] == len(preset.series) - 1 and stages == sorted(stages)
    assert "real image cell nearest the path" in report_section(result).text
    # The known markers, read along the data path and along the chord beside it.
    assert (m["markers_agree"], m["markers_compared"]) == (3, 3) and 0 <= m["chord_markers_agree"] <= 3
    assert f"known markers as expected: {m['chord_markers_agree']} of 3 (data path: 3)" in report_section(result).text
    chord_markers = result.tables["chord_markers"]
    assert list(chord_markers["gene"]) == ["CD34", "MPO", "CXCR2"] and chord_markers["agrees"].sum() == m["chord_markers_agree"]
    # markers.png: a panel per expected shape, in the order a lineage's programmes run; without markers, the clusters' top genes.
    drawn = _genes_to_draw(result.tables["markers"], result.kinetics)
    assert drawn == {"expected down": ["CD34"], "expected transient": ["MPO"], "expected up": ["CXCR2"], "expected flat": []}
    assert Image.open(folder / "markers.png").width > 2.5 * Image.open(folder / "markers.png").height  # three panels side by side
    by_cluster = _genes_to_draw(result.tables["markers"].iloc[:0], result.kinetics)
    changed = result.kinetics.table.query("cluster >= 0")
    assert {g for genes in by_cluster.values() for g in genes} == set(changed.loc[changed["rank"] <= 3, "gene"])
    # The neutrophil stretch of the lineage is not scored against whole-lineage kinetics.
    settings.compare_chord, settings.min_lengthscale = False, 0.5
    stretch = run_trajectory("neutrophil_maturation", latent, classes, None, planted_gene_decoder(kinds), genes, tmp_path, settings, truth)
    assert "pseudotime_spearman" in stretch.metrics and "ari_shapes" not in stretch.metrics
    assert stretch.metrics["lengthscale"] >= 0.5  # the setting bounds the GP


def test_chord_sentence_names_the_markers_the_chord_misses():
    m = {"chord_genes_up": 1, "chord_genes_down": 1, "chord_genes_transient": 0, "chord_genes_flat": 2, "chord_k_used": 3}
    m |= {"chord_markers_agree": 1, "markers_compared": 2, "markers_agree": 2}
    markers = pd.DataFrame({"gene": ["CD34", "MPO"], "expected": ["down", "transient"], "curve": ["down", "flat"], "agrees": [True, False]})
    assert chord_sentence(m, markers).endswith("known markers as expected: 1 of 2 (data path: 2), the chord's misses: MPO flat (expected transient).")
    assert chord_sentence(m).endswith("known markers as expected: 1 of 2 (data path: 2).")


def test_a_wiggle_the_cells_cannot_show_is_flat_and_real_changes_stay(tmp_path):
    """The decoder draws a small wiggle into a gene whose cells are flat noise: with the cells'
    standard error as yardstick it is flat; without, the decoded samples alone call it changed."""
    preset = PRESETS["granulopoiesis"]
    latent, classes, _ = clusters_along_a_curve(preset.series, per_class=20, noise=0.05)
    kinds = ["up", "down", "transient", "flat"]
    planted = planted_gene_decoder(kinds)

    def wiggling(z):
        out = planted(z)
        out[:, 3] += 0.1 * torch.sin(z[:, 0] * 2.0)
        return out

    noise = np.random.default_rng(1).normal(0, 0.2, (len(latent), len(kinds)))
    expression = counts_that_log_normalise_to(planted(torch.as_tensor(latent)).numpy() + noise, kinds)
    settings = TrajectorySettings(steps=40, samples=3, k_range=(3, 3), compare_chord=False, **FAST)
    alone = run_trajectory(preset, latent, classes, None, wiggling, kinds, tmp_path / "alone", settings)
    beside = run_trajectory(preset, latent, classes, None, wiggling, kinds, tmp_path / "beside", settings, expression=expression)
    assert alone.kinetics.table.set_index("gene").at["flat", "shape"] != "flat"
    assert list(beside.kinetics.table.set_index("gene").loc[kinds, "gene_shape"]) == kinds


def test_local_standard_error_is_the_sd_of_the_nearest_cells_over_root_k():
    latent = np.array([[0.0], [0.1], [0.2], [5.0], [5.1]])
    values = np.array([[1.0], [2.0], [3.0], [7.0], [9.0]])
    expression = counts_that_log_normalise_to(values, ["G"]).padded(6)  # a sixth row without RNA
    latent = np.vstack([latent, [[0.05]]])
    se = local_standard_error(np.array([[0.1], [5.05]]), latent, expression, ["G", "absent"], neighbours=2)
    assert se.shape == (2, 2) and se[1, 0] == pytest.approx(np.std([7.0, 9.0], ddof=1) / np.sqrt(2), rel=1e-4)
    assert se[0, 0] == pytest.approx(np.std([2.0, 1.0], ddof=1) / np.sqrt(2), rel=1e-4) or se[0, 0] == pytest.approx(
        np.std([2.0, 3.0], ddof=1) / np.sqrt(2), rel=1e-4
    )
    assert se[:, 1].tolist() == [0.0, 0.0]  # a gene the cells lack gives no yardstick


def counts_that_log_normalise_to(values: np.ndarray, genes: list[str]) -> CellExpression:
    """Cells whose log1p counts per 10,000 are `values` shifted to be positive (trends' shapes and
    correlations do not see the shift)."""
    shifted = values - values.min() + 0.1
    return CellExpression(sp.csr_matrix(np.expm1(shifted)), np.full(len(values), 1e4), genes)


def test_rna_only_path_decodes_genes_and_reads_the_known_markers_beside_their_dpt_trend(tmp_path):
    preset = PRESETS["monocytopoiesis"]
    latent, classes, t = clusters_along_a_curve(preset.series, per_class=20, noise=0.05)
    kinds = ["down", "up", "transient", "up", "flat", "down"]
    genes = ["CD34", "LYZ", "S100A8", "G3", "G4", "G5"]  # S100A8 planted transient: it must disagree
    decoder = planted_gene_decoder(kinds)
    # The real cells' expression: the planted genes at each cell's latent, CD34 reversed (anti-correlated).
    planted = decoder(torch.as_tensor(latent)).numpy()[:, :3]
    planted[:, 0] = -planted[:, 0]
    expression = counts_that_log_normalise_to(planted, genes[:3])
    settings = TrajectorySettings(path="chord", waypoints=True, steps=20, samples=2, k_range=(3, 3), **FAST)
    chord = run_trajectory(preset, latent, classes, None, decoder, genes, tmp_path / "chord", settings, expression=expression)
    assert "markers_dpt" not in chord.files  # the chord has no DPT to read trends along
    result = run_trajectory(preset, latent, classes, None, decoder, genes, tmp_path, TrajectorySettings(steps=20, samples=2, k_range=(3, 3), **FAST), expression=expression)
    assert result.decoded.images is None and result.decoded.image_std is None and result.decoded.gene_std.shape == (20, 6)
    assert {"strip", "gif"}.isdisjoint(result.files) and (tmp_path / "monocytopoiesis" / "markers_dpt.png").is_file()
    assert not (tmp_path / "monocytopoiesis" / "strip.png").exists()
    markers = result.tables["markers"].set_index("gene")
    assert list(markers["curve"]) == ["down", "up", "transient"] and list(markers["agrees"]) == [True, True, False]
    assert markers.at["LYZ", "dpt_correlation"] > 0.9 and markers.at["CD34", "dpt_correlation"] < -0.9
    # The cells' own trend: S100A8 misses its textbook shape but moves as the cells do; CD34 the reverse.
    assert list(markers["dpt_shape"]) == ["up", "up", "transient"] and result.metrics["markers_as_dpt"] == 2
    section = report_section(result)
    assert [Path(f).name for f in section.figures] == ["paths.png", "heatmap.png", "markers.png", "markers_dpt.png"]
    assert "strip" not in section.text and "diffusion-pseudotime quantiles" in section.text
    assert "CD34 down, LYZ up, S100A8 transient (expected up); 2 of 3 agree" in section.text
    assert "2 of 3 with the shape of the real cells' DPT trend" in section.text


def test_report_folder_has_index_tables_and_json_and_appears_whole(tmp_path):
    figure = tmp_path / "fig.png"
    Image.new("RGB", (4, 4)).save(figure)
    table = pd.DataFrame({"gene": ["A", "B"], "change": [0.5, np.nan]})
    metrics = {"alignment": {"accuracy": np.float32(0.75), "ratio": float("nan")}, "k": np.int64(4)}
    index = write_report(tmp_path / "report", [Section("Trajectory: toy", "first.\n\nsecond.", [figure], {"kinetics": table})], metrics)
    html = index.read_text()
    assert index == tmp_path / "report" / "index.html"
    assert "Trajectory: toy" in html and 'src="figures/01-trajectory-toy-fig.png"' in html and "<p>second.</p>" in html
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == {"alignment": {"accuracy": 0.75, "ratio": None}, "k": 4}
    assert pd.read_csv(tmp_path / "report" / "tables" / "01-trajectory-toy-kinetics.csv").shape == (2, 2)
    with pytest.raises(AttributeError):  # a crash half-way through writing (a table that is not one)
        write_report(tmp_path / "broken", [Section("x", figures=[figure], tables={"t": None})], {})
    assert not (tmp_path / "broken").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["fig.png", "report"]


# --- from a trained joint model: callback and CLI ---------------------------------------------------


def test_callback_at_fit_end_then_cli_from_the_checkpoint(tmp_path, capsys, monkeypatch):
    from test_alignment import LATENT, tiny_image_data, tiny_plans, tiny_rna_cells
    from torch.utils.data import DataLoader

    from wbcvae.alignment.module import JointAlignmentModule
    from wbcvae.trajectory.callback import TrajectoryCallback

    assert LATENT < DIM  # stand-ins above are unrelated to the tiny joint model
    image, rna = tiny_plans()
    module = JointAlignmentModule(image, rna, tiny_rna_cells(), gene_names=[f"G{i}" for i in range(12)])
    # Two clouds without cells in between: no data path, the chord (with a warning).
    callback = TrajectoryCallback(("monocytopoiesis",), TrajectorySettings(steps=10, samples=2, k_range=(3, 3), **FAST))
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[callback], enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    data = tiny_image_data(n=16)
    trainer.fit(module, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    run_dir = tmp_path / "run" / "version_0"
    assert (run_dir / "trajectories" / "monocytopoiesis" / "strip.png").is_file()
    assert "trajectory/monocytopoiesis/lengthscale" in pd.read_csv(run_dir / "metrics.csv").columns
    ckpt = run_dir / "joint.ckpt"
    trainer.save_checkpoint(ckpt)

    monkeypatch.setattr(cli_main, "COMMANDS", ("trajectory",))
    out = tmp_path / "cli"
    args = ["trajectory", "--ckpt", str(ckpt), "--preset", "neutrophil_maturation", "--out", str(out), "--steps", "10", "--samples", "2", "--k-range", "3", "3", "--path", "chord"]
    assert cli_main.main(args) == 0
    assert (out / "neutrophil_maturation" / "kinetics.csv").is_file() and (out / "report" / "index.html").is_file()
    assert "report:" in capsys.readouterr().out
    # The RNA cells the model was aligned on, as the yardstick of flat vs changed; a source of other cells is refused.
    import anndata as ad

    def rna_source(n_cells):
        counts = np.random.default_rng(0).poisson(3.0, (n_cells, 12)).astype(np.float32)
        path = tmp_path / f"rna{n_cells}.h5ad"
        obs = pd.DataFrame({"cell_type": ["Mono"] * n_cells}, index=[f"c{i}" for i in range(n_cells)])
        ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(12)])).write_h5ad(path)
        return str(path)

    assert cli_main.main([*args, "--rna", rna_source(len(module.rna_latent))]) == 0
    capsys.readouterr()
    assert cli_main.main([*args, "--rna", rna_source(5)]) == 2
    assert "5 cells, but the model was aligned on 153 RNA cells" in capsys.readouterr().err
    # Granulopoiesis with waypoints needs promyelocytes, which this model never saw: one clear line, exit 2.
    assert cli_main.main(["trajectory", "--ckpt", str(ckpt), "--preset", "granulopoiesis", "--path", "chord", "--waypoints", "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err


def test_trajectory_cli_offers_the_settings_choices_and_defaults():
    """`wbcvae trajectory` spells its choices and defaults out (importing the settings' constants would pull torch,
    GPyTorch and tslearn into every `wbcvae` start); they must stay those of `TrajectorySettings`."""
    import argparse

    from wbcvae.cli import trajectory as trajectory_cli
    from wbcvae.trajectory.gp import ANCHOR_MODES
    from wbcvae.trajectory.kinetics import K_RANGE
    from wbcvae.trajectory.pseudotime import START_WAYPOINTS
    from wbcvae.trajectory.run import PATHS

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    trajectory_cli.register(commands)
    options = {action.dest: action for action in commands.choices["trajectory"]._actions}
    assert tuple(options["path"].choices) == PATHS and tuple(options["start_waypoints"].choices) == START_WAYPOINTS
    assert tuple(options["anchor_mode"].choices) == ANCHOR_MODES
    args = parser.parse_args(["trajectory", "--ckpt", "x.ckpt"])
    shared = ("path", "start_waypoints", "waypoints", "anchor_mode", "steps", "samples", "min_lengthscale", "seed")
    assert {name: getattr(args, name) for name in shared} == {name: getattr(TrajectorySettings(), name) for name in shared}
    assert f"default: {K_RANGE[0]} {K_RANGE[1]}" in options["k_range"].help
