"""Write the synthetic world to disk: image crops + masks, RNA counts and the ground truth behind both.

The layout is the contract in docs/architecture.md ("Synthetic world on disk"). The folder appears
whole or not at all (`atomic_path`), and the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from wbcvae.data.synthetic.cells import draw_cell, patient_stain
from wbcvae.data.synthetic.programme import RNA_CLASSES, RNA_LINEAGES, programme_as_dict, sample_cells
from wbcvae.data.synthetic.transcriptome import (
    MARKERS,
    GeneProgramme,
    cell_log_means,
    dropout_probability,
    draw_counts,
    make_gene_programme,
)
from wbcvae.errors import InputError
from wbcvae.utils.atomic import atomic_path, write_h5ad
from wbcvae.vocabulary import CLASSES

if TYPE_CHECKING:
    import anndata as ad

MANIFEST_COLUMNS = ("path", "label", "patient", "mask_path", "lineage", "pseudotime")
# Independent random streams, so that e.g. more RNA cells leave the images unchanged.
_STREAM = {"patients": 0, "image_cells": 1, "crops": 2, "rna_cells": 3, "genes": 4, "counts": 5}


def _rng(seed: int, stream: str, *more: int) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAM[stream], *more])


def write_world(
    out: str | os.PathLike,
    cells_per_class: int = 24,
    rna_cells: int = 1500,
    crop_size: int = 288,
    n_genes: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
    n_patients: int = 4,
    progress: bool = True,
) -> Path:
    """Write a synthetic world to `out` and return its path.

    `cells_per_class` crops for each of the 13 classes; `rna_cells` transcriptomes spread evenly over
    the 12 classes that have one (not the smudge cell, an artefact); `n_patients` synthetic patients,
    each with its own stain, shared by both modalities so patient-grouped splits are meaningful.
    `overwrite` replaces an existing world (never any other folder).
    """
    out = Path(out)
    _check(out, cells_per_class, rna_cells, crop_size, n_genes, n_patients, overwrite)
    patients, stains, patient_rna = _patients(seed, n_patients, n_genes)

    rng = _rng(seed, "image_cells")
    crops = _with_patients(sample_cells(dict.fromkeys(CLASSES, cells_per_class), rng), patients, rng)
    crops["id"] = crops["label"] + "_" + (crops.groupby("label").cumcount() + 1).map("{:04d}".format)

    with atomic_path(out) as tmp:
        for cls in CLASSES:
            (tmp / "images" / cls).mkdir(parents=True)
        (tmp / "masks").mkdir()
        rows = tqdm(crops.itertuples(), total=len(crops), desc="synthetic crops", disable=not progress)
        for i, row in enumerate(rows):
            drawn = draw_cell(row.label, row.pseudotime, _rng(seed, "crops", i), crop_size, stains[row.patient])
            Image.fromarray(drawn.image).save(tmp / "images" / row.label / f"{row.id}.png", compress_level=1)
            Image.fromarray(drawn.mask).save(tmp / "masks" / f"{row.id}.png")
        manifest = crops.assign(
            path="images/" + crops["label"] + "/" + crops["id"] + ".png", mask_path="masks/" + crops["id"] + ".png"
        )
        manifest[list(MANIFEST_COLUMNS)].to_csv(tmp / "manifest.csv", index=False, float_format="%.6f")

        genes = make_gene_programme(n_genes, _rng(seed, "genes"))
        per_class = np.full(len(RNA_CLASSES), rna_cells // len(RNA_CLASSES)) + (
            np.arange(len(RNA_CLASSES)) < rna_cells % len(RNA_CLASSES)
        )
        rng = _rng(seed, "rna_cells")
        rna = _with_patients(sample_cells(dict(zip(RNA_CLASSES, per_class, strict=True)), rng), patients, rng)
        rng = _rng(seed, "counts")
        counts = draw_counts(cell_log_means(rna, genes, rng, patient_rna), genes, rng)
        write_h5ad(_rna_anndata(rna, counts, genes, seed), tmp / "rna.h5ad")

        truth = {
            "seed": seed,
            "parameters": dict(
                cells_per_class=cells_per_class,
                rna_cells=rna_cells,
                crop_size=crop_size,
                n_genes=n_genes,
                n_patients=n_patients,
            ),
            "where_the_cells_are": "images: manifest.csv (label, lineage, pseudotime, patient); "
            "RNA: rna.h5ad obs (cell_type, label, lineage, pseudotime, sample, patient)",
            "programme": programme_as_dict(),
            "rna_classes": list(RNA_CLASSES),
            "smudge_cell": "images only: a smear artefact, not a cell state, so it has no transcriptome; "
            "its pseudotime on the 'artefact' lineage is the degree of smearing",
            "patients": {
                p: {"background_rgb": s.background.round(2).tolist(), "stain_gain": s.gain.round(4).tolist()}
                for p, s in stains.items()
            },
            "markers": list(MARKERS),
            "genes": genes.as_json(),
        }
        (tmp / "ground_truth.json").write_text(json.dumps(truth))
    return out


def _patients(seed: int, n_patients: int, n_genes: int) -> tuple[list[str], dict, dict[str, tuple[float, np.ndarray]]]:
    """The patients' names, stains and RNA effects (log library factor, per-gene log batch shift)."""
    patients = [f"P{i + 1}" for i in range(n_patients)]
    rng = _rng(seed, "patients")
    stains = {p: patient_stain(rng) for p in patients}
    return patients, stains, {p: (rng.normal(0, 0.2), rng.normal(0, 0.1, n_genes)) for p in patients}


