"""The synthetic world: both modalities follow the hidden programme, and the files say what they hold."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from wbcvae.data.synthetic import world as world_module
from wbcvae.data.synthetic.cells import REFERENCE_SIZE, draw_cell, patient_stain
from wbcvae.data.synthetic.programme import PROGRAMME, RNA_CLASSES, RNA_LINEAGES, sample_cells
from wbcvae.data.synthetic.transcriptome import KINETICS, MARKERS
from wbcvae.data.synthetic.world import MANIFEST_COLUMNS, rna_truth, write_world
from wbcvae.errors import InputError
from wbcvae.vocabulary import CLASSES, LINEAGES

CELLS_PER_CLASS = 3
CROP = 160


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "world"
    return write_world(
        out, cells_per_class=CELLS_PER_CLASS, rna_cells=1440, crop_size=CROP, n_genes=400, seed=7, progress=False
    )


def _tiny_world(out, seed=0, **kwargs):
    sizes = dict(cells_per_class=1, rna_cells=24, crop_size=64, n_genes=60)
    return write_world(out, seed=seed, progress=False, **sizes, **kwargs)


# --- The programme --------------------------------------------------------------------------------


def test_every_class_has_a_window_on_one_of_its_lineages():
    assert set(PROGRAMME) == set(CLASSES)
    for cls, windows in PROGRAMME.items():
        for w in windows:
            assert cls in LINEAGES[w.lineage].stages
            assert 0.0 <= w.start < w.end <= 1.0


def test_windows_follow_stage_order_and_cover_each_lineage():
    for lineage in LINEAGES.values():
        windows = [w for cls in lineage.stages for w in PROGRAMME[cls] if w.lineage == lineage.name]
        assert [w.start for w in windows] == sorted(w.start for w in windows)
        assert windows[0].start == 0.0 and windows[-1].end == 1.0
        assert all(a.end == b.start for a, b in zip(windows, windows[1:]))


def test_sampled_cells_lie_in_their_windows():
    cells = sample_cells(dict.fromkeys(CLASSES, 8), np.random.default_rng(0))
    assert cells["label"].value_counts().to_dict() == dict.fromkeys(CLASSES, 8)
    for row in cells.itertuples():
        assert any(w.lineage == row.lineage and w.start <= row.pseudotime <= w.end for w in PROGRAMME[row.label])
    blasts = cells[cells["label"] == "myeloblast"]
    assert set(blasts["lineage"]) == {"granulocytic", "monocytic"}


# --- Crops and masks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drawn():
    """Three cells per class at the study's crop size, middle of each class window."""
    rng = np.random.default_rng(3)
    stain = patient_stain(rng)
    cells = {}
    for cls in CLASSES:
        w = PROGRAMME[cls][0]
        t = (w.start + w.end) / 2
        cells[cls] = [draw_cell(cls, t, rng, REFERENCE_SIZE, stain) for _ in range(3)]
    return cells


def test_crops_are_rgb_with_label_masks(drawn):
    for cells in drawn.values():
        for cell in cells:
            assert cell.image.shape == (REFERENCE_SIZE, REFERENCE_SIZE, 3) and cell.image.dtype == np.uint8
            assert cell.mask.shape == (REFERENCE_SIZE, REFERENCE_SIZE)
            assert set(np.unique(cell.mask)) <= {0, 1, 2}
            assert (cell.mask == 2).any()


def test_mask_is_one_centred_cell_with_the_nucleus_inside(drawn):
    centre = REFERENCE_SIZE / 2
    for cls, cells in drawn.items():
        for cell in cells:
            inside = cell.mask > 0
            pieces, n = ndimage.label(inside)
            if cls == "smudge_cell":  # ragged: a main smear and a few shreds
                assert np.bincount(pieces.ravel())[1:].max() > 0.9 * inside.sum()
            else:
                assert n == 1, cls
            cy, cx = ndimage.center_of_mass(inside)
            assert abs(cy - centre) < 12 and abs(cx - centre) < 12, cls
            if cls == "smudge_cell":
                assert not (cell.mask == 1).any()  # a smudge has no cytoplasm
            else:  # the nucleus never touches the background
                assert not (ndimage.binary_dilation(cell.mask == 2) & (cell.mask == 0)).any(), cls


