"""A picture to judge the synthetic world by eye: synthetic and real crops side by side, one row per class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from wbcvae.data.bad_files import BadFiles
from wbcvae.data.images import read_manifest, read_or_record
from wbcvae.errors import InputError
from wbcvae.utils.atomic import atomic_path
from wbcvae.vocabulary import CLASSES

LABEL_WIDTH = 190
HEADER_HEIGHT = 34
GAP = 14
PAPER = (255, 255, 255)
INK = (30, 30, 30)
EMPTY = (236, 236, 236)


def montage(
    world_dir: str | os.PathLike,
    real_dir: str | os.PathLike | None,
    out_png: str | os.PathLike,
    per_class: int = 3,
    thumb: int = 112,
    bad_files: str = "skip",
) -> Path:
    """Write a PNG grid: per class, `per_class` synthetic crops (spread over pseudotime) then as many real ones.

    `real_dir` is any image source `read_manifest` reads (the PBC sample, a folder tree, a CSV), or None
    for synthetic crops only. Classes the real source lacks get grey tiles. The PNG is stored with a
    256-colour palette so a full grid stays near a megabyte. An unreadable crop is a grey tile under
    `bad_files="skip"` and stops the montage under `"fail"`.
    """
    bad = BadFiles(bad_files)
    if per_class < 1 or thumb < 16:
        raise InputError(f"montage: per_class must be ≥ 1 and thumb ≥ 16 (got {per_class}, {thumb})")
    synthetic = _pick(read_manifest(world_dir).frame, per_class, spread_by="pseudotime")
    real = _pick(read_manifest(real_dir).frame, per_class) if real_dir is not None else None

    columns = per_class * (2 if real is not None else 1)
    width = LABEL_WIDTH + columns * thumb + (GAP if real is not None else 0)
    sheet = Image.new("RGB", (width, HEADER_HEIGHT + len(CLASSES) * thumb), PAPER)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    draw.text((LABEL_WIDTH + 4, 8), "synthetic (wbcvae)", fill=INK, font=font)
    if real is not None:
        draw.text((LABEL_WIDTH + per_class * thumb + GAP + 4, 8), f"real ({Path(real_dir).name})", fill=INK, font=font)
    for row, cls in enumerate(CLASSES):
        top = HEADER_HEIGHT + row * thumb
        draw.text((8, top + thumb // 2 - 9), cls.replace("_", " "), fill=INK, font=font)
        _paste_row(sheet, synthetic.get(cls, []), LABEL_WIDTH, top, per_class, thumb, bad)
        if real is not None:
            left = LABEL_WIDTH + per_class * thumb + GAP
            _paste_row(sheet, real.get(cls, []), left, top, per_class, thumb, bad)
            if cls not in real:
                draw.text((left + 6, top + thumb // 2 - 9), "none in this source", fill=INK, font=font)

    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        sheet.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(tmp, format="PNG", optimize=True)
    bad.report("unreadable image")
    return out_png


def _pick(frame: pd.DataFrame, per_class: int, spread_by: str | None = None) -> dict[str, list[str]]:
    """Paths of up to `per_class` crops per class, evenly spaced through the class (by `spread_by` if given)."""
    picked = {}
    for cls, rows in frame.groupby("label"):
        rows = rows.sort_values(spread_by) if spread_by else rows.sort_values("path")
        at = np.unique(np.linspace(0, len(rows) - 1, min(per_class, len(rows))).round().astype(int))
        picked[str(cls)] = rows["path"].iloc[at].tolist()
    return picked


def _paste_row(
    sheet: Image.Image, paths: list[str], left: int, top: int, per_class: int, thumb: int, bad: BadFiles
) -> None:
    for k in range(per_class):
        pixels = read_or_record(paths[k], bad) if k < len(paths) else None
        tile = (
            Image.fromarray(pixels).resize((thumb, thumb), Image.Resampling.LANCZOS)
            if pixels is not None
            else Image.new("RGB", (thumb, thumb), EMPTY)
        )
        sheet.paste(tile, (left + k * thumb, top))
