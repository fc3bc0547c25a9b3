"""Write files and folders so that a crash never leaves a half-written result behind, and a failed write
(read-only folder, full disk, file-size limit) says so in one line, the previous result untouched."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wbcvae.errors import WriteError

# errno → what happened and what to do about it
WRITE_FAILURES = {
    errno.EROFS: "the file system is read-only; choose an output folder on a writable disk",
    errno.EACCES: "permission denied; choose an output folder you may write to",
    errno.EPERM: "permission denied; choose an output folder you may write to",
    errno.ENOSPC: "no space left on the disk; free some space or choose another output folder, then rerun",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another output folder, then rerun",
    errno.EFBIG: "file too large for this system's file-size limit (`ulimit -f`); raise the limit or choose another disk, then rerun",
    errno.ENOTDIR: "a parent of this path is a file, not a folder; choose another output path",
}


def write_failure(err: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """One line naming the path, what went wrong and what to do, when `err` is a failed write; else None.

    HDF5 (h5py) reports the errno only inside its message (`errno = 28`), so that is read too.
    """
    code = getattr(err, "errno", None)
    filename = getattr(err, "filename", None)
    if code == errno.EEXIST and filename and not Path(filename).is_dir():  # `mkdir -p` through a file
        code = errno.ENOTDIR
    if code not in WRITE_FAILURES:
        found = re.search(r"errno = (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code not in WRITE_FAILURES:
        return None
    where = path if path is not None else filename
    return f"cannot write {where or 'the output'}: {WRITE_FAILURES[code]} (the previous complete output, if any, is untouched)"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success it replaces `path`, on error it is removed.

    Works for files and for folders: write whatever you like at the yielded path. A failed write
    raises `WriteError` naming `path` (not the temporary name).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as err:
        raise WriteError(write_failure(err, path) or f"cannot write {path}: {err}") from err
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    except OSError as err:
        line = write_failure(err, path)
        if line is None:
            raise
        raise WriteError(line) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_h5ad(adata, path: str | os.PathLike) -> None:
    """Write an AnnData to `path` atomically, encoded in memory first: HDF5 that meets a failed write
    (full disk, `ulimit -f`) leaves its library in a state that crashes the process at exit, while a
    plain file write just raises (and becomes a `WriteError`)."""
    import io

    import anndata as ad
    import h5py

    adata.strings_to_categoricals()  # as AnnData.write_h5ad does: object columns become writable categoricals
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as file:
        ad.io.write_elem(file, "/", adata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