def test_mask_area_matches_the_drawn_cell_size(drawn):
    for cls, cells in drawn.items():
        if cls == "smudge_cell":
            continue
        for cell in cells:
            expected = np.pi * cell.morphology.cell_radius**2
            assert 0.85 < (cell.mask > 0).sum() / expected < 1.15, cls
    median_area = {cls: np.median([(c.mask > 0).sum() for c in cells]) for cls, cells in drawn.items()}
    assert median_area["lymphocyte_typical"] < median_area["neutrophil_segmented"] < median_area["monocyte"]
    assert median_area["lymphocyte_typical"] < median_area["lymphocyte_atypical"]


def test_nucleus_pixels_are_darker_and_more_purple_than_cytoplasm(drawn):
    def purple(pixels):  # MGG chromatin: red and blue kept, green absorbed
        return (pixels[:, 0] + pixels[:, 2]) / 2 - pixels[:, 1]

    for cls, cells in drawn.items():
        if cls in ("smudge_cell", "basophil"):  # no cytoplasm / granules as dark as the nucleus
            continue
        for cell in cells:
            rgb = cell.image.reshape(-1, 3).astype(float)
            nucleus, cytoplasm = rgb[cell.mask.ravel() == 2], rgb[cell.mask.ravel() == 1]
            assert nucleus.sum(1).mean() < cytoplasm.sum(1).mean() - 60, cls
            assert purple(nucleus).mean() > purple(cytoplasm).mean(), cls


def test_nucleus_shape_follows_granulocytic_maturation():
    """Blast: one round blob; band: one curved piece; segmented: lobes joined by thin threads."""
    rng = np.random.default_rng(5)

    def solidity(cls, t):
        nucleus = draw_cell(cls, t, rng).mask == 2
        hull_area = _convex_hull_area(nucleus)
        return nucleus.sum() / hull_area

    blast = np.mean([solidity("myeloblast", 0.07) for _ in range(3)])
    band = np.mean([solidity("neutrophil_banded", 0.75) for _ in range(3)])
    assert blast > 0.9 > band


def _convex_hull_area(region: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    return float(convex_hull_image(region).sum())


def test_same_seed_same_crop_other_seed_other_crop():
    a = draw_cell("monocyte", 0.5, np.random.default_rng(11))
    b = draw_cell("monocyte", 0.5, np.random.default_rng(11))
    c = draw_cell("monocyte", 0.5, np.random.default_rng(12))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


# --- The world on disk ----------------------------------------------------------------------------


def test_manifest_follows_the_contract(world):
    manifest = pd.read_csv(world / "manifest.csv")
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["label"].value_counts().to_dict() == dict.fromkeys(CLASSES, CELLS_PER_CLASS)
    for row in manifest.itertuples():
        assert row.path == f"images/{row.label}/{row.path.rsplit('/', 1)[1]}"
        image, mask = Image.open(world / row.path), np.asarray(Image.open(world / row.mask_path))
        assert image.mode == "RGB" and image.size == (CROP, CROP)
        assert mask.shape == (CROP, CROP) and set(np.unique(mask)) <= {0, 1, 2}
        assert any(w.lineage == row.lineage and w.start <= row.pseudotime <= w.end for w in PROGRAMME[row.label])
    assert manifest.groupby("label")["patient"].nunique().min() == CELLS_PER_CLASS  # patients spread in each class


def test_image_reader_reads_the_world(world):
    from wbcvae.data.images import read_manifest

    frame = read_manifest(world).frame
    assert len(frame) == len(CLASSES) * CELLS_PER_CLASS
    assert (frame["mask_path"] != "").all() and set(frame["label"]) == set(CLASSES)


def test_rna_follows_the_contract(world):
    adata = ad.read_h5ad(world / "rna.h5ad")
    counts = adata.X.toarray()
    assert np.issubdtype(counts.dtype, np.integer) and counts.min() >= 0
    assert {"cell_type", "label", "lineage", "pseudotime", "sample", "patient"} <= set(adata.obs.columns)
    assert set(adata.obs["cell_type"]) == set(RNA_CLASSES)  # every class but the smudge artefact
    assert (adata.obs["cell_type"] == adata.obs["label"]).all()
    for lineage in RNA_LINEAGES:
        assert set(adata.var[f"kinetic_{lineage}"]) <= set(KINETICS)
    assert list(adata.var_names[: len(MARKERS)]) == list(MARKERS)
    assert adata.var_names[len(MARKERS)] == "SYN0001"
    libraries = counts.sum(1)
    assert libraries.max() > 3 * libraries.min()  # library size varies
    assert 0.3 < (counts == 0).mean() < 0.9  # sparse, as droplet data


def test_ground_truth_agrees_with_the_data(world):
    truth = json.loads((world / "ground_truth.json").read_text())
    adata = ad.read_h5ad(world / "rna.h5ad")
    assert truth["seed"] == 7 and truth["parameters"]["n_genes"] == adata.n_vars
    assert truth["genes"]["names"] == list(adata.var_names)
    for lineage in RNA_LINEAGES:
        assert truth["genes"]["kinetics"][lineage]["kind"] == list(adata.var[f"kinetic_{lineage}"])
    assert set(truth["programme"]) == set(CLASSES)
    assert set(truth["patients"]) == set(pd.read_csv(world / "manifest.csv")["patient"]) == set(adata.obs["patient"])


def test_the_truth_behind_the_counts_is_regenerated_from_the_seed(world, tmp_path):
    adata = ad.read_h5ad(world / "rna.h5ad")
    truth = rna_truth(world)
    assert truth.genes == list(adata.var_names) and truth.mean.shape == adata.shape
    counts = adata.X.toarray()
    expected = (1 - truth.dropout) * truth.mean  # the zero-inflated NB's mean
    assert abs(counts.sum() / expected.sum() - 1) < 0.02
    assert np.corrcoef(np.log1p(counts.mean(0)), np.log1p(expected.mean(0)))[0, 1] > 0.99
    changed = _tiny_world(tmp_path / "changed")
    adata = ad.read_h5ad(changed / "rna.h5ad")
    adata.X = adata.X * 2
    adata.write_h5ad(changed / "rna.h5ad")
    with pytest.raises(InputError, match="changed: its RNA counts are not the ones this version draws"):
        rna_truth(changed)


def _log_normalised(adata):
    counts = adata.X.toarray().astype(float)
    return np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)


