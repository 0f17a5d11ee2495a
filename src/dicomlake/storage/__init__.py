"""Object storage: settings in fsspec's and delta-rs' forms, and faults named by cause.

:mod:`~dicomlake.storage.settings` holds :class:`StorageConfig` and :class:`Retries`;
:mod:`~dicomlake.storage.faults` turns a request that failed for good into a
:class:`~dicomlake.errors.StorageError` subclass.
"""

from __future__ import annotations

from dicomlake.errors import NetworkError, ServerError, StorageError, StorageTimeout, Throttled
from dicomlake.storage.faults import storage_error, translate_errors, tune_filesystem
from dicomlake.storage.settings import (
    Retries,
    StorageConfig,
    delta_options,
    fsspec_options,
    parse_storage_option,
)

__all__ = [
    "NetworkError",
    "Retries",
    "ServerError",
    "StorageConfig",
    "StorageError",
    "StorageTimeout",
    "Throttled",
    "delta_options",
    "fsspec_options",
    "parse_storage_option",
    "storage_error",
    "translate_errors",
    "tune_filesystem",
]
