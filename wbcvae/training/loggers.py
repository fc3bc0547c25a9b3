"""Where metrics go: always a CSV file in the run folder; W&B too unless switched off."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment


def wandb_mode() -> str:
    """`WANDB_MODE` when the user set it; else online with an API key, offline (sync later) without."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def build_loggers(
    root: str | os.PathLike, name: str, wandb: bool = True, project: str = "wbcvae", version: int | str | None = None
) -> list[Logger]:
    """CSV logger first (so checkpoints and the resolved config land in `<root>/<name>/version_N/`), then W&B.

    The offline W&B run is written under `$WANDB_DIR` or `<root>/<name>/`; `wandb sync <run folder>`
    uploads it later. Under DDP only rank zero creates the W&B run: one run per job. Under SLURM the
    W&B run id is the job id, so a job requeued after preemption continues its run instead of starting one.
    """
    csv = CSVLogger(save_dir=root, name=name, version=version)
    loggers: list[Logger] = [csv]
    if wandb:
        save_dir = os.environ.get("WANDB_DIR") or str(Path(root) / name)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        job = SLURMEnvironment.job_id() if SLURMEnvironment.detect() else None
        run_id = {"id": f"{name}-slurm{job}", "resume": "allow"} if job is not None else {}
        wandb_logger = WandbLogger(project=project, name=name, save_dir=save_dir, offline=wandb_mode() == "offline", **run_id)
        # Lightning always passes `anonymous`, which W&B ≥ 0.19 ignores with a warning on every run.
        wandb_logger._wandb_init.pop("anonymous", None)
        loggers.append(wandb_logger)
    return loggers