@pytest.mark.parametrize("lineage", ["granulocytic", "monocytic", "lymphoid"])
def test_kinetics_are_what_the_ground_truth_says(world, lineage):
    adata = ad.read_h5ad(world / "rna.h5ad")
    on = (adata.obs["lineage"] == lineage).to_numpy()
    t = adata.obs["pseudotime"].to_numpy()[on]
    expression = _log_normalised(adata)[on]
    expressed = expression.mean(0) > 0.05
    kind = adata.var[f"kinetic_{lineage}"].to_numpy()
    corr = np.array([np.corrcoef(t, g)[0, 1] if g.std() > 0 else 0.0 for g in expression.T])
    assert (corr[(kind == "up") & expressed] > 0).mean() > 0.9
    assert (corr[(kind == "down") & expressed] < 0).mean() > 0.9
    assert abs(np.median(corr[(kind == "flat") & expressed])) < 0.05
    early, middle, late = t < 0.2, (t > 0.35) & (t < 0.65), t > 0.8
    transient = (kind == "transient") & expressed
    peak = expression[middle][:, transient].mean(0)
    sides = np.maximum(expression[early][:, transient].mean(0), expression[late][:, transient].mean(0))
    assert (peak > sides).mean() > 0.75


def test_markers_behave_as_in_biology(world):
    adata = ad.read_h5ad(world / "rna.h5ad")
    expression = pd.DataFrame(_log_normalised(adata), columns=adata.var_names, index=adata.obs_names)
    obs = adata.obs

    def trend(gene, lineage):
        on = obs["lineage"] == lineage
        return np.corrcoef(obs.loc[on, "pseudotime"], expression.loc[on, gene])[0, 1]

    def peak_time(gene, lineage):
        on = obs["lineage"] == lineage
        bins = pd.cut(obs.loc[on, "pseudotime"], np.linspace(0, 1, 11))
        return expression.loc[on, gene].groupby(bins, observed=True).mean().idxmax().mid

    def by_lineage(gene):
        return expression[gene].groupby(obs["lineage"], observed=True).mean()

    def early_minus_late(gene, lineage):
        on, t = obs["lineage"] == lineage, obs["pseudotime"]
        return expression.loc[on & (t < 0.15), gene].mean() - expression.loc[on & (t > 0.6), gene].mean()

    assert early_minus_late("CD34", "granulocytic") > 1.5 and early_minus_late("CD34", "monocytic") > 1.5
    assert 0.15 < peak_time("MPO", "granulocytic") < 0.45 and 0.15 < peak_time("ELANE", "granulocytic") < 0.45
    assert peak_time("LTF", "granulocytic") > peak_time("MPO", "granulocytic")
    for gene in ("CSF3R", "FCGR3B", "CXCR2"):
        assert trend(gene, "granulocytic") > 0.5, gene
    for gene in ("LYZ", "S100A8", "CD14"):
        assert trend(gene, "monocytic") > 0.5, gene
    assert trend("HBB", "erythroid") > 0.5
    assert by_lineage("CD3E").idxmax() == "lymphoid" and by_lineage("CD79A").idxmax() == "lymphoid"
    assert by_lineage("CLC").idxmax() in ("eosinophilic", "basophilic")
    assert by_lineage("PRG2").idxmax() == "eosinophilic"


