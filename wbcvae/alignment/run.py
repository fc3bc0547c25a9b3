"""`wbcvae align`: trained image + RNA β-VAE checkpoints → a joint model, its metrics, trajectories, a report.

A run folder `<out>/<run_name>/version_N/` gets: `config.yaml` (the resolved settings), `metrics.csv`
(and a W&B run unless switched off), `checkpoints/last.ckpt`, `rna_latent.h5ad` (μ of every RNA cell
under the frozen encoder), `alignment_metrics.json` + `alignment_per_class.csv`, `joint_latent.png`,
`trajectories/<preset>/…` and `report/index.html`, which it prints.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from wbcvae.alignment.metrics import save_joint_latent_plot
from wbcvae.alignment.module import JointAlignmentModule, LabelledLatents, RnaCells
from wbcvae.alignment.warm_start import procrustes_warm_start
from wbcvae.checkpoints import kept_genes, load_plan
from wbcvae.data.rna import read_rna
from wbcvae.errors import InputError
from wbcvae.features.datamodule import FeatureDataModule
from wbcvae.features.store import FeatureStore
from wbcvae.report.html import Section, to_jsonable, write_csv, write_report
from wbcvae.trajectory.callback import TrajectoryCallback
from wbcvae.trajectory.presets import get_preset
from wbcvae.trajectory.expression import cell_expression
from wbcvae.trajectory.recovery import GroundTruth
from wbcvae.trajectory.run import TrajectorySettings, report_section
from wbcvae.training.embed import EMBEDDING_KEY, embed
from wbcvae.training.loggers import build_loggers
from wbcvae.training.rng_state import RandomStateInCheckpoint
from wbcvae.utils.atomic import atomic_path
from wbcvae.utils.config import check_types, resolve_config

RUN_VERSION_ENV = "WBCVAE_ALIGN_RUN_VERSION"
WARM_STARTS = ("procrustes", "none")


@dataclass
class AlignConfig:
    """Every knob of an alignment run; a YAML file sets any subset, the CLI overrides a few."""

    image_ckpt: str = ""
    rna_ckpt: str = ""
    features: str = ""  # feature store of the images (`wbcvae features`)
    rna: str = ""  # RNA source (.h5ad, synthetic world, van Galen folder)
    correspondence: dict[str, list[str]] | None = None  # image class → RNA labels; None: same class
    delta: float = 10.0
    cov_weight: float = 1.0
    min_cells_for_cov: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 10
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    seed: int = 0
    out: str = "runs"
    run_name: str = "alignment"
    wandb: bool = True
    wandb_project: str = "wbcvae"
    trajectories: list[str] = field(default_factory=lambda: ["granulopoiesis", "monocytopoiesis", "neutrophil_maturation"])
    trajectory: dict[str, Any] = field(default_factory=dict)  # TrajectorySettings fields
    warm_start: str = "procrustes"  # or "none": start from the image VAE as trained (see wbcvae.alignment.warm_start)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, **overrides: Any) -> AlignConfig:
        """Defaults ← YAML file ← overrides that are not None. Unknown keys are an error, named."""
        values: dict[str, Any] = {}
        if path is not None:
            path = resolve_config(path)
            if not path.is_file():
                raise InputError(f"{path}: no such config file")
            values = yaml.safe_load(path.read_text()) or {}
            if not isinstance(values, dict):
                raise InputError(f"{path}: expected a mapping of settings at the top level")
        values |= {k: v for k, v in overrides.items() if v is not None}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown alignment setting {unknown[0]!r}; known: {sorted(known)}")
        check_types(values, {f.name: f.type for f in fields(cls)}, path or "alignment settings")
        config = cls(**values)
        TrajectorySettings.from_mapping(config.trajectory)  # an unknown key fails here, before any training
        if config.warm_start not in WARM_STARTS:
            raise InputError(f"alignment setting 'warm_start' must be one of {list(WARM_STARTS)}, got {config.warm_start!r}")
        for name in ("image_ckpt", "rna_ckpt", "features", "rna"):
            if not getattr(config, name):
                raise InputError(f"alignment setting {name!r} is required (in the YAML or as --{name.replace('_', '-')})")
        return config


@dataclass
class AlignmentRun:
    """What a run produced; `sections` let a caller (the pipeline) put them in a larger report."""

    module: JointAlignmentModule
    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any]
    report: Path
    sections: list[Section] = field(default_factory=list)


def build_module(config: AlignConfig, run_dir: Path) -> tuple[JointAlignmentModule, ad.AnnData]:
    """Load both plans, encode the whole RNA set once with the frozen RNA encoder, build the module.

    Returns the module and the RNA AnnData written to `run_dir/rna_latent.h5ad` (its obs are needed
    for ground truth on the synthetic world).
    """
    image_plan, image_record = load_plan(config.image_ckpt, kind="image")
    store = FeatureStore(config.features)
    store.require_read_like(image_record.get("data", {}).get("store", {}), "the image model's training store")
    rna_plan, rna_record = load_plan(config.rna_ckpt, kind="rna")
    rna = embed(config.rna_ckpt, config.rna, run_dir / "rna_latent.h5ad")
    genes = kept_genes(rna_record) if rna_record.get("preprocessor") else ()
    cells = RnaCells(
        rna.obsm[EMBEDDING_KEY],
        rna.obs["cell_type"].astype(str).tolist(),
        rna.obs["label"].astype(object).fillna("").astype(str).tolist(),
    )
    module = JointAlignmentModule(
        image_plan,
        rna_plan,
        cells,
        correspondence=config.correspondence,
        gene_names=genes,
        delta=config.delta,
        cov_weight=config.cov_weight,
        min_cells_for_cov=config.min_cells_for_cov,
        lr=config.lr,
        weight_decay=config.weight_decay,
        image_store=store.provenance,
    )
    return module, rna


def fit_alignment(config: AlignConfig, ckpt_path: str | os.PathLike | None = None) -> AlignmentRun:
    """Fine-tune, measure, walk the presets and write the run folder with its report.

    `ckpt_path` (a `last.ckpt` of an earlier run with the same config) continues that run.
    """
    L.seed_everything(config.seed, workers=True)
    version = _shared_version(config)
    loggers = build_loggers(config.out, config.run_name, wandb=config.wandb, project=config.wandb_project, version=version)
    loggers[0].experiment  # creates the run folder (rank zero) before we write into it
    run_dir = Path(loggers[0].log_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(asdict(config), sort_keys=False))
    module, rna = build_module(config, run_dir)
    source = read_rna(config.rna)  # read once: the ground truth's genes and the real cells' counts
    truth = _ground_truth(module, rna, source.var)
    settings = TrajectorySettings.from_mapping(config.trajectory)
    markers = sorted({gene for name in config.trajectories for gene in get_preset(name).expected_markers})
    # the real cells beside each decoded curve: its DPT-trend baseline and the yardstick of flat vs changed
    expression = cell_expression(source, rna.obs_names, [*module.gene_names, *markers])
    trajectories = TrajectoryCallback(config.trajectories, settings, truth, run_dir / "trajectories", expression)
    # the latest epoch as last.ckpt after every epoch, so that a killed run resumes from it (Lightning 2.6
    # writes a `save_last` checkpoint only in a step that saved another one: with save_top_k=0, at the end)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1)
    trainer = L.Trainer(
        max_epochs=config.max_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        logger=loggers,
        callbacks=[checkpoint, trajectories, RandomStateInCheckpoint()],  # a resumed run draws as an unbroken one
        default_root_dir=config.out,
    )
    data = FeatureDataModule(config.features, batch_size=config.batch_size, seed=config.seed)
    if ckpt_path is None and config.warm_start == "procrustes":  # a resumed run continues from its own weights
        data.setup("fit")
        fitted = procrustes_warm_start(module, data.train_dataloader())
        for logger in loggers:
            logger.log_metrics({f"warm_start/{key}": value for key, value in fitted.items()}, step=0)
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if not module.last_metrics:  # resumed from the final epoch's checkpoint: nothing was validated in this process
        trainer.validate(module, datamodule=data, verbose=False)
    last = Path(checkpoint.best_model_path)  # with no monitor: the latest epoch
    if not trainer.is_global_zero:
        return AlignmentRun(module, run_dir, last, {}, run_dir / "report" / "index.html")
    metrics, sections = _alignment_outputs(module, run_dir, trajectories)
    report = write_report(run_dir / "report", sections, metrics, title=f"wbcvae alignment: {config.run_name}")
    return AlignmentRun(module, run_dir, last, metrics, report, sections)


def _shared_version(config: AlignConfig) -> int:
    """The run's version number, the same in every DDP process.

    Lightning's DDP launcher starts the other ranks as copies of this command once `fit` begins;
    they would each pick the next free `version_N`. The first process picks it and leaves it in the
    environment, which the copies inherit.
    """
    if RUN_VERSION_ENV not in os.environ or "LOCAL_RANK" not in os.environ:
        os.environ[RUN_VERSION_ENV] = str(CSVLogger(config.out, config.run_name).version)
    return int(os.environ[RUN_VERSION_ENV])


def _ground_truth(module: JointAlignmentModule, rna: ad.AnnData, genes: pd.DataFrame) -> GroundTruth | None:
    """The synthetic world's truth (cells' lineage and pseudotime, genes' kinetics), else None."""
    if "pseudotime" not in rna.obs:
        return None
    return GroundTruth.from_anndata(module.rna_latent.cpu().numpy(), rna.obs, genes)


