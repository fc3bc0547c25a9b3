"""Image sources → one manifest: every reader ends in the same table of crops, so nothing downstream cares
where the crops came from.

`read_manifest(source)` recognises, in this order:

1. a CSV file (or a folder holding `manifest.csv`, e.g. a synthetic world):
   columns `path,label[,patient][,mask_path]`, any further columns kept; relative paths are relative to
   the CSV's folder;
2. the PBC layout (Acevedo et al. 2020): more than half the file names start with a PBC prefix (`BNE_123.jpg`), and the
   prefix is the class, whatever folder the file sits in;
3. a folder tree: the class is the nearest folder above the file whose name maps to a class, at any depth.
   The patient is the top-level folder under the source when the class folder lies below it and does not
   itself name a class: `Patient_07/Signed slides/Monocyte/x.jpg` → patient `Patient_07`, while
   `Monocyte/x.jpg` has no patient. Layouts this rule does not fit are best written as a CSV.

Labels go through `wbcvae.vocabulary.LabelMapper`: unknown labels are skipped and counted, or fail.
`load_image` turns any JPEG/PNG/BMP/TIFF (8/16-bit, grey/RGB/RGBA) into uint8 RGB; `load_mask` reads the
synthetic label masks (0 background, 1 cytoplasm, 2 nucleus).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wbcvae.data.bad_files import BadFiles
from wbcvae.errors import InputError, one_line
from wbcvae.vocabulary import PBC_PREFIXES, LabelMapper, resolve

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# Image datasets name classes by clinicians' words, Munich abbreviations or PBC prefixes; the RNA tables
# are left out because their short names ("B", "T") would turn ordinary folder names into classes.
IMAGE_TABLES: tuple[str, ...] = ("free_text", "munich_aml", "pbc")
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("path", "label", "patient", "source_label", "mask_path")
MASK_VALUES = (0, 1, 2)  # background, cytoplasm, nucleus


@dataclass
class ImageManifest:
    """One row per crop: `frame` columns `path` (absolute), `label` (canonical class), `patient` ("" when
    unknown), `source_label` (as the source wrote it), `mask_path` (absolute or ""), then any extra CSV
    columns. `skipped` counts crops whose label names none of the 13 classes; `source` names the reader
    ("csv", "pbc" or "folder")."""

    frame: pd.DataFrame
    skipped: Counter = field(default_factory=Counter)
    source: str = ""

    def __len__(self) -> int:
        return len(self.frame)


def read_manifest(
    source: str | os.PathLike, unknown: str = "skip", tables: Iterable[str] | None = None
) -> ImageManifest:
    """Read any supported image source into an `ImageManifest` (see the module docstring for the layouts).

    `unknown` is the policy for labels that name no class ("skip" counts them, "fail" raises);
    `tables` are the alias tables tried, in order (default: PBC prefixes for the PBC layout,
    `IMAGE_TABLES` otherwise).
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such file or folder")
    chosen = tuple(tables) if tables is not None else None
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise InputError(f"{source}: an image source must be a folder or a .csv manifest")
        return _read_csv(source, LabelMapper(chosen or IMAGE_TABLES, unknown))
    if (source / MANIFEST_NAME).is_file():
        return _read_csv(source / MANIFEST_NAME, LabelMapper(chosen or IMAGE_TABLES, unknown))
    files = _image_files(source)
    if not files:
        raise InputError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder or below it")
    if sum(_pbc_prefix(f) is not None for f in files) * 2 > len(files):
        return _read_pbc(source, files, LabelMapper(chosen or ("pbc",), unknown))
    return _read_folder_tree(source, files, LabelMapper(chosen or IMAGE_TABLES, unknown))