def test_same_seed_same_world(tmp_path):
    a, b, c = (_tiny_world(tmp_path / name, seed=s) for name, s in (("a", 1), ("b", 1), ("c", 2)))
    assert (a / "manifest.csv").read_bytes() == (b / "manifest.csv").read_bytes()
    for path in pd.read_csv(a / "manifest.csv")["path"]:
        assert (a / path).read_bytes() == (b / path).read_bytes()
    rna_a, rna_b, rna_c = (ad.read_h5ad(w / "rna.h5ad") for w in (a, b, c))
    assert (rna_a.X != rna_b.X).nnz == 0 and rna_a.obs.equals(rna_b.obs)
    assert (rna_a.X != rna_c.X).nnz > 0


def test_crash_mid_write_leaves_no_folder(tmp_path, monkeypatch):
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return draw_cell(*args, **kwargs)

    monkeypatch.setattr(world_module, "draw_cell", dies_on_third)
    with pytest.raises(RuntimeError):
        _tiny_world(tmp_path / "world")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_refused_unless_asked(tmp_path):
    out = _tiny_world(tmp_path / "world", seed=1)
    with pytest.raises(InputError, match="already exists"):
        _tiny_world(out, seed=2)
    assert json.loads((out / "ground_truth.json").read_text())["seed"] == 1
    _tiny_world(out, seed=2, overwrite=True)
    assert json.loads((out / "ground_truth.json").read_text())["seed"] == 2


def test_overwrite_never_replaces_a_folder_that_is_not_a_world(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    with pytest.raises(InputError, match="not a synthetic world"):
        _tiny_world(precious, overwrite=True)
    assert (precious / "chapter1.tex").read_text() == "years of work"


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(cells_per_class=0), "cells_per_class"),
        (dict(rna_cells=5), "rna_cells"),
        (dict(n_genes=10), "n_genes"),
        (dict(crop_size=16), "crop_size"),
    ],
)
def test_bad_parameters_are_named(tmp_path, bad, message):
    params = dict(cells_per_class=1, rna_cells=24, crop_size=64, n_genes=60, progress=False) | bad
    with pytest.raises(InputError, match=message):
        write_world(tmp_path / "world", **params)
    assert not (tmp_path / "world").exists()


# --- Montage --------------------------------------------------------------------------------------


def test_montage_without_real_crops(world, tmp_path):
    from wbcvae.data.montage import GAP, HEADER_HEIGHT, LABEL_WIDTH, montage

    out = montage(world, None, tmp_path / "montage.png", per_class=2, thumb=40)
    image = Image.open(out)
    assert image.size == (LABEL_WIDTH + 2 * 40, HEADER_HEIGHT + len(CLASSES) * 40)
    assert GAP > 0


def test_montage_with_real_crops_side_by_side(world, pbc_sample, tmp_path):
    from wbcvae.data.montage import EMPTY, GAP, HEADER_HEIGHT, LABEL_WIDTH, montage

    thumb = 40
    out = montage(world, pbc_sample, tmp_path / "montage.png", per_class=2, thumb=thumb)
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert sheet.shape == (HEADER_HEIGHT + len(CLASSES) * thumb, LABEL_WIDTH + 4 * thumb + GAP, 3)

    def real_tile(cls):
        top = HEADER_HEIGHT + CLASSES.index(cls) * thumb
        left = LABEL_WIDTH + 2 * thumb + GAP
        return sheet[top : top + thumb, left : left + thumb]

    below_caption = real_tile("smudge_cell")[-thumb // 4 :]  # the PBC sample has no smudge cells: a grey tile
    assert np.abs(below_caption - np.array(EMPTY)).max() <= 3
    assert real_tile("monocyte").std() > 10  # a real crop is there
