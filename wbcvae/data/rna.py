"""RNA sources → one AnnData shape, so preprocessing and training never care where cells came from.

`read_rna(source)` recognises, in this order:

1. an `.h5ad` file, or a folder holding `rna.h5ad` (a synthetic world), or an in-memory `AnnData`.
   Tabula Sapiens conventions: the cell type in `obs[cell_type_key]` (default: the first of
   `cell_ontology_class`, `cell_type`), the atlas embedding in `obsm["X_scvi"]`, raw counts in
   `layers["counts"]`, `layers["raw_counts"]`, `.raw` or `X` (the first that holds whole numbers).
   Files above `LAZY_ABOVE_BYTES` are opened lazily: `obs`, `var` and `obsm` are read, the counts stay
   on disk and `X` is an HDF5-backed matrix that reads only the rows asked for;
2. a folder of van Galen et al. 2019 GEO tables (`GSM*_<sample>.dem.txt.gz`, genes × cells UMI
   counts, with `GSM*_<sample>.anno.txt.gz`, one row per cell), samples concatenated.

Whatever the source, the result has raw counts in `X` (also `layers["counts"]`), one row per cell with
a unique name, and `obs` columns `cell_type` (the source's label, NaN when the source gives none),
`label` (canonical class as a categorical over `CLASSES`, NaN when the cell type names none: such cells
are kept, they still teach a VAE what expression looks like), `sample` and `patient` (strings, "" when
unknown). `uns["wbcvae"]` records the source, the reader, where the counts came from, whether they are
lazy, and the cell types that named no class (`skipped`, cells per label).

Read counts through `read_count_rows(adata, rows)`: it works for in-memory and lazy data alike and
refuses negative or non-finite counts, naming the cell and gene.
"""

from __future__ import annotations

import os
import re
import weakref
from collections import Counter
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from wbcvae.data.bad_files import BadFiles
from wbcvae.errors import InputError, one_line
from wbcvae.utils.atomic import atomic_path
from wbcvae.vocabulary import CLASSES, LabelMapper

WORLD_RNA_NAME = "rna.h5ad"  # a synthetic world's RNA half
CELL_TYPE_KEYS = ("cell_ontology_class", "cell_type")  # tried in order when no key is given
PATIENT_KEYS = ("patient", "donor", "donor_id")
SAMPLE_KEYS = ("sample", "sample_id")
COUNT_LOCATIONS = ("layers/counts", "layers/raw_counts", "raw/X", "X")  # tried in order
LAZY_ABOVE_BYTES = 1 << 30  # larger .h5ad files keep their counts on disk
COUNT_PROBE_ROWS = 1000  # rows looked at to judge whether a matrix holds whole-number counts
MAX_SAMPLE_COLUMNS = 12  # beyond this a per-sample column no longer fits a terminal
# Parsed van Galen tables are kept here as .npz (parsing the gzipped text is most of a run's start-up);
# WBCVAE_CACHE moves it, an empty WBCVAE_CACHE switches it off.
CACHE_DIR = os.environ.get("WBCVAE_CACHE", str(Path.home() / ".cache" / "wbcvae"))
# Atlas .h5ad labels are ontology names, whose short words ("neutrophil") mean a class there; the free-text
# table is the fallback for hand-written labels. Van Galen labels use only their own table.
H5AD_TABLES: tuple[str, ...] = ("tabula_sapiens", "vangalen", "free_text")
VANGALEN_TABLES: tuple[str, ...] = ("vangalen",)
_VANGALEN_FILE = re.compile(r"^(?:GSM\d+_)?(?P<sample>.+)\.(?P<kind>dem|anno)\.txt\.gz$")


