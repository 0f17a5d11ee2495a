"""Type aliases shared across the package, spelled once.

Kept apart so that a signature reads the same in every module, and so that typing a
parameter never imports the heavy module that implements it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict

if TYPE_CHECKING:
    import pyarrow as pa

    from dicomlake.jobs.ingest import CommitPolicy, IngestSummary
    from dicomlake.kernels.thumbnails import ThumbnailOptions
    from dicomlake.storage.settings import StorageConfig

StorageOptions: TypeAlias = "StorageConfig | Mapping[str, Any] | None"
"""What every ``storage_options`` parameter takes: a
:class:`~dicomlake.storage.StorageConfig`, a plain dict in fsspec's or delta-rs' names
(see :meth:`~dicomlake.storage.StorageConfig.from_options`), or None for the
environment's settings."""

FrameChoice: TypeAlias = "Literal['first', 'middle', 'all'] | int"
"""Which frames of a multi-frame image: ``'first'``, ``'middle'``, ``'all'`` or a
0-based index."""

Parser: TypeAlias = Literal["auto", "native", "pydicom"]
"""Which header parser ingest uses: the native one where it can (``'auto'``), the
native one or an error (``'native'``), or pydicom always."""

Row: TypeAlias = dict[str, Any]
"""One row as a kernel builds it: column name to value (see :mod:`dicomlake.rows`)."""

Batches: TypeAlias = "dict[str, pa.RecordBatch]"
"""A kernel's output for one task: table name to its rows."""

PathLike: TypeAlias = "str | os.PathLike[str]"
"""A local path or a URI (``s3://bucket/prefix``), as text or a path object."""


class LakeIngestOptions(TypedDict, total=False):
    """The keyword options of :meth:`dicomlake.Lake.ingest` (the lake has its storage).

    Each is documented at :func:`dicomlake.jobs.ingest.ingest`.
    """

    workers: int | None
    sync: bool
    thumbnails: bool | ThumbnailOptions
    parser: Parser
    file_timeout: float
    commits: CommitPolicy | None
    optimize: bool | None
    progress: Callable[[IngestSummary], None] | None
    bulk_threshold: int
    task_size: int
    shards: bool | None
    prefetch: bool


class IngestOptions(LakeIngestOptions, total=False):
    """The keyword options of :func:`dicomlake.ingest`: the Lake's, and its storage."""

    storage_options: StorageOptions
