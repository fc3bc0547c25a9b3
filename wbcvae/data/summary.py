"""`wbcvae data summary`: what a source holds, per class and per patient/sample, before anything trains on it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from wbcvae.errors import InputError
from wbcvae.vocabulary import CLASSES

MAX_PATIENT_COLUMNS = 12  # beyond this a per-patient table no longer fits a terminal


def source_kind(source: Path) -> str:
    """'images', 'rna' or 'world' (a synthetic world holds both), judged from what is on disk."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    if source.is_file():
        return "rna" if source.suffix == ".h5ad" else "images"
    if (source / "rna.h5ad").is_file() and (source / "manifest.csv").is_file():
        return "world"
    if any(source.glob("*.dem.txt.gz")) or (source / "rna.h5ad").is_file():
        return "rna"
    return "images"


def summarise(source: Path, unknown: str = "skip", check: bool = False, bad_files: str = "skip") -> str:
    """The text of `wbcvae data summary`. `check` decodes every image (one pass, with a progress bar) and
    lists the unreadable ones; under `bad_files="fail"` the first stops the summary, naming it."""
    kind = source_kind(source)
    parts = []
    if kind in ("images", "world"):
        parts.append(image_summary(source, unknown, check, bad_files))
    if kind in ("rna", "world"):
        parts.append(rna_summary_text(source, unknown, bad_files))
    return "\n\n".join(parts)


def image_summary(source: Path, unknown: str = "skip", check: bool = False, bad_files: str = "skip") -> str:
    from wbcvae.data.bad_files import BadFiles
    from wbcvae.data.images import check_images, read_manifest

    manifest = read_manifest(source, unknown=unknown)
    bad = BadFiles(bad_files)
    frame = check_images(manifest.frame, bad) if check else manifest.frame
    per_class = frame["label"].value_counts().reindex(CLASSES, fill_value=0).rename("crops")
    table = per_class.to_frame()
    patients = sorted(p for p in frame["patient"].unique() if p)
    if 0 < len(patients) <= MAX_PATIENT_COLUMNS:
        table = table.join(pd.crosstab(frame["label"], frame["patient"]).reindex(CLASSES, fill_value=0))
    elif patients:
        table["patients"] = frame[frame["patient"] != ""].groupby("label")["patient"].nunique()
        table["patients"] = table["patients"].fillna(0).astype(int)
    lines = [
        f"Images: {source} ({manifest.source}): {len(frame)} crops, "
        f"{(per_class > 0).sum()} of {len(CLASSES)} classes, {len(patients) or 'no'} patients recorded",
        table.rename_axis(None).to_string(),
    ]
    if manifest.skipped:
        skipped = ", ".join(f"{label} {n}" for label, n in sorted(manifest.skipped.items()))
        lines.append(f"skipped (label names none of the 13 classes): {skipped}")
    if check:
        lines.append(f"checked: every image decoded, {len(bad) or 'none'} unreadable{' (left out above):' if bad else ''}")
        lines += [f"  {reason}" for reason in bad.files.values()]
    return "\n".join(lines)


def rna_summary_text(source: Path, unknown: str = "skip", bad_files: str = "skip") -> str:
    from wbcvae.data.rna import read_rna, rna_summary

    adata = read_rna(source, unknown=unknown, bad_files=bad_files)
    tables = rna_summary(adata)
    lines = [f"RNA: {source}: {adata.n_obs} cells x {adata.n_vars} genes"]
    skipped_files = adata.uns["wbcvae"].get("bad_files", [])
    if len(skipped_files):
        lines.append(f"skipped {len(skipped_files)} sample file(s) (left out below):")
        lines += [f"  {reason}" for reason in skipped_files]
    for title, table in tables.items():
        lines += ["", title, table.to_string()]
    return "\n".join(lines)