def read_rna(
    source: str | os.PathLike | ad.AnnData,
    *,
    cell_type_key: str | None = None,
    counts: str | None = None,
    samples: list[str] | tuple[str, ...] | None = None,
    healthy_only: bool = False,
    unknown: str = "skip",
    lazy: bool | None = None,
    bad_files: str = "skip",
) -> ad.AnnData:
    """Read any supported RNA source (see the module docstring) into the shared AnnData shape.

    `cell_type_key` names the `obs` column holding cell types (h5ad only); `counts` one of
    `COUNT_LOCATIONS` (default: the first holding whole numbers); `samples` / `healthy_only` pick van
    Galen samples (healthy donors are the `BM*` samples); `unknown` is the policy for cell types naming
    no class ("skip" keeps the cells unlabelled and counts them, "fail" raises); `lazy` forces (True) or
    forbids (False) keeping an .h5ad's counts on disk (default: by file size); `bad_files` is the
    policy for van Galen sample tables that cannot be parsed or lack their pair (see `read_vangalen`).
    """
    if isinstance(source, ad.AnnData):
        return _from_anndata(source, "AnnData", cell_type_key, counts, unknown)
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir() and (path / WORLD_RNA_NAME).is_file():
        path = path / WORLD_RNA_NAME
    if path.is_file():
        if path.suffix != ".h5ad":
            raise InputError(f"{path}: an RNA source must be an .h5ad file or a folder of van Galen *.dem.txt.gz tables")
        if samples is not None or healthy_only:
            raise InputError(f"{path}: samples= and healthy_only= select van Galen samples; subset an .h5ad before reading it")
        return _read_h5ad(path, cell_type_key, counts, unknown, lazy)
    if not any(path.iterdir()):
        raise InputError(f"{path}: folder is empty (expected an .h5ad, {WORLD_RNA_NAME} or van Galen *.dem.txt.gz tables)")
    if not any(path.glob("*.dem.txt.gz")):
        raise InputError(f"{path}: no RNA source here (expected {WORLD_RNA_NAME} or van Galen *.dem.txt.gz + *.anno.txt.gz)")
    return read_vangalen(path, samples=samples, healthy_only=healthy_only, unknown=unknown, bad_files=bad_files)


# --- .h5ad ----------------------------------------------------------------------------------------


def _read_h5ad(path: Path, cell_type_key: str | None, counts: str | None, unknown: str, lazy: bool | None) -> ad.AnnData:
    if lazy is None:
        lazy = path.stat().st_size > LAZY_ABOVE_BYTES
    if not lazy:
        try:
            adata = ad.read_h5ad(path)
        except Exception as err:  # h5py and anndata raise many kinds for a file that is not an h5ad
            raise InputError(f"{path}: not a readable .h5ad file ({one_line(err)})") from err
        return _from_anndata(adata, str(path), cell_type_key, counts, unknown)
    try:
        file = h5py.File(path, "r")
        obs, var = ad.io.read_elem(file["obs"]), ad.io.read_elem(file["var"])
        obsm = ad.io.read_elem(file["obsm"]) if "obsm" in file else {}
    except Exception as err:
        raise InputError(f"{path}: not a readable .h5ad file ({one_line(err)})") from err
    candidates = {}
    for location in COUNT_LOCATIONS:
        if location in file:
            element = file[location]
            matrix = ad.io.sparse_dataset(element) if isinstance(element, h5py.Group) else element
            if isinstance(matrix, ad.abc.CSCDataset):  # R-written files often are: every row read would load it all
                raise InputError(f"{path}: {location} is stored by gene (CSC), not by cell; read it with lazy=False or rewrite it as CSR")
            candidates[location] = (matrix, ad.io.read_elem(file["raw/var"]) if location == "raw/X" else var)
    location, matrix, genes = _choose_counts(candidates, counts, str(path))
    adata = ad.AnnData(X=matrix, obs=obs, var=genes, obsm={k: v for k, v in obsm.items() if len(v) == len(obs)})
    return _finish_h5ad(adata, str(path), location, lazy=True, cell_type_key=cell_type_key, unknown=unknown)


def _from_anndata(source: ad.AnnData, where: str, cell_type_key: str | None, counts: str | None, unknown: str) -> ad.AnnData:
    candidates = {f"layers/{k}": (source.layers[k], source.var) for k in ("counts", "raw_counts") if k in source.layers}
    if source.raw is not None:
        candidates["raw/X"] = (source.raw.X, source.raw.var)
    if source.X is not None:
        candidates["X"] = (source.X, source.var)
    location, matrix, genes = _choose_counts(candidates, counts, where)
    matrix = sp.csr_matrix(matrix)  # counts are mostly zeros; CSR also makes row reads cheap
    adata = ad.AnnData(X=matrix, obs=source.obs.copy(), var=genes.copy(), obsm=dict(source.obsm), uns=dict(source.uns))
    return _finish_h5ad(adata, where, location, lazy=False, cell_type_key=cell_type_key, unknown=unknown)


