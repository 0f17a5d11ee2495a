"""The STOW-RS routes: ``POST /studies`` and ``POST /studies/{study}`` (PS3.18 10.5).

Off unless ``dicomlake serve --allow-store``: the DICOMweb service mounts
:func:`stow_route` only then. The body is read as it arrives into a bounded
:class:`~dicomlake.viewer.dicomweb.multipart.MultipartParser` (a declared
Content-Length over the limit is refused before any byte is read); the store and its
ingest run on a worker thread, one request at a time per store folder (see
:func:`~dicomlake.viewer.dicomweb.store.store_instances`).

Answers: 200, 202 (with a Warning header) or 409 with the Store Instances Response
as ``application/dicom+json``; 400 for a malformed body or study UID, 406 when the
client accepts no JSON, 413 for a body over the limits, 415 for a Content-Type
other than ``multipart/related; type="application/dicom"``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from dicomlake.viewer.dicomweb.multipart import (
    Limits,
    MultipartError,
    MultipartParser,
    PayloadTooLarge,
    parse_content_type,
    related_boundary,
)

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions

from dicomlake.viewer.dicomweb.store import (
    BadStoreRequest,
    default_store_dir,
    spool_dir,
    store_instances,
    warning_header,
)

__all__ = ["DICOM_JSON", "stow_route"]

log = logging.getLogger(__name__)

#: The media type of the Store Instances Response.
DICOM_JSON = "application/dicom+json"

#: Accept values a JSON answer satisfies.
_JSON_RANGES = frozenset({"*/*", "application/*", DICOM_JSON, "application/json"})
_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def stow_route(
    lake: str,
    store_dir: str | None = None,
    *,
    limits: Limits | None = None,
    storage_options: StorageOptions = None,
) -> list[BaseRoute]:
    """The STOW-RS routes, to mount under the DICOMweb root (``/dicomweb``).

    Args:
        lake: Lake folder or URI the stored instances are ingested into.
        store_dir: Local folder for the stored files; None for ``<lake>/_store``.
        limits: Bounds on a request body (parts, part size, total size).
        storage_options: The lake's object-storage settings.

    Raises:
        LakeError: ``store_dir`` is None and the lake is not a local folder.
    """
    folder = store_dir if store_dir is not None else default_store_dir(lake)
    spool = spool_dir(folder)
    bounds = limits or Limits()

    async def store(request: Request) -> Response:
        if not _accepts_json(request.headers.get("accept", "")):
            return _error(406, f"the Store Instances Response is only sent as {DICOM_JSON}")
        study = request.path_params.get("study")
        try:
            boundary = related_boundary(request.headers.get("content-type"))
            _check_length(request.headers.get("content-length"), bounds)
        except MultipartError as exc:
            return _error(exc.status, str(exc))
        parser = MultipartParser(boundary, bounds, spool_dir=spool)
        try:
            async for chunk in request.stream():
                parser.feed(chunk)
            parts = parser.finish()
            status, body = await run_in_threadpool(
                store_instances,
                lake,
                folder,
                parts,
                study_uid=study,
                base_url=_service_root(request),
                storage_options=storage_options,
            )
        except (MultipartError, BadStoreRequest) as exc:
            return _error(exc.status, str(exc))
        except ClientDisconnect:
            log.info("STOW-RS: the client left before sending the whole body")
            return _error(400, "the request body was not received in full")
        finally:
            parser.close()
        headers = dict(_HEADERS)
        warning = warning_header(status, body)
        if warning is not None:
            headers["Warning"] = warning
        return Response(orjson.dumps(body), status, headers=headers, media_type=DICOM_JSON)

    return [
        Route("/studies", store, methods=["POST"], name="stow_studies"),
        Route("/studies/{study}", store, methods=["POST"], name="stow_study"),
    ]


def _check_length(header: str | None, limits: Limits) -> None:
    """Refuse a declared Content-Length over the limit before reading the body."""
    if header is None:
        return
    if not header.strip().isdigit():
        raise MultipartError("the Content-Length header is not a number")
    if int(header) > limits.max_total_bytes:
        raise PayloadTooLarge(f"the body is larger than {limits.max_total_bytes} bytes")


def _accepts_json(accept: str) -> bool:
    """Whether an Accept header allows the JSON response (no header allows anything)."""
    if not accept.strip():
        return True
    for item in accept.split(","):
        media, params = parse_content_type(item)
        if media in _JSON_RANGES and params.get("q", "1").strip() not in ("0", "0.0", "0.00"):
            return True
    return False


def _service_root(request: Request) -> str:
    """The DICOMweb root URL, from the request's: what precedes ``/studies``."""
    url = str(request.url.replace(query="", fragment=""))
    return url[: url.rfind("/studies")]


def _error(status: int, message: str) -> Response:
    return Response(
        orjson.dumps({"error": message}),
        status,
        headers=_HEADERS,
        media_type="application/json",
    )
