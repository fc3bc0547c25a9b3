"""What the trajectory benches read from a `make demo` (or `make kinetics-world`) folder: the cells a path is
drawn through, as `wbcvae trajectory` pools them, with their expression, the gene decoder and the truth.

- `synthetic(folder)`: the synthetic world's RNA and image latents from the alignment checkpoint, scored
  against the world's ground truth;
- `van_galen(folder)`: the demo's real-marrow stage (`real_rna/`), its HSC → Mono path read against
  the 17 known markers; None when the demo ran without van Galen's data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anndata
import numpy as np

from wbcvae.alignment.module import LabelledLatents, load_alignment
from wbcvae.checkpoints import kept_genes, load_plan
from wbcvae.data.rna import read_rna
from wbcvae.trajectory.decode import Decoder, as_decoder
from wbcvae.trajectory.expression import CellExpression, cell_expression
from wbcvae.trajectory.presets import TrajectoryPreset, real_rna_preset
from wbcvae.trajectory.recovery import GroundTruth
from wbcvae.trajectory.run import TrajectoryResult, TrajectorySettings, run_trajectory
from wbcvae.training.embed import EMBEDDING_KEY

SYNTHETIC = ("granulopoiesis", "monocytopoiesis")


@dataclass
class TrajectoryInputs:
    """Labelled latents (rows: cells) and everything `run_trajectory` reads beside them."""

    latent: np.ndarray
    classes: list[str]
    modality: list[str] | None
    expression: CellExpression
    gene_decoder: Decoder
    gene_names: list[str]
    truth: GroundTruth | None = None

    def run(self, preset: str | TrajectoryPreset, settings: TrajectorySettings, out: Path) -> TrajectoryResult:
        return run_trajectory(preset, self.latent, self.classes, None, self.gene_decoder, self.gene_names, out, settings,
                              self.truth, self.modality, self.expression)  # fmt: skip


def synthetic(folder: Path) -> TrajectoryInputs:
    module = load_alignment(folder / "alignment/alignment/version_0/checkpoints/last.ckpt")
    world = read_rna(folder / "world")
    truth = GroundTruth.from_anndata(module.rna_latent.numpy(), world.obs, world.var)
    cells = LabelledLatents.concat([module.rna_latents(), module.image_latents])
    expression = cell_expression(world, None, module.gene_names).padded(len(cells.latent))
    return TrajectoryInputs(cells.latent, list(cells.classes), list(cells.modality), expression, as_decoder(module.rna_plan.vae),
                       list(module.gene_names), truth)  # fmt: skip


def van_galen(folder: Path) -> tuple[TrajectoryInputs, TrajectoryPreset] | None:
    if not (folder / "real_rna/stage.json").exists():
        return None
    stage = json.loads((folder / "real_rna/stage.json").read_text())
    cells = anndata.read_h5ad(folder / "real_rna/rna_latent.h5ad")  # latents (`wbcvae embed`), not counts
    plan, record = load_plan(stage["checkpoint"])
    genes = kept_genes(record)
    preset = real_rna_preset(stage["path"])
    classes = cells.obs["cell_type"].astype(object).fillna("").astype(str).tolist()
    expression = cell_expression(stage["source"], cells.obs_names, [*genes, *preset.expected_markers])
    return TrajectoryInputs(cells.obsm[EMBEDDING_KEY], classes, None, expression, as_decoder(plan.vae), genes), preset