def _choose_counts(candidates: dict, requested: str | None, where: str) -> tuple[str, object, pd.DataFrame]:
    """The (location, matrix, var) holding raw counts: the requested one, or the first with whole numbers."""
    if requested is not None:
        if requested not in COUNT_LOCATIONS:
            raise InputError(f"counts location must be one of {COUNT_LOCATIONS}, got {requested!r}")
        if requested not in candidates:
            raise InputError(f"{where}: no {requested} to read counts from (present: {', '.join(candidates) or 'none'})")
        return (requested, *candidates[requested])
    for location, (matrix, var) in candidates.items():
        if _holds_whole_numbers(matrix):
            return location, matrix, var
    raise InputError(
        f"{where}: no raw counts found (non-integer values, e.g. log-normalised, in: {', '.join(candidates) or 'no matrix'}); "
        "store counts in layers['counts'] or pass counts="
    )


def _holds_whole_numbers(matrix) -> bool:
    probe = matrix[: min(COUNT_PROBE_ROWS, matrix.shape[0])]
    values = probe.data if sp.issparse(probe) else np.asarray(probe)
    if np.issubdtype(values.dtype, np.integer):
        return True
    finite = values[np.isfinite(values)]
    return bool(np.all(finite == np.round(finite)))


def _finish_h5ad(adata: ad.AnnData, where: str, location: str, lazy: bool, cell_type_key: str | None, unknown: str) -> ad.AnnData:
    """Check names (and in-memory counts), find the cell types and donors, label the cells."""
    _check_names(adata, where)
    if not lazy:
        _check_counts(adata, adata.X, where, location)  # lazy counts are checked as rows are read
    key = _cell_type_key(adata.obs, cell_type_key, where)
    obs = adata.obs
    obs["patient"] = _first_column(obs, PATIENT_KEYS)
    sample = _first_column(obs, SAMPLE_KEYS)
    obs["sample"] = sample.where(sample != "", obs["patient"])
    skipped = _label_cells(obs, obs[key], H5AD_TABLES, unknown, where)
    return _finish(adata, dict(source=where, reader="h5ad", counts=location, lazy=lazy, skipped=dict(skipped)))


def _cell_type_key(obs: pd.DataFrame, requested: str | None, where: str) -> str:
    if requested is not None:
        if requested not in obs:
            raise InputError(f"{where}: no obs column {requested!r} (obs has: {', '.join(map(str, obs.columns)) or 'nothing'})")
        return requested
    for key in CELL_TYPE_KEYS:
        if key in obs:
            return key
    raise InputError(f"{where}: no cell-type column ({' or '.join(CELL_TYPE_KEYS)}) in obs; pass cell_type_key=")


def _first_column(obs: pd.DataFrame, keys: tuple[str, ...]) -> pd.Series:
    for key in keys:
        if key in obs:
            return obs[key].astype("string").fillna("").astype(str)
    return pd.Series("", index=obs.index, dtype=object)


# --- van Galen 2019 GEO tables ------------------------------------------------------------------


