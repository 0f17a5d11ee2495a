"""Frames for datasets: decoded once, then served from a disk cache of ``.npy`` files.

The decoding itself (physical units, windows) is :mod:`dicomlake.dicom.frames`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from dicomlake._types import StorageOptions
from dicomlake.dicom.frames import PhysicalFrame, load_frame

#: Version of the cache layout; part of every key, so a change never reads old files.
_CACHE_FORMAT = 1


def _stamp(mtime: datetime | int | float | None) -> str:
    if isinstance(mtime, datetime):
        return mtime.isoformat()
    return "" if mtime is None else repr(mtime)


class FrameCache:
    """Decoded frames kept on disk as ``.npy`` (plus a small ``.json``), by content key.

    The key is the file's path, size and modification time and the frame index, so a
    changed file is decoded again, never served stale. Writes go to a temporary name
    and are renamed into place, so DataLoader workers sharing one folder never read a
    half-written array. The object holds only the folder name: it pickles to workers.

    Args:
        directory: The cache folder (created on first write).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def key(
        self,
        path: str,
        frame: int,
        size: int | None,
        mtime: datetime | int | float | None,
        max_side: int | None = None,
    ) -> str:
        """The file name stem for one frame of one version of a file (and decode size)."""
        text = f"{_CACHE_FORMAT}\0{path}\0{frame}\0{size}\0{_stamp(mtime)}"
        if max_side is not None:
            text += f"\0{max_side}"
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.directory / key[:2]
        return folder / f"{key}.npy", folder / f"{key}.json"

    def get(self, key: str) -> PhysicalFrame | None:
        """The cached frame, or None when it is not (completely) there."""
        array_path, info_path = self._paths(key)
        try:
            info = json.loads(info_path.read_text())
            values = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return PhysicalFrame(
            values=values,
            spacing=tuple(info["spacing"]) if info["spacing"] else None,
            window=tuple(info["window"]) if info["window"] else None,
            inverted=bool(info["inverted"]),
            photometric=str(info["photometric"]),
        )

    def put(self, key: str, frame: PhysicalFrame) -> None:
        """Store ``frame``; the array is renamed into place last, so it marks completion."""
        array_path, info_path = self._paths(key)
        array_path.parent.mkdir(parents=True, exist_ok=True)
        info = {
            "spacing": frame.spacing,
            "window": frame.window,
            "inverted": frame.inverted,
            "photometric": frame.photometric,
        }
        self._atomic(info_path, lambda f: f.write(json.dumps(info).encode()))
        self._atomic(array_path, lambda f: np.save(f, frame.values, allow_pickle=False))

    def _atomic(self, target: Path, write: Any) -> None:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{uuid.uuid4().hex}")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def __repr__(self) -> str:
        return f"FrameCache({str(self.directory)!r})"


@dataclass(frozen=True, slots=True)
class FrameReader:
    """Reads frames for a dataset: from the cache when it has them, else the file.

    Holds only strings and options, so datasets that carry one pickle cheaply.
    """

    storage_options: StorageOptions = None
    cache: FrameCache | None = None

    def read(
        self,
        path: str,
        frame: int,
        *,
        size: int | None = None,
        mtime: datetime | int | float | None = None,
        max_side: int | None = None,
    ) -> PhysicalFrame:
        """Frame ``frame`` of ``path`` in physical units (see :func:`load_frame`).

        Raises:
            OSError: The file cannot be read.
            Exception: The pixel data cannot be decoded.
        """
        options = self.storage_options
        if self.cache is None:
            return load_frame(path, frame, max_side=max_side, storage_options=options)
        key = self.cache.key(path, frame, size, mtime, max_side)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        loaded = load_frame(path, frame, max_side=max_side, storage_options=options)
        self.cache.put(key, loaded)
        return loaded
