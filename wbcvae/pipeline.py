"""`wbcvae pipeline`: data → segmentation → features → image VAE → RNA VAE → alignment → trajectories
→ real RNA (van Galen marrow, when its data is there) → report.

One YAML (`experiments/pipeline/demo.yaml`) names every stage's own config, so the pipeline runs exactly
what `make segment`, `make train-image`, … run. Each stage writes into `OUT/<stage>/` and finishes by
writing `OUT/<stage>/stage.json` (its outputs); a rerun skips finished stages, so a killed pipeline
resumes at the stage it was in. A stage skipped for want of data is not marked finished, and the report
(seconds) is rebuilt on every run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbcvae.errors import InputError
from wbcvae.report.html import to_jsonable
from wbcvae.utils.atomic import atomic_path
from wbcvae.utils.config import load_yaml_config

if TYPE_CHECKING:
    from wbcvae.trajectory.run import TrajectorySettings

Outputs = dict[str, Any]


@dataclass
class Run:
    """The pipeline's config and what finished stages produced, keyed by stage name."""

    config: dict[str, Any]
    out: Path
    outputs: dict[str, Outputs]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name) or {})

    def folder(self, stage: str) -> Path:
        return self.out / stage


def load_pipeline_config(path: str | os.PathLike, overrides: list[str] = ()) -> dict[str, Any]:
    """The pipeline YAML at `path`, with `section.key=value` overrides."""
    return load_yaml_config(path, overrides, known=("out", "seed", *STAGE_NAMES))


def run_pipeline(config: dict[str, Any], out: str | os.PathLike | None = None) -> Path:
    """Run every unfinished stage in order; returns the report folder."""
    run = Run(config=config, out=Path(out or config.get("out", "runs/pipeline")), outputs={})
    run.out.mkdir(parents=True, exist_ok=True)
    for name, stage in STAGES:
        marker = run.folder(name) / "stage.json"
        if marker.is_file() and name not in ALWAYS_RUN:
            run.outputs[name] = json.loads(marker.read_text())
            print(f"[pipeline] {name}: already done ({marker})")
            continue
        print(f"[pipeline] {name} …", flush=True)
        started = time.perf_counter()
        outputs = stage(run)
        outputs["seconds"] = round(time.perf_counter() - started, 1)
        run.outputs[name] = outputs
        if "skipped" in outputs:  # not marked done: a rerun tries again once the data is there
            print(f"[pipeline] {name}: skipped ({outputs['skipped']})")
            continue
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps(outputs, indent=2, default=str))
        print(f"[pipeline] {name}: done in {outputs['seconds']} s")
    report = Path(run.outputs["report"]["folder"])
    print(f"[pipeline] report: {report / 'index.html'}")
    return report


# --- stages ---------------------------------------------------------------------------------------


def _world(run: Run) -> Outputs:
    """The synthetic world, unless the config points both modalities at real sources."""
    from wbcvae.data.synthetic.world import write_world

    settings = run.section("world")
    folder = run.folder("world")
    write_world(folder, seed=run.config.get("seed", 0), overwrite=True, **settings)
    return {"images": str(folder), "rna": str(folder / "rna.h5ad"), "ground_truth": str(folder / "ground_truth.json")}


def _segmentation(run: Run) -> Outputs:
    from wbcvae.segmentation.train import load_config, train_segmentation

    settings = run.section("segmentation")
    config = load_config(settings.pop("config"), [f"{k}={json.dumps(v)}" for k, v in settings.pop("set", {}).items()])
    config.update(source=run.outputs["world"]["images"], out=str(run.folder("segmentation")), seed=run.config.get("seed", 0))
    checkpoint = train_segmentation(config)
    quality = json.loads((checkpoint.parent / "quality.json").read_text())
    return {"checkpoint": str(checkpoint), "quality": quality}


def _features(run: Run) -> Outputs:
    from wbcvae.features.extract import extract_features

    store = run.folder("features") / "store"
    extract_features(run.outputs["world"]["images"], run.outputs["segmentation"]["checkpoint"], store, **run.section("features"))
    return {"store": str(store)}


def _image_vae(run: Run) -> Outputs:
    return _train_vae(run, "image_vae", "image", {"data.init_args.store_dir": run.outputs["features"]["store"]})


def _rna_vae(run: Run) -> Outputs:
    trained = _train_vae(run, "rna_vae", "rna", {"data.init_args.source": run.outputs["world"]["rna"]})
    return {**trained, "reconstruction": _reconstruction(trained["checkpoint"])}


def _reconstruction(checkpoint: str) -> dict[str, Any]:
    """The RNA β-VAE against PCA-50, the training mean and (a synthetic world) the truth on its held-out cells:
    plain MSE, MSE on held-out molecules, NB likelihood (`wbcvae.training.rna_quality`)."""
    from wbcvae.training.rna_quality import MEASURES, held_out_reconstruction

    scores = held_out_reconstruction(checkpoint)
    return to_jsonable({key: scores[key] for key in ("held_out", "held_out_cells", "genes", *MEASURES)})


def _train_vae(run: Run, stage: str, kind: str, data: dict[str, Any]) -> Outputs:
    """Fit one β-VAE through the same LightningCLI as `make train-image` / `make train-rna`.

    `config` is one YAML or a list of them, stacked in order as repeated `--config` (later files override).
    """
    from wbcvae.training.cli import run_cli

    settings = run.section(stage)
    configs = settings.pop("config")
    args = ["fit"]
    for config in [configs] if isinstance(configs, (str, os.PathLike)) else configs:
        args += ["--config", str(config)]
    fields = {
        **data,
        "trainer.default_root_dir": str(run.folder(stage)),
        "seed_everything": run.config.get("seed", 0),
        "wandb": False,
        **settings.pop("set", {}),
    }
    for key, value in fields.items():
        args += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cli = run_cli(kind, args)
    callback = cli.trainer.checkpoint_callback
    return {"checkpoint": callback.best_model_path or callback.last_model_path, "last": callback.last_model_path}


