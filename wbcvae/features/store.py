"""The feature store: one row per manifest row, memory-mapped arrays on disk, resumable.

Layout of a store folder:

    features.npy   float16 N×256×14×14   RoIAlign features of the white cell (FPN width 256)
    mask.npy       uint8   N×1×T×T       cell mask (0/1) at the target size T (128)
    target.npy     uint8   N×3×T×T       the crop resized to T×T, 0–255 (the image VAE's target)
    score.npy      float32 N             detection score (0 where the detector found nothing)
    box.npy        float32 N×4           the cell's box (x1, y1, x2, y2) in input-size crop pixels
    origin.npy     uint8   N             where the box came from: see ORIGINS ("unreadable": no data)
    done.npy       uint8   N             1 once the row's data is on disk
    meta.csv       one line per row: the manifest's columns, `row` and `index` (manifest index)
    provenance.json  checkpoint hash, model and extraction settings, source, row count, unreadable files

Features are kept as float16 and images as uint8: half and a quarter of the float32 size, which
matters when a VAE reads the whole store every epoch; batches come out as float32.

Why it survives a kill: the folder appears whole (`atomic_path`) with every array allocated, and
`write` flushes a batch's data to the files before it sets that batch's `done` flags and flushes
those. A row whose flag is set is complete; a row caught mid-write has no flag and is recomputed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wbcvae.errors import InputError
from wbcvae.utils.atomic import atomic_path

FEATURE_SHAPE = (256, 14, 14)
TARGET_SIZE = 128
ORIGINS = ("detection", "pseudo_mask", "whole_crop", "unreadable")  # index = value in origin.npy
UNREADABLE = ORIGINS.index("unreadable")  # a crop whose image could not be decoded: done, but no data
FINGERPRINT_DEFAULTS = {"pose": "as_is"}  # what a store made before that setting existed was made with


def fingerprint_setting(fingerprint: dict[str, Any], key: str) -> Any:
    """One extraction setting of a store's fingerprint; a setting newer than the store reads as its default."""
    return fingerprint.get(key, FINGERPRINT_DEFAULTS.get(key))


