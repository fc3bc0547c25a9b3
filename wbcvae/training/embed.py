"""Trained β-VAE + cells → AnnData with `obsm["X_wbcvae"]` = μ, so scanpy treats image and RNA embeddings alike."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import wbcvae
from wbcvae.checkpoints import load_plan
from wbcvae.errors import InputError
from wbcvae.training.plan import VAEPlan
from wbcvae.utils.atomic import write_h5ad

EMBEDDING_KEY = "X_wbcvae"


def rebuild_datamodule(record: dict, **overrides) -> L.LightningDataModule:
    """The DataModule a checkpoint was trained on, rebuilt from its `wbcvae` record (same class, same
    arguments, hence the same seeded splits). An RNA run reuses its saved preprocessing rather than refitting."""
    data = record.get("data") or {}
    if "datamodule" not in data:
        raise InputError("the checkpoint does not record its DataModule; rebuild the data yourself")
    module, _, name = data["datamodule"].rpartition(".")
    if module.split(".")[0] != "wbcvae":  # never import a class a file names from outside this package
        raise InputError(f"the checkpoint's DataModule {data['datamodule']!r} is not one of wbcvae's; rebuild the data yourself")
    arguments = {k: v for k, v in data["hparams"].items() if not k.startswith("_")}
    if "source" in data:
        arguments["source"] = data["source"]
    saved = record.get("preprocessor")
    if saved and Path(saved["path"]).is_file() and "preprocessor" in arguments:
        arguments["preprocessor"] = saved["path"]
    return getattr(importlib.import_module(module), name)(**{**arguments, **overrides})


def embed(
    ckpt: str | os.PathLike,
    source: str | os.PathLike,
    out: str | os.PathLike,
    batch_size: int = 256,
    device: str = "auto",
    preprocessor: str | os.PathLike | None = None,
) -> ad.AnnData:
    """Encode every cell of `source` with the β-VAE in `ckpt` and write `out` (.h5ad) atomically.

    Image checkpoints read a feature store; RNA checkpoints any RNA source, transformed by the
    preprocessing saved with the run (or `preprocessor`, a saved `RnaPreprocessor` JSON).
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    plan, record = load_plan(ckpt, map_location=device)
    plan.eval()
    if record["kind"] == "rna":
        batches, obs, source_info = _rna_batches(plan, record, source, batch_size, preprocessor)
    else:
        batches, obs, source_info = _image_batches(plan, record, source, batch_size)
    mu = _encode(plan, batches, device, total=-(-len(obs) // batch_size))
    adata = ad.AnnData(obs=obs, obsm={EMBEDDING_KEY: mu})
    adata.uns["wbcvae"] = _h5ad_safe(
        {
            "model": {
                "checkpoint": str(Path(ckpt).resolve()),
                "sha256": _sha256(Path(ckpt)),
                "plan": record["plan"],
                "kind": record["kind"],
                "hparams": {k: v for k, v in dict(plan.hparams).items() if not k.startswith("_")},
                "epoch": record["epoch"],
                "global_step": record["global_step"],
                "trained_with_wbcvae": record["version"],
            },
            "data": {"source": str(Path(source).resolve()), **source_info, "training_data": record["data"]},
            "embedded_with_wbcvae": wbcvae.__version__,
        }
    )
    write_h5ad(adata, out)
    return adata


@torch.no_grad()
def _encode(plan: VAEPlan, batches: Iterator[dict[str, torch.Tensor]], device: str, total: int) -> np.ndarray:
    """μ of every batch, on `device`, concatenated (float32 cells × latent)."""
    plan.to(device)
    parts = [plan.encode(batch).float().cpu() for batch in tqdm(batches, "embedding", total=total, unit="batch")]
    return torch.cat(parts).numpy() if parts else np.zeros((0, plan.hparams.latent_dim), np.float32)


def _rna_batches(
    plan: VAEPlan, record: dict, source: str | os.PathLike, batch_size: int, preprocessor: str | os.PathLike | None
) -> tuple[Iterator[dict[str, torch.Tensor]], pd.DataFrame, dict]:
    from wbcvae.data.rna import read_rna
    from wbcvae.data.rna_datamodule import RnaDataset

    fitted = _rna_preprocessor(record, preprocessor)
    if len(fitted.genes) != plan.vae.n_genes:
        raise InputError(f"the preprocessing keeps {len(fitted.genes)} genes but the model expects {plan.vae.n_genes}")
    trained = record.get("data", {}).get("hparams", {})
    # The training source is read with the training's van Galen sample selection (the same cells).
    trained_source = record.get("data", {}).get("source")
    selection = {}
    if trained_source and Path(source).resolve() == Path(trained_source).resolve():
        selection = {"samples": trained.get("samples"), "healthy_only": bool(trained.get("healthy_only"))}
    adata = read_rna(source, cell_type_key=trained.get("cell_type_key"), unknown="skip", **selection)
    dataset = RnaDataset(adata, fitted)
    starts = range(0, adata.n_obs, batch_size)
    batches = (dataset[list(range(s, min(s + batch_size, adata.n_obs)))] for s in starts)
    info = {k: v for k, v in adata.uns.get("wbcvae", {}).items() if k != "skipped"}
    return batches, adata.obs.copy(), {"reader": info, "genes": len(fitted.genes)}


def _rna_preprocessor(record: dict, override: str | os.PathLike | None):
    """The run's fitted preprocessing: `override`, else the file saved with the run, else the copy in the checkpoint."""
    from wbcvae.data.rna_preprocess import RnaPreprocessor

    if override is not None:
        return RnaPreprocessor.load(override)
    saved = record.get("preprocessor")
    if not saved:
        raise InputError("the checkpoint records no RNA preprocessing; pass --preprocessor PREPROCESSOR.json")
    if Path(saved["path"]).is_file():
        return RnaPreprocessor.load(saved["path"])
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "preprocessor.json"
        copy.write_text(saved["json"])
        return RnaPreprocessor.load(copy)


def _image_batches(
    plan: VAEPlan, record: dict, source: str | os.PathLike, batch_size: int
) -> tuple[Iterator[dict[str, torch.Tensor]], pd.DataFrame, dict]:
    from wbcvae.features.datamodule import FeatureDataset
    from wbcvae.features.store import FeatureStore
    from wbcvae.vocabulary import CLASSES

    store = FeatureStore(source)
    store.require_complete()
    store.require_feature_shape(plan.vae.feature_shape)
    store.require_read_like(record.get("data", {}).get("store", {}), "the model's training store")
    rows = store.readable_rows()  # crops whose image could not be decoded have no features
    loader = DataLoader(FeatureDataset(store, rows), batch_size=batch_size)
    obs = store.table().iloc[rows].drop(columns="done")
    obs["label"] = pd.Categorical(obs["label"], categories=list(CLASSES))
    obs.index = pd.Index(obs["row"].astype(str).to_numpy(), name=None)
    return iter(loader), obs, {"reader": "feature store", "store": store.provenance}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _h5ad_safe(value: object) -> object:
    """Nested dicts of scalars as they are; anything else (None, lists, mixed) as a JSON string."""
    if isinstance(value, dict):
        return {str(k): _h5ad_safe(v) for k, v in value.items()}
    if isinstance(value, (str, bool, int, float)):
        return value
    return json.dumps(value, default=str)