def _alignment(run: Run) -> Outputs:
    """Fine-tune the image VAE onto the frozen RNA space, then walk the presets (`wbcvae align`)."""
    from wbcvae.alignment.run import AlignConfig, fit_alignment
    from wbcvae.pipeline_report import save_sections

    settings = run.section("alignment")
    config = AlignConfig.from_yaml(
        settings.pop("config"),
        image_ckpt=run.outputs["image_vae"]["checkpoint"],
        rna_ckpt=run.outputs["rna_vae"]["checkpoint"],
        features=run.outputs["features"]["store"],
        rna=run.outputs["world"]["rna"],
        out=str(run.folder("alignment")),
        seed=run.config.get("seed", 0),
        wandb=False,
        **settings,
    )
    result = fit_alignment(config)
    return {
        "run_dir": str(result.run_dir),
        "checkpoint": str(result.checkpoint),
        "metrics": to_jsonable(result.metrics),
        "sections": save_sections(result.sections, run.folder("alignment") / "sections"),
    }


def _real_rna(run: Run) -> Outputs:
    """The RNA β-VAE on real marrow, then the decoded path through `path`'s cell types: do the known
    markers go up and down on real RNA as they do in the synthetic world? Skipped without the data."""
    from wbcvae.trajectory.decode import as_decoder
    from wbcvae.trajectory.presets import real_rna_preset
    from wbcvae.trajectory.expression import cell_expression
    from wbcvae.trajectory.run import report_section, run_trajectory
    from wbcvae.checkpoints import kept_genes, load_plan
    from wbcvae.pipeline_report import save_sections
    from wbcvae.training.embed import EMBEDDING_KEY, embed

    settings = run.section("real_rna")
    source = settings.get("source")
    if not source:
        return {"skipped": "no real RNA source configured (real_rna.source)"}
    if not Path(source).exists():
        return {"skipped": f"the real RNA source {source} does not exist"}
    path = settings.get("path")
    if not isinstance(path, list) or len(path) < 2 or not all(isinstance(t, str) for t in path):
        raise InputError(f"real_rna.path must list at least two cell types, start to end; got {path!r}")
    trajectory_settings = _trajectory_settings(settings.get("trajectory") or {})
    trained = _train_vae(run, "real_rna", "rna", {"data.init_args.source": str(source)})
    folder = run.folder("real_rna")
    cells = embed(trained["checkpoint"], source, folder / "rna_latent.h5ad")
    cell_types = cells.obs["cell_type"].astype(object).fillna("").astype(str)
    counts = cell_types.value_counts()
    missing = [t for t in path if t not in counts.index]
    if missing:
        known = ", ".join(sorted(t for t in counts.index if t))
        raise InputError(f"real_rna.path: no {missing[0]!r} cells in {source}; its cell types: {known}")
    plan, record = load_plan(trained["checkpoint"])
    genes = kept_genes(record)
    preset = real_rna_preset(path)
    expression = cell_expression(source, cells.obs_names, [*genes, *preset.expected_markers])  # the real cells beside the curves
    result = run_trajectory(
        preset, cells.obsm[EMBEDDING_KEY], cell_types.tolist(), None, as_decoder(plan.vae), genes, folder / "trajectory",
        trajectory_settings, expression=expression,
    )
    return {
        "checkpoint": trained["checkpoint"],
        "source": str(source),
        "path": path,
        "cells": int(cells.n_obs),
        "cells_on_path": {t: int(counts[t]) for t in path},
        "genes": len(genes),
        "markers_not_kept": [g for g in preset.expected_markers if g not in genes],
        "reconstruction": _reconstruction(trained["checkpoint"]),
        "files": {name: str(file) for name, file in result.files.items()},
        "metrics": to_jsonable(result.metrics),
        "sections": save_sections([report_section(result)], folder / "sections"),  # the path as the synthetic ones are shown
    }


def _trajectory_settings(values: dict[str, Any]) -> TrajectorySettings:
    """The data path; the study's chord beside it anchored at every listed cell type's centroid, unless
    `real_rna.trajectory` says otherwise."""
    from wbcvae.trajectory.run import TrajectorySettings

    return TrajectorySettings.from_mapping({"waypoints": True, "anchor_mode": "centroid", **values}, "real_rna.trajectory")


def _report(run: Run) -> Outputs:
    """One page: the headline results, then what each stage made, with the figures people look at first."""
    from wbcvae.pipeline_report import write_pipeline_report

    folder = run.folder("report")
    write_pipeline_report(run.outputs, folder)
    return {"folder": str(folder)}


STAGES: tuple[tuple[str, Callable[[Run], Outputs]], ...] = (
    ("world", _world),
    ("segmentation", _segmentation),
    ("features", _features),
    ("image_vae", _image_vae),
    ("rna_vae", _rna_vae),
    ("alignment", _alignment),
    ("real_rna", _real_rna),
    ("report", _report),
)
STAGE_NAMES = tuple(name for name, _ in STAGES)
ALWAYS_RUN = {"report"}  # seconds to build from the stages' records, and it must show every stage of this run