@dataclass(frozen=True)
class RnaTruth:
    """What the world's RNA counts were drawn from, per cell (rows of rna.h5ad) and gene: a negative binomial
    with mean `mean` and inverse dispersion `dispersion`, whose draw is then zeroed with chance `dropout`."""

    genes: list[str]
    mean: np.ndarray  # cells × genes
    dispersion: np.ndarray  # genes
    dropout: np.ndarray  # cells × genes


def rna_truth(world: str | os.PathLike) -> RnaTruth:
    """The expression behind `world`'s RNA counts, regenerated from its seed: the yardstick no model can beat
    at predicting a cell's expression. Refuses a world whose counts this code does not draw again (written by
    another version)."""
    import anndata as ad

    world = Path(world)
    parameters = json.loads((world / "ground_truth.json").read_text())
    seed, n_genes = parameters["seed"], parameters["parameters"]["n_genes"]
    _, _, patient_rna = _patients(seed, parameters["parameters"]["n_patients"], n_genes)
    genes = make_gene_programme(n_genes, _rng(seed, "genes"))
    adata = ad.read_h5ad(world / "rna.h5ad")
    cells = adata.obs[["lineage", "pseudotime", "patient"]].astype({"lineage": str, "patient": str}).reset_index(drop=True)
    rng = _rng(seed, "counts")
    log_mu = cell_log_means(cells, genes, rng, patient_rna)
    if not np.array_equal(draw_counts(log_mu, genes, rng), adata.X.toarray()):
        raise InputError(f"{world}: its RNA counts are not the ones this version draws from its seed; write the world again")
    return RnaTruth(genes.names, np.exp(log_mu), genes.dispersion, dropout_probability(log_mu))


def _check(
    out: Path, cells_per_class: int, rna_cells: int, crop_size: int, n_genes: int, n_patients: int, overwrite: bool
) -> None:
    """Refuse bad sizes, and an existing `out` unless asked to overwrite and it is a world (or empty)."""
    if cells_per_class < 1:
        raise InputError(f"cells_per_class must be at least 1, got {cells_per_class}")
    if rna_cells < len(RNA_CLASSES):
        raise InputError(f"rna_cells must be at least {len(RNA_CLASSES)} (one per class with RNA), got {rna_cells}")
    if crop_size < 64:
        raise InputError(f"crop_size must be at least 64 px, got {crop_size}")
    if n_patients < 1:
        raise InputError(f"n_patients must be at least 1, got {n_patients}")
    if n_genes < len(MARKERS):
        raise InputError(f"n_genes must be at least {len(MARKERS)} (the named markers), got {n_genes}")
    if not out.exists():
        return
    if not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite (overwrite=True) to replace it")
    is_world = out.is_dir() and (out / "manifest.csv").is_file() and (out / "ground_truth.json").is_file()
    if not is_world and not (out.is_dir() and not any(out.iterdir())):
        raise InputError(f"{out} exists and is not a synthetic world; refusing to replace it")


def _with_patients(cells: pd.DataFrame, patients: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """Assign patients evenly within each class (shuffled), so every patient holds every class where possible."""
    order = np.empty(len(cells), dtype=int)
    for rows in cells.groupby("label", sort=False).indices.values():
        order[rows] = rng.permutation((np.arange(len(rows)) + rng.integers(len(patients))) % len(patients))
    return cells.assign(patient=np.asarray(patients)[order])


def _rna_anndata(cells: pd.DataFrame, counts: np.ndarray, genes: GeneProgramme, seed: int) -> ad.AnnData:
    """Counts as CSR int32 in X; one bone-marrow sample per synthetic patient, so `sample` equals `patient`."""
    import anndata as ad
    from scipy import sparse

    obs = pd.DataFrame(
        {
            "cell_type": cells["label"].to_numpy(),
            "label": cells["label"].to_numpy(),
            "lineage": cells["lineage"].to_numpy(),
            "pseudotime": cells["pseudotime"].to_numpy(),
            "sample": cells["patient"].to_numpy(),
            "patient": cells["patient"].to_numpy(),
        },
        index=[f"cell_{i:05d}" for i in range(len(cells))],
    )
    var = pd.DataFrame(
        {f"kinetic_{lineage}": genes.kinetics[lineage]["kind"] for lineage in RNA_LINEAGES}, index=genes.names
    )
    var["marker"] = var.index.isin(list(MARKERS))
    adata = ad.AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)
    adata.uns["synthetic"] = {"seed": seed, "ground_truth": "ground_truth.json"}
    return adata