def read_vangalen(
    folder: str | os.PathLike,
    samples: list[str] | tuple[str, ...] | None = None,
    healthy_only: bool = False,
    unknown: str = "skip",
    bad_files: str = "skip",
) -> ad.AnnData:
    """Concatenate van Galen samples: counts (CSR int32) from `*.dem.txt.gz`, cell types from `*.anno.txt.gz`.

    Files pair by sample name (their GSM numbers differ). Healthy donors are the `BM*` samples; the
    patient is the sample name without its time point or sort (`AML328-D0` → `AML328`, `BM5-34p` → `BM5`).
    Extra annotation columns (`PredictionRefined`, lineage scores, …) are kept in `obs`.

    A file without its pair, or a sample whose table cannot be parsed, is left out and named (a warning,
    and `uns["wbcvae"]["bad_files"]`, one reason per file, naming it) under `bad_files="skip"`; `"fail"` stops, naming it.
    """
    folder = Path(folder)
    bad = BadFiles(bad_files)
    tables = _vangalen_files(folder, bad)
    chosen = list(tables)
    if samples is not None:
        missing = [s for s in samples if s not in tables]
        if missing:
            raise InputError(f"{folder}: no sample {missing[0]!r} (samples: {', '.join(sorted(tables))})")
        chosen = list(dict.fromkeys(samples))
    if healthy_only:
        chosen = [s for s in chosen if _is_healthy(s)]
        if not chosen:
            raise InputError(f"{folder}: none of the chosen samples is from a healthy donor (BM*)")
    matrices, frames, genes = [], [], None
    for sample in chosen:
        dem, anno = tables[sample]
        try:
            matrix, sample_genes, cells = _read_dem(dem)
        except InputError as err:
            bad.add(dem, str(err))
            continue
        try:
            sample_obs = _read_anno(anno, cells, sample)
        except InputError as err:
            bad.add(anno, str(err))
            continue
        if genes is None:
            genes, first_dem = sample_genes, dem
        elif not sample_genes.equals(genes):
            raise InputError(f"{dem}: genes differ from those of {first_dem.name}; samples must share one gene list")
        frames.append(sample_obs)
        matrices.append(matrix)
    bad.report("unreadable or unpaired sample file", named=len(bad))
    if not frames:
        raise InputError(f"{folder}: no sample could be read ({'; '.join(bad.files.values())})")
    obs = pd.concat(frames)
    adata = ad.AnnData(X=sp.vstack(matrices, format="csr"), obs=obs.drop(columns="CellType"), var=pd.DataFrame(index=genes))
    _check_names(adata, str(folder))
    _check_counts(adata, adata.X, str(folder), "dem tables")
    skipped = _label_cells(adata.obs, obs["CellType"], VANGALEN_TABLES, unknown, str(folder))
    info = dict(source=str(folder), reader="vangalen", counts="X", lazy=False, skipped=dict(skipped), bad_files=list(bad.files.values()))
    return _finish(adata, info)


def _vangalen_files(folder: Path, bad: BadFiles) -> dict[str, tuple[Path, Path]]:
    """sample → (dem, anno), in file-name order. Files without their pair go to `bad`, all of them named
    at once under `fail`: a folder copied in part usually misses several."""
    found: dict[str, dict[str, Path]] = {}
    for f in sorted(folder.glob("*.txt.gz")):
        match = _VANGALEN_FILE.match(f.name)
        if match:
            found.setdefault(match["sample"], {})[match["kind"]] = f
    unpaired = {
        f: f"{f}: no matching {sample}.{'anno' if kind == 'dem' else 'dem'}.txt.gz beside it"
        for sample, kinds in found.items()
        if len(kinds) == 1
        for kind, f in kinds.items()
    }
    if unpaired and bad.policy == "fail":
        names = ", ".join(f.name for f in unpaired)
        raise InputError(f"{folder}: {len(unpaired)} sample file(s) without their .dem/.anno pair: {names}; pass --bad-files skip to leave them out")
    for f, reason in unpaired.items():
        bad.add(f, reason)
    return {sample: (kinds["dem"], kinds["anno"]) for sample, kinds in found.items() if len(kinds) == 2}


def _read_dem(path: Path) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    """`_parse_dem`, through an .npz cache keyed by the table's path, size and modification time."""
    if not CACHE_DIR:
        return _parse_dem(path)
    stat = path.stat()
    cached = Path(CACHE_DIR) / "vangalen" / f"{path.name}.{stat.st_size}.{stat.st_mtime_ns}.npz"
    if cached.is_file():
        with np.load(cached, allow_pickle=False) as saved:
            matrix = sp.csr_matrix((saved["data"], saved["indices"], saved["indptr"]), shape=tuple(saved["shape"]))
            return matrix, pd.Index(saved["genes"].astype(str)), pd.Index(saved["cells"].astype(str))
    matrix, genes, cells = _parse_dem(path)
    try:
        with atomic_path(cached) as tmp, open(tmp, "wb") as file:
            np.savez(file, data=matrix.data, indices=matrix.indices, indptr=matrix.indptr, shape=np.array(matrix.shape),
                     genes=genes.to_numpy(dtype=str), cells=cells.to_numpy(dtype=str))  # fmt: skip
    except OSError:  # (WriteError is one) a read-only home: no cache, the table was read all the same
        pass
    return matrix, genes, cells


