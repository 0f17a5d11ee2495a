"""Failing early: is the lake writable, before a run extracts anything?"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import TYPE_CHECKING

import pyarrow as pa
from deltalake.exceptions import DeltaError

from dicomlake.errors import LakeError
from dicomlake.lake.location import INSTANCES_TABLE, lake_error, lake_root
from dicomlake.storage.locations import local_path
from dicomlake.storage.settings import delta_options, fsspec_options

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions


def check_lake_writable(lake: str, storage_options: StorageOptions = None) -> None:
    """Fail early, before a run extracts anything, if the lake cannot be written.

    Creates the lake folder when missing, then writes and deletes a probe file in it
    (and in the ``instances`` commit log when the table exists). Writing a file is the
    only reliable test: ``os.access`` says yes to root on a read-only mount.

    Args:
        lake: Lake folder or object-store URI prefix.
        storage_options: Options for the storage backend.

    Raises:
        LakeError: "cannot write lake at X: <reason>" when the folder cannot be
            created or written, e.g. the path is an existing regular file.
    """
    local = local_path(lake_root(lake))
    if local is None:
        _probe_remote(lake, storage_options)
        return
    if os.path.exists(local) and not os.path.isdir(local):
        raise LakeError(
            f"cannot write lake at {lake}: {local} is a file, not a folder; "
            "pass a folder (new or existing) to --lake",
            lake=lake,
        )
    try:
        os.makedirs(local, exist_ok=True)
    except OSError as exc:
        raise LakeError(
            f"cannot write lake at {lake}: cannot create folder {local}: {exc.strerror or exc}",
            lake=lake,
        ) from exc
    log_dir = os.path.join(local, INSTANCES_TABLE, "_delta_log")
    for folder in (local, log_dir):
        if folder is log_dir and not os.path.isdir(log_dir):
            continue
        try:
            fd, probe = tempfile.mkstemp(prefix=".dicomlake-probe-", dir=folder)
            os.close(fd)
            os.remove(probe)
        except OSError as exc:
            raise LakeError(
                f"cannot write lake at {lake}: cannot create files in {folder}: "
                f"{exc.strerror or exc}",
                lake=lake,
            ) from exc


def _probe_remote(lake: str, storage_options: StorageOptions) -> None:
    """Write and delete an empty object under the lake's prefix.

    Through fsspec (s3fs for ``s3://``) when it knows the protocol: one plain PUT.
    delta-rs's file system handler writes even an empty object as a multipart upload,
    which some S3-compatible servers (moto 5.2.1) leave hanging for minutes.
    """
    probe = f".dicomlake-probe-{uuid.uuid4().hex}"
    root = lake_root(lake)
    try:
        import fsspec.core

        fs, path = fsspec.core.url_to_fs(root, **fsspec_options(storage_options))
    except (ImportError, ValueError):
        fs = None  # a protocol only delta-rs knows (or its fsspec backend is missing)
    if fs is not None:
        target = f"{path.rstrip('/')}/{probe}"
        try:
            fs.pipe_file(target, b"")
            fs.rm_file(target)
        except (OSError, ValueError) as exc:
            raise lake_error("write", lake, exc) from exc
        return

    import pyarrow.fs as pafs
    from deltalake.fs import DeltaStorageHandler

    try:
        pyfs = pafs.PyFileSystem(DeltaStorageHandler(root, delta_options(storage_options)))
        # An empty object: writing bytes through deltalake 1.6.6's handler fails on
        # pyarrow 26 ("'Buffer' object is not an instance of 'bytes'").
        with pyfs.open_output_stream(probe):
            pass
        pyfs.delete_file(probe)
    except (DeltaError, OSError, pa.ArrowException, TypeError) as exc:
        raise lake_error("write", lake, exc) from exc
