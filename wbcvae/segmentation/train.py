"""`wbcvae segment train`: fit Mask R-CNN on a source from one YAML config, save a checkpoint and its scores.

A config has four sections passed straight through, so any of their arguments can be set in YAML or
with `--set section.key=value`:

    model:   MaskRCNNModule(...)             backbone, input_size, weights, norm, optimiser, …
    data:    SegmentationDataModule(...)     targets, batch_size, fractions, num_workers, …
    trainer: lightning.Trainer(...)          max_steps, max_time, accelerator, devices, gradient_clip_val, …
    logger:  {wandb: false, project: wbcvae} CSV always; W&B too when `wandb: true` (see training.loggers)

plus `source` (any image source), `out` (the run folder) and `seed`. The run folder receives
`config.yaml`, `maskrcnn.ckpt` (the final model), `quality.json` (validation scores), the CSV
logger's `logs/version_N/` (metrics.csv, overlays/*.png) and `checkpoints/last.ckpt` for resuming.
"""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from wbcvae.errors import InputError
from wbcvae.utils.atomic import atomic_path
from wbcvae.utils.config import load_yaml_config

SECTIONS = ("model", "data", "trainer", "logger")


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> dict[str, Any]:
    """The YAML at `path` with `section.key=value` overrides applied (values parsed as YAML)."""
    return load_yaml_config(path, overrides, known=("source", "out", "seed", *SECTIONS))


def _build(kind: type, arguments: dict[str, Any], section: str) -> Any:
    try:
        return kind(**arguments)
    except TypeError as err:
        raise InputError(f"config section {section!r}: {err}") from None


def train_segmentation(config: dict[str, Any]) -> Path:
    """Fit, validate and save as the config says; returns the path of the final checkpoint."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from wbcvae.segmentation.maskrcnn import MaskRCNNModule
    from wbcvae.segmentation.targets import SegmentationDataModule
    from wbcvae.training.loggers import build_loggers

    if "source" not in config:
        raise InputError("no source: give --source or set `source:` in the config")
    out = Path(config.get("out", "runs/segment"))
    L.seed_everything(int(config.get("seed", 0)), workers=True)
    model_args = dict(config.get("model", {}))
    module = _build(MaskRCNNModule, model_args, "model")
    # The targets' labels follow the model's classes (`model.cell_types`), whatever the data section says.
    data_args = {"input_size": module.hparams.input_size, **config.get("data", {})}
    data_args["cell_types"] = module.hparams.cell_types
    data = _build(SegmentationDataModule, {"source": config["source"], **data_args}, "data")
    logger_args = {"wandb": False, "project": "wbcvae", **config.get("logger", {})}
    loggers = _build(partial(build_loggers, out, "logs"), logger_args, "logger")
    for logger in loggers:
        logger.log_hyperparams(config)
    checkpoints = ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0)
    trainer = _build(L.Trainer, {"default_root_dir": str(out), **config.get("trainer", {}), "logger": loggers, "callbacks": [checkpoints]}, "trainer")

    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    scores = trainer.validate(module, datamodule=data, verbose=False)[0] if "val" in data.datasets else {}
    final = out / "maskrcnn.ckpt"
    unfinished = out / ".maskrcnn.ckpt.partial"
    trainer.save_checkpoint(unfinished)  # every rank calls it; rank zero writes
    if trainer.is_global_zero:
        os.replace(unfinished, final)
        quality = {
            "val_iou_cell": scores.get("val/iou_cell"),
            "val_detected": scores.get("val/detected"),
            "targets": data.target_kind,
            "crops_without_target": data.without_target,
            "steps": trainer.global_step,
            "train_seconds": round(seconds, 1),
            "init": module.init,
        }
        for name, content in (("quality.json", json.dumps(quality, indent=2)), ("config.yaml", yaml.safe_dump(config, sort_keys=False))):
            with atomic_path(out / name) as tmp:
                tmp.write_text(content)
        print(f"{final}: val IoU of the cell {quality['val_iou_cell']}, {trainer.global_step} steps in {seconds:.0f} s")
    return final
