"""Catalog: list folders, zip archives and fsspec URLs as file references; open them.

:func:`iter_files` streams one :class:`FileRef` per regular file or zip member
(:mod:`~dicomlake.catalog.listing`); :func:`open_ref` opens any reference it produced
(:mod:`~dicomlake.catalog.opening`, zip members through
:mod:`~dicomlake.catalog.zips`); :mod:`~dicomlake.catalog.columns` gives a row's
source columns and :class:`Prefetcher` reads local files ahead.
"""

from __future__ import annotations

from dicomlake.catalog.columns import extension, path_tags, source_columns
from dicomlake.catalog.listing import check_sources, iter_files
from dicomlake.catalog.opening import open_ref
from dicomlake.catalog.prefetch import Prefetcher
from dicomlake.catalog.refs import FileRef, local_file

__all__ = [
    "FileRef",
    "Prefetcher",
    "check_sources",
    "extension",
    "iter_files",
    "local_file",
    "open_ref",
    "path_tags",
    "source_columns",
]