def _alignment_outputs(
    module: JointAlignmentModule, run_dir: Path, trajectories: TrajectoryCallback
) -> tuple[dict, list[Section]]:
    """Write the alignment metrics and the joint latent figure; collect the report's sections."""
    metrics: dict[str, Any] = {"alignment": dict(module.last_metrics), "pairs_without_rna": module.pairs_without_rna}
    table = module.last_metrics_table
    with atomic_path(run_dir / "alignment_metrics.json") as tmp:
        tmp.write_text(json.dumps(to_jsonable(metrics["alignment"]), indent=2, allow_nan=False) + "\n")
    figures = []
    if module.image_latents is not None:
        cells = LabelledLatents.concat([module.rna_latents(), module.image_latents])
        figures.append(save_joint_latent_plot(cells.latent, cells.classes, cells.modality, run_dir / "joint_latent.png"))
    tables = {}
    if table is not None:
        write_csv(table, run_dir / "alignment_per_class.csv")
        tables["alignment per class"] = table
    text = (
        "Image latents (validation split, fine-tuned encoder) against the frozen RNA latents, per aligned class. "
        "nearest_centroid_accuracy: share of image cells nearest to their own class' RNA centroid (chance: "
        f"{metrics['alignment'].get('chance_accuracy', np.nan):.2f}). centroid_distance_ratio: image-to-RNA centroid "
        "distance over the distance between classes (< 1 is good). mixing_entropy: 1 when a cell's neighbours "
        "within its class come from both modalities equally."
    )
    sections = [Section("Joint latent space", text, figures, tables)]
    for name, result in trajectories.results.items():
        metrics[f"trajectory/{name}"] = result.metrics
        sections.append(report_section(result))
    return metrics, sections
