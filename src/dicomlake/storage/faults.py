"""Faults of object storage, named by their cause once the retries are spent.

Throttling, server errors, dropped connections and stalls are retried by botocore and
s3fs, configured by :class:`~dicomlake.storage.settings.Retries`; a request that still
fails is raised as a :class:`~dicomlake.errors.StorageError` subclass that names the
cause (``Throttled``, ``ServerError``, ``NetworkError``, ``StorageTimeout``), so the
file becomes an error row whose class the ingest summary counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from dicomlake.errors import (
    NetworkError,
    ServerError,
    StorageError,
    StorageTimeout,
    Throttled,
    exception_chain,
)
from dicomlake.storage.settings import S3_PROTOCOLS, S3FS_RETRIES, Retries

_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestLimitExceeded"}
)
_RETRIED_STATUS = frozenset({500, 502, 503, 504})


def _reply_error(exc: BaseException, tail: str) -> StorageError | None:
    """Throttled or ServerError for a botocore ``ClientError`` with a 5xx/429 reply."""
    response = getattr(exc, "response", None)
    if not isinstance(response, Mapping) or "ResponseMetadata" not in response:
        return None
    status = response["ResponseMetadata"].get("HTTPStatusCode")
    code = str((response.get("Error") or {}).get("Code") or "")
    if not isinstance(status, int):
        return None
    throttled = code in _THROTTLE_CODES or status in (429, 503)
    if not (throttled or status in _RETRIED_STATUS):
        return None
    text = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
    operation = getattr(exc, "operation_name", None)
    if operation:
        text += f" on {operation}"
    return (Throttled if throttled else ServerError)(f"{text}, {tail}")


def _transport_error(exc: BaseException, retries: Retries, tail: str) -> StorageError | None:
    """StorageTimeout or NetworkError for a failure below HTTP (botocore, aiohttp)."""
    from http.client import IncompleteRead

    timeouts: tuple[type[BaseException], ...] = (TimeoutError,)
    connect: tuple[type[BaseException], ...] = ()
    network: tuple[type[BaseException], ...] = (ConnectionError, IncompleteRead)
    with contextlib.suppress(ImportError):  # the s3 extra
        from botocore import exceptions as boto

        connect = (boto.ConnectTimeoutError,)
        timeouts += (boto.ReadTimeoutError, *connect)
        network += (boto.ConnectionError, boto.HTTPClientError, boto.IncompleteReadError)
    with contextlib.suppress(ImportError):
        import aiohttp

        network += (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
    name = type(exc).__name__
    if isinstance(exc, connect):
        return StorageTimeout(
            f"no connection within connect_timeout={retries.connect_timeout:g} s, {tail}"
        )
    if isinstance(exc, timeouts):
        return StorageTimeout(
            f"no answer within read_timeout={retries.read_timeout:g} s ({name}), {tail}"
        )
    if isinstance(exc, network):
        return NetworkError(f"connection failed ({name}), {tail}")
    return None


def storage_error(exc: BaseException, retries: Retries | None = None) -> StorageError | None:
    """Name the cause of a storage failure that outlived its retries.

    Looks through ``exc`` and what it was raised from (s3fs turns a botocore reply
    into an ``OSError`` raised from it) for a throttling or server-error reply, a
    timeout or a lost connection.

    Args:
        exc: What reading or listing raised.
        retries: The settings the request ran under, named in the message.

    Returns:
        The :class:`StorageError` to raise instead, or None when ``exc`` is none of
        these (a missing object, a refused permission, a bad file).

    Example:
        >>> print(storage_error(ConnectionResetError("reset by peer"), Retries()))
        connection failed (ConnectionResetError), retries exhausted (max_attempts=5)
    """
    retries = retries or Retries()
    tail = f"retries exhausted (max_attempts={retries.max_attempts})"
    for cause in exception_chain(exc):
        if isinstance(cause, StorageError):
            return cause
        found = _reply_error(cause, tail) or _transport_error(cause, retries, tail)
        if found is not None:
            return found
    return None


@contextlib.contextmanager
def translate_errors(retries: Retries | None = None) -> Iterator[None]:
    """Re-raise a storage failure raised in the block as a :class:`StorageError`.

    Anything else (a missing object, a bad file) passes through unchanged.

    Args:
        retries: The settings the block's requests run under.

    Yields:
        Nothing; the block runs inside.

    Raises:
        StorageError: The named cause, raised from the original exception.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        error = storage_error(exc, retries)
        if error is None:
            raise
        raise error from exc


def tune_filesystem(fs: Any) -> None:
    """Set s3fs's own retry count, which it takes as an attribute, not an argument.

    Args:
        fs: An fsspec file system; only s3fs ones are changed.
    """
    protocols = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    if S3_PROTOCOLS.intersection(protocols) and hasattr(fs, "retries"):
        fs.retries = S3FS_RETRIES