def _parse_dem(path: Path) -> tuple[sp.csr_matrix, pd.Index, pd.Index]:
    """cells × genes CSR int32 from a genes × cells table, read in blocks of genes to bound memory."""
    try:
        header = pd.read_csv(path, sep="\t", nrows=0).columns
        blocks, genes = [], []
        for block in pd.read_csv(path, sep="\t", index_col=0, dtype={c: np.int32 for c in header[1:]}, chunksize=4096):
            blocks.append(sp.csr_matrix(block.to_numpy()))
            genes.append(block.index)
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: not a genes × cells table of whole-number counts ({one_line(err)})") from err
    if not blocks:
        raise InputError(f"{path}: holds no genes")
    gene_index = pd.Index(np.concatenate([g.to_numpy(dtype=object) for g in genes]).astype(str))
    if gene_index.has_duplicates:
        raise InputError(f"{path}: gene {gene_index[gene_index.duplicated()][0]!r} appears twice")
    return sp.vstack(blocks).T.tocsr(), gene_index, pd.Index(header[1:].astype(str))


def _read_anno(path: Path, cells: pd.Index, sample: str) -> pd.DataFrame:
    try:
        anno = pd.read_csv(path, sep="\t", dtype={"Cell": str, "CellType": str})
    except (ValueError, OSError, EOFError, pd.errors.ParserError) as err:
        raise InputError(f"{path}: not a readable annotation table ({one_line(err)})") from err
    for column in ("Cell", "CellType"):
        if column not in anno:
            raise InputError(f"{path}: no column {column!r}")
    if anno["Cell"].duplicated().any():
        raise InputError(f"{path}: duplicate cell name {anno['Cell'][anno['Cell'].duplicated()].iloc[0]!r}")
    extra = anno["Cell"][~anno["Cell"].isin(cells)]
    if len(extra):
        raise InputError(f"{path}: cell {extra.iloc[0]!r} is not a column of the matching .dem table")
    obs = anno.set_index("Cell").reindex(cells)
    obs.index.name = None
    obs["sample"] = sample
    obs["patient"] = re.sub(r"-(D\d+|34p.*)$", "", sample)
    obs["healthy"] = _is_healthy(sample)
    return obs


def _is_healthy(sample: str) -> bool:
    return sample.startswith("BM")


# --- shared by all readers ----------------------------------------------------------------------


def _label_cells(obs: pd.DataFrame, cell_types, tables: tuple[str, ...], unknown: str, where: str) -> Counter:
    """Set `obs["cell_type"]` and `obs["label"]` (categorical over CLASSES); count cells whose type names none."""
    types = pd.Series(np.asarray(cell_types, dtype=object), index=obs.index)
    missing = types.isna()
    if unknown == "fail" and missing.any():
        raise InputError(f"{where}: cell {types.index[missing][0]!r} has no cell type (use unknown='skip' to keep it unlabelled)")
    types = types.where(missing, types.astype(str))
    mapper = LabelMapper(tables, unknown)
    classes = {t: mapper(t, where) for t in types[~missing].unique()}
    obs["cell_type"] = pd.Categorical(types)
    obs["label"] = pd.Categorical(types.map(classes), categories=list(CLASSES))
    unlabelled = types.where(~missing, "(none)")[obs["label"].isna().to_numpy()]
    return Counter({label: int(n) for label, n in unlabelled.value_counts().items()})


def _finish(adata: ad.AnnData, info: dict) -> ad.AnnData:
    """Contract columns first in `obs`, counts also as `layers["counts"]` (in memory), provenance in `uns`."""
    front = [c for c in ("cell_type", "label", "sample", "patient", "healthy") if c in adata.obs]
    adata.obs = adata.obs[front + [c for c in adata.obs if c not in front]]
    if not info["lazy"]:
        adata.layers["counts"] = adata.X
    adata.uns["wbcvae"] = info
    return adata


def _check_names(adata: ad.AnnData, where: str) -> None:
    for axis, names in (("cell", adata.obs_names), ("gene", adata.var_names)):
        if names.has_duplicates:
            raise InputError(f"{where}: duplicate {axis} name {names[names.duplicated()][0]!r}")


def _check_counts(adata: ad.AnnData, matrix: sp.csr_matrix, where: str, location: str, rows: np.ndarray | None = None) -> None:
    """Refuse negative or non-finite counts in a CSR block, naming the first offending cell and gene.

    `rows` are the block's rows in `adata` when it is not the whole matrix.
    """
    values = matrix.data
    if np.issubdtype(values.dtype, np.integer) and (values.size == 0 or values.min() >= 0):
        return
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(matrix.indptr, first, side="right")) - 1
        cell = adata.obs_names[row if rows is None else int(rows[row])]
        kind = "negative" if values[first] < 0 else "non-finite"
        raise InputError(
            f"{where}: {kind} count {values[first]} in {location} for cell {cell!r}, "
            f"gene {adata.var_names[int(matrix.indices[first])]!r}"
        )