def array_layout(target_size: int = TARGET_SIZE) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Name → (dtype, per-row shape) of every array in a store."""
    return {
        "features": (np.dtype(np.float16), FEATURE_SHAPE),
        "mask": (np.dtype(np.uint8), (1, target_size, target_size)),
        "target": (np.dtype(np.uint8), (3, target_size, target_size)),
        "score": (np.dtype(np.float32), ()),
        "box": (np.dtype(np.float32), (4,)),
        "origin": (np.dtype(np.uint8), ()),
        "done": (np.dtype(np.uint8), ()),
    }


class FeatureStore:
    """An existing store folder. Arrays are opened memory-mapped on demand (`array`), so a store larger
    than memory is fine and DataLoader workers each open their own maps."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not (self.root / "provenance.json").is_file():
            raise InputError(f"{self.root}: not a feature store (no provenance.json); make one with `wbcvae features`")
        self.provenance: dict[str, Any] = json.loads((self.root / "provenance.json").read_text())
        self.meta = pd.read_csv(self.root / "meta.csv", dtype={"patient": str}, keep_default_na=False)
        self.target_size = int(self.provenance["target_size"])
        self.layout = array_layout(self.target_size)
        for name in self.layout:
            if not (self.root / f"{name}.npy").is_file():
                raise InputError(f"{self.root}: {name}.npy is missing; the store is damaged, remove it and extract again")

    @classmethod
    def create(
        cls, root: str | os.PathLike, meta: pd.DataFrame, provenance: dict[str, Any], target_size: int = TARGET_SIZE
    ) -> FeatureStore:
        """Allocate an empty store of `len(meta)` rows (nothing done) and return it. The folder appears
        only once complete; an existing store at `root` is replaced."""
        rows = len(meta)
        with atomic_path(root) as tmp:
            tmp.mkdir()
            for name, (dtype, shape) in array_layout(target_size).items():
                array = np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=(rows, *shape))
                array.flush()  # zero-filled; sparse on disk until rows are written
                del array
            table = meta.reset_index(names="index")
            table.insert(0, "row", np.arange(rows))
            table.to_csv(tmp / "meta.csv", index=False)
            (tmp / "provenance.json").write_text(json.dumps({**provenance, "rows": rows, "target_size": target_size}, indent=2))
        return cls(root)

    def __len__(self) -> int:
        return len(self.meta)

    def array(self, name: str, writable: bool = False) -> np.memmap:
        """The named array, memory-mapped (read-only unless `writable`)."""
        if name not in self.layout:
            raise KeyError(f"no array {name!r} in a feature store; arrays: {tuple(self.layout)}")
        return np.load(self.root / f"{name}.npy", mmap_mode="r+" if writable else "r")

    @property
    def done(self) -> np.ndarray:
        return np.asarray(self.array("done")).astype(bool)

    def missing(self) -> np.ndarray:
        """Rows not yet extracted, in order."""
        return np.flatnonzero(~self.done)

    def require_complete(self) -> None:
        """Refuse a store with rows not yet extracted: a model read from half the rows would look fine and be wrong."""
        missing = len(self.missing())
        if missing:
            raise InputError(f"{self.root}: {missing} of {len(self)} rows not extracted yet; run `wbcvae features` again to finish")

    def require_feature_shape(self, shape: tuple[int, ...]) -> None:
        """Refuse a store whose features a model reading `shape` cannot take (one line, not a torch error)."""
        stored = tuple(self.layout["features"][1])
        if stored != tuple(shape):
            raise InputError(f"{self.root}: features are {'×'.join(map(str, stored))}, the model reads {'×'.join(map(str, shape))}")

    @property
    def pose(self) -> str:
        """How the crops were turned before Mask R-CNN read them (`wbcvae features --pose`)."""
        return fingerprint_setting(self.provenance.get("fingerprint", {}), "pose")

    def require_read_like(self, trained: dict[str, Any] | None, what: str = "the model's training store") -> None:
        """Refuse a store read by another Mask R-CNN checkpoint, or in another pose, than `trained` (the
        provenance of the store a model was trained on; empty or None when the model records none, which is
        not checked): its features would be another model's language."""
        if not trained:
            return
        fingerprint = trained.get("fingerprint", {})
        if self.provenance.get("fingerprint", {}).get("checkpoint_sha256") != fingerprint.get("checkpoint_sha256"):
            raise InputError(f"{self.root}: extracted with another Mask R-CNN checkpoint than {what}")
        pose = fingerprint_setting(fingerprint, "pose")
        if self.pose != pose:
            raise InputError(f"{self.root}: crops read in pose {self.pose!r}, {what} in pose {pose!r}; "
                             f"extract them again with `wbcvae features … --pose {pose}`")

    def readable_rows(self) -> np.ndarray:
        """Rows whose image could be decoded, in order: the rows a model may read."""
        return np.flatnonzero(np.asarray(self.array("origin")) != UNREADABLE)

    def update_provenance(self, **entries: Any) -> None:
        """Add or replace `entries` in provenance.json, atomically."""
        self.provenance = {**self.provenance, **entries}
        with atomic_path(self.root / "provenance.json") as tmp:
            tmp.write_text(json.dumps(self.provenance, indent=2))

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def write(self, rows: np.ndarray, values: dict[str, np.ndarray]) -> None:
        """Store one batch: every array except `done` for `rows`, flushed, then their `done` flags."""
        rows = np.asarray(rows)
        expected = set(self.layout) - {"done"}
        if set(values) != expected:
            raise ValueError(f"write needs exactly {sorted(expected)}, got {sorted(values)}")
        for name, value in values.items():
            array = self.array(name, writable=True)
            array[rows] = value
            array.flush()
            del array
        done = self.array("done", writable=True)
        done[rows] = 1
        done.flush()

    def table(self) -> pd.DataFrame:
        """`meta.csv` with each row's score, box, origin and done flag beside it."""
        table = self.meta.copy()
        table["score"] = np.asarray(self.array("score"))
        table[["x1", "y1", "x2", "y2"]] = np.asarray(self.array("box"))
        table["origin"] = np.asarray(ORIGINS)[np.asarray(self.array("origin"))]
        table["done"] = self.done
        return table
