"""Atomic file writes (a reader sees the old file or the complete new one, never half of one)
and array reads that cannot run code."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from soundtag.errors import DataError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    The temporary file is fsynced before the rename, and removed if the block raises, so an
    interrupted writer leaves either nothing or a ``.tmp`` file that no reader treats as valid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load_array(path: str | Path, *, mmap_mode: str | None = None) -> np.ndarray:
    """A ``.npy`` file of numbers, never of pickled objects (``allow_pickle=False``): an array
    file in a run directory or a feature store from someone else cannot run code.

    Raises
    ------
    DataError
        naming the file, when it holds Python objects or cannot be read as an array
    """
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except ValueError as exc:  # NumPy's "Object arrays cannot be loaded when allow_pickle=False"
        what = "Python objects, which soundtag never unpickles" if "allow_pickle" in str(exc) else str(exc)
        raise DataError(
            f"{path} was not loaded: it holds {what}; soundtag writes numeric arrays only, so this "
            "file was made elsewhere or is damaged: delete it and compute it again"
        ) from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read as an array ({exc}); delete it and compute it again") from None