def read_count_rows(adata: ad.AnnData, rows: np.ndarray | slice) -> sp.csr_matrix:
    """Counts of the cells at `rows` (all genes), as CSR float32, read from memory or disk alike.

    Rows may come in any order; HDF5 wants them increasing, so they are read sorted and put back.
    Each read of a lazy file is checked, so bad counts there are caught when first touched.
    """
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(adata.n_obs))
    rows = np.asarray(rows, dtype=np.int64)
    increasing = bool(np.all(rows[1:] >= rows[:-1]))  # a split's rows usually are: no reordering to undo
    order = np.arange(len(rows)) if increasing else np.argsort(rows, kind="stable")
    if isinstance(adata.X, ad.abc.CSRDataset):
        block = _read_disk_csr_rows(adata.X, rows[order])
    else:
        block = sp.csr_matrix(adata.X[rows[order]] if len(rows) else (0, adata.n_vars))
    block = block.astype(np.float32, copy=False)
    info = adata.uns.get("wbcvae", {})
    if info.get("lazy"):
        _check_counts(adata, block, info["source"], info["counts"], rows=rows[order])
    return block if increasing else block[np.argsort(order)]


_INDPTR_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # on-disk matrix → its row pointers


def _read_disk_csr_rows(matrix: ad.abc.CSRDataset, rows: np.ndarray) -> sp.csr_matrix:
    """Increasing `rows` of an on-disk CSR matrix, one HDF5 read per run of consecutive rows.

    anndata's own indexing re-validates (and looks up package versions) on every call, which cost
    more than the read itself for one batch; the row pointers are read once and kept.
    """
    group = matrix.group
    if matrix not in _INDPTR_CACHE:
        _INDPTR_CACHE[matrix] = group["indptr"][:].astype(np.int64)
    indptr = _INDPTR_CACHE[matrix]
    starts, ends = indptr[rows], indptr[rows + 1]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    first, last = np.r_[0, breaks], np.r_[breaks, len(rows)] - 1
    data, indices = group["data"], group["indices"]
    runs = [(starts[a], ends[b]) for a, b in zip(first, last) if ends[b] > starts[a]]
    return sp.csr_matrix(
        (
            np.concatenate([data[a:b] for a, b in runs]) if runs else np.zeros(0, data.dtype),
            np.concatenate([indices[a:b] for a, b in runs]) if runs else np.zeros(0, indices.dtype),
            np.r_[0, np.cumsum(ends - starts)],
        ),
        shape=(len(rows), matrix.shape[1]),
    )


def rna_summary(adata: ad.AnnData) -> dict[str, pd.DataFrame]:
    """Tables a person checks before training, by title: cells per cell type (with the class it maps to
    and, for up to `MAX_SAMPLE_COLUMNS` samples, a column per sample), per sample, and per class."""
    obs = adata.obs
    cell_type = obs["cell_type"].astype(object).where(obs["cell_type"].notna(), "(none)")
    label = obs["label"].astype(object).where(obs["label"].notna(), "")
    per_type = (
        pd.DataFrame({"cell_type": cell_type, "class": label})
        .groupby(["cell_type", "class"])
        .size()
        .rename("cells")
        .reset_index(level="class")
        .sort_values("cells", ascending=False, kind="stable")
    )
    if 1 < obs["sample"].nunique() <= MAX_SAMPLE_COLUMNS:
        per_type = per_type.join(pd.crosstab(cell_type, obs["sample"]))
    keys = ["sample", "patient"] + (["healthy"] if "healthy" in obs else [])
    per_sample = (
        obs[keys]
        .assign(labelled=obs["label"].notna())
        .groupby(keys, observed=True)
        .agg(cells=("labelled", "size"), labelled=("labelled", "sum"))
        .reset_index(level=keys[1:])
    )
    per_class = obs["label"].value_counts().reindex(list(CLASSES), fill_value=0).rename("cells").to_frame()
    return {
        "cells per cell type (class: the canonical class it maps to, blank when none)": per_type,
        "cells per sample": per_sample,
        "cells per class": per_class,
    }