def _image_files(root: Path) -> list[Path]:
    """Image files under `root`, sorted, following symlinks, skipping hidden files (`.DS_Store`, `._x.jpg`)."""
    found = []
    for folder, subfolders, names in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [
            Path(folder, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES
        ]
    return sorted(found)


def _pbc_prefix(path: Path) -> str | None:
    prefix = path.name.split("_", 1)[0].upper()
    return prefix if "_" in path.name and prefix in PBC_PREFIXES else None


def _finish(
    rows: list[dict], mapper: LabelMapper, source: Path, reader: str, extra: pd.DataFrame | None = None
) -> ImageManifest:
    """Drop rows whose label mapped to nothing, put the contract's columns first, refuse an empty result."""
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    if extra is not None:
        frame = pd.concat([frame, extra.drop(columns=list(MANIFEST_COLUMNS), errors="ignore")], axis=1)
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    if frame.empty:
        skipped = ", ".join(f"{label} {n}" for label, n in mapper.skipped.most_common())
        raise InputError(f"{source}: no crop has a label naming one of the 13 classes (skipped: {skipped})")
    return ImageManifest(frame=frame, skipped=mapper.skipped, source=reader)


def _read_pbc(root: Path, files: list[Path], mapper: LabelMapper) -> ImageManifest:
    rows = []
    for f in files:
        prefix = _pbc_prefix(f) or f.stem.split("_", 1)[0]
        label = mapper(prefix, str(f))
        rows.append(dict(path=_absolute(f), label=label, patient="", source_label=prefix, mask_path=""))
    return _finish(rows, mapper, root, "pbc")


def _read_folder_tree(root: Path, files: list[Path], mapper: LabelMapper) -> ImageManifest:
    placement: dict[Path, tuple[str, str]] = {}  # folder → (source label, patient), worked out once per folder
    rows = []
    for f in files:
        if f.parent not in placement:
            placement[f.parent] = _place(f.parent.relative_to(root).parts, mapper.tables, f.parent.name)
        source_label, patient = placement[f.parent]
        rows.append(
            dict(
                path=_absolute(f),
                label=mapper(source_label, str(f)),
                patient=patient,
                source_label=source_label,
                mask_path="",
            )
        )
    return _finish(rows, mapper, root, "folder")


def _place(folders: tuple[str, ...], tables: tuple[str, ...], parent_name: str) -> tuple[str, str]:
    """(source label, patient) for a file under `folders` (relative to the source, outermost first).

    The label is the nearest folder naming a class; with none, the file's own folder name, so that the
    unknown label is counted under a name the user recognises.
    """
    for depth in range(len(folders) - 1, -1, -1):
        if resolve(folders[depth], tables) is not None:
            top = folders[0]
            patient = top if depth > 0 and resolve(top, tables) is None else ""
            return folders[depth], patient
    return parent_name, ""


def _read_csv(csv: Path, mapper: LabelMapper) -> ImageManifest:
    text_columns = {"path": str, "label": str, "patient": str, "mask_path": str}
    try:
        table = pd.read_csv(csv, dtype=text_columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{csv}: not a readable CSV manifest ({one_line(err)})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("path", "label"):
        if column not in table.columns:
            raise InputError(f"{csv}: no '{column}' column (columns: {', '.join(table.columns)})")
    if table.empty:
        raise InputError(f"{csv}: the manifest lists no crops")
    if table["path"].isna().any():
        line = int(np.flatnonzero(table["path"].isna())[0]) + 2  # +1 for the header, +1 for 1-based lines
        raise InputError(f"{csv}: line {line} has an empty path")
    base = csv.parent
    paths = [_absolute(base / p) for p in table["path"]]
    masks = [_absolute(base / m) if isinstance(m, str) and m else "" for m in table.get("mask_path", [""] * len(table))]
    repeated = Counter(paths).most_common(1)[0]
    if repeated[1] > 1:
        raise InputError(f"{csv}: {repeated[0]} is listed {repeated[1]} times")
    missing = [p for p in paths + masks if p and not os.path.isfile(p)]
    if missing:
        raise InputError(f"{csv}: {len(missing)} listed file(s) do not exist, the first: {missing[0]}")
    labels = table["label"].fillna("").astype(str).str.strip()
    patients = table["patient"].fillna("").astype(str).str.strip() if "patient" in table else [""] * len(table)
    rows = [
        dict(path=p, label=mapper(lab, f"{csv}, line {i + 2}"), patient=pat, source_label=lab, mask_path=m)
        for i, (p, lab, pat, m) in enumerate(zip(paths, labels, patients, masks))
    ]
    return _finish(rows, mapper, csv, "csv", extra=table)


def _absolute(path: str | os.PathLike) -> str:
    """Absolute and normalised, but symlinks kept: a linked patient folder keeps its name."""
    return os.path.normpath(os.path.abspath(path))



# --- Pixels -------------------------------------------------------------------------------------


def load_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as uint8 `H×W×3` RGB.

    16-bit data is scaled by its full range (65535 → 255), as a viewer shows it; per-image contrast
    stretching would make the stain colour depend on each image's brightest pixel. Grey is replicated to
    three channels. Transparency is composited over white, the colour of an empty smear background, so
    transparent margins look like slide rather than black ink. Float images must lie in [0, 1].
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{path}: unsupported image format {path.suffix!r} (supported: {', '.join(IMAGE_SUFFIXES)})")
    pixels = _read_pixels(path)
    return _to_rgb_uint8(pixels, path)


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A label mask as uint8 `H×W` with values 0 background, 1 cytoplasm, 2 nucleus."""
    path = Path(path)
    mask = _read_pixels(path)
    if mask.ndim != 2:
        raise InputError(f"{path}: a mask must have one channel of labels, this one has shape {mask.shape}")
    bad = np.setdiff1d(np.unique(mask), MASK_VALUES)
    if bad.size:
        raise InputError(f"{path}: mask value {bad[0]} is not one of {MASK_VALUES} (background, cytoplasm, nucleus)")
    return mask.astype(np.uint8)


def _read_pixels(path: Path) -> np.ndarray:
    """The file's samples as stored (any dtype, channels last), or `InputError` naming the file."""
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _read_tiff(path)
        return _read_with_pil(path)
    except InputError:
        raise
    except Exception as err:  # PIL and tifffile raise many kinds (OSError, SyntaxError, ValueError, …)
        raise InputError(f"{path}: cannot read this image ({one_line(err)})") from None


def _read_with_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # decode now, so truncated files fail here, naming the file
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")  # a palette may carry transparency
        elif image.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "F") and not image.mode.startswith("I;16"):
            image = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV
        pixels = np.asarray(image)
    if image.mode == "I":  # 16-bit PNGs decode to 32-bit ints holding 0‥65535
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise InputError(f"{path}: 32-bit integer pixels outside 0‥65535 are not supported")
        pixels = pixels.astype(np.uint16)
    return pixels


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        pixels = series.asarray()
        axes = series.axes
        page = tif.pages[0]
        photometric = page.photometric
        colormap = page.colormap
    keep = [i for i, n in enumerate(pixels.shape) if n > 1 or axes[i] in "YX"]
    pixels, axes = pixels.reshape([pixels.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    if axes in ("SYX", "CYX"):  # planar RGB, or ImageJ-style channels first
        pixels, axes = np.moveaxis(pixels, 0, -1), "YXS"
    if axes not in ("YX", "YXS"):
        raise InputError(f"{path}: TIFF with axes {axes} (several planes?) is not supported; expected one 2-D image")
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        pixels = np.moveaxis(colormap[:, pixels], 0, -1)  # colormap is 3×2^bits, uint16
    elif photometric == tifffile.PHOTOMETRIC.MINISWHITE and pixels.dtype.kind == "u":
        pixels = np.iinfo(pixels.dtype).max - pixels
    elif photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR):
        raise InputError(f"{path}: TIFF photometric {photometric.name} is not supported (grey, RGB, palette)")
    return pixels


def _to_rgb_uint8(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    channels = pixels.shape[2] if pixels.ndim == 3 else 0
    if channels not in (1, 2, 3, 4):
        raise InputError(f"{path}: unsupported image layout {pixels.shape}; expected grey, grey+alpha, RGB or RGBA")
    if pixels.dtype == np.uint8 and channels in (1, 3):  # the common case (JPEG, PNG): no arithmetic needed
        return np.ascontiguousarray(np.repeat(pixels, 3 // channels, axis=2))
    unit = _to_unit_float(pixels, path)
    colour, alpha = (unit, None) if channels in (1, 3) else (unit[:, :, :-1], unit[:, :, -1:])
    if alpha is not None:
        colour = colour * alpha + (1.0 - alpha)  # over white
    colour = np.repeat(colour, 3 // colour.shape[2], axis=2)
    return np.round(colour * 255.0).astype(np.uint8)


def _to_unit_float(pixels: np.ndarray, path: Path) -> np.ndarray:
    """Samples scaled to [0, 1] by the full range of their type."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize <= 2:  # any byte order
        return pixels.astype(np.float32) / np.iinfo(pixels.dtype).max
    if pixels.dtype.kind == "f":
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise InputError(f"{path}: floating-point pixels must be finite and in [0, 1]")
        return pixels.astype(np.float32)
    raise InputError(f"{path}: unsupported pixel type {pixels.dtype} (8- or 16-bit unsigned, bool, or float in [0, 1])")



def read_or_record(path: str | os.PathLike, bad_files: BadFiles) -> np.ndarray | None:
    """`load_image(path)`, or None for an unreadable file, recorded in `bad_files` (which raises under `fail`)."""
    try:
        return load_image(path)
    except InputError as err:
        bad_files.add(path, str(err))
        return None


def check_images(frame: pd.DataFrame, bad_files: BadFiles, progress: bool = True) -> pd.DataFrame:
    """Decode every crop of `frame` (its `path` column) and return the rows that read; the others go to
    `bad_files` (or raise under `fail`). One pass over the pixels, with a progress bar."""
    from tqdm.auto import tqdm

    with tqdm(frame["path"], desc="checking images", unit="crop", disable=not progress) as paths:  # closed before an error prints
        readable = [read_or_record(path, bad_files) is not None for path in paths]
    return frame[np.asarray(readable, dtype=bool)]
