"""The DICOMweb routes: requests checked, handed to search/retrieve/render, answered.

Paths follow PS3.18 §10: QIDO-RS searches at every level, WADO-RS retrieval of
instances, metadata, frames, bulk data and rendered images, WADO-URI at ``/wado``, and
STOW-RS when the server was started with ``--allow-store``. UIDs in paths must be
UIDs; any other value is a 400 before anything is read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import duckdb
import orjson
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomlake.dicom.uids import is_uid
from dicomlake.search.attributes import LEVEL_KEYS
from dicomlake.search.connection import LakeConnection, QueryTimeout
from dicomlake.search.query import BadQuery, parse, run
from dicomlake.viewer.dicomweb.multipart import (
    multipart_chunks,
    multipart_content_type,
    new_boundary,
)

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


class HTTPProblem(Exception):
    """A request that gets an error status; the message is safe to show."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """DICOM JSON (or an error object) with the right media type."""
    return Response(
        orjson.dumps(content),
        status_code=status,
        media_type=DICOM_JSON if status < 400 else "application/json",
        headers=headers,
    )


def multipart_response(
    parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]], part_type: str
) -> StreamingResponse:
    """A ``multipart/related`` answer of ``parts``, streamed as they are produced."""
    boundary = new_boundary()
    return StreamingResponse(
        iterate_in_threadpool(multipart_chunks(parts, boundary)),
        media_type=None,
        headers={"Content-Type": multipart_content_type(boundary, part_type)},
    )


def problem(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An error answer: a short JSON text that never holds a patient's values."""
    return json_response({"error": message}, status, headers)


def uids(request: Request) -> dict[str, str]:
    """The UIDs of the path, checked.

    Raises:
        HTTPProblem: One of them is not a UID (400).
    """
    return checked_uids(request.path_params)


def checked_uids(given: Mapping[str, str]) -> dict[str, str]:
    """``study``, ``series`` and ``instance`` UIDs of ``given``, each checked.

    Raises:
        HTTPProblem: One of them is not a UID (400).
    """
    out = {}
    for name in ("study", "series", "instance"):
        value = given.get(name)
        if value is None:
            continue
        if not is_uid(value):
            raise HTTPProblem(400, f"the {name} UID in the path is not a UID")
        out[name] = value
    return out


def base_url(request: Request) -> str:
    """This service's root as the client reached it (``http://host:port/dicomweb``)."""
    root = request.scope.get("root_path", "")
    return str(request.url.replace(path=root, query="", fragment="")).rstrip("/")


def level_scope(level: str, path_params: Mapping[str, str]) -> dict[str, str]:
    """The UIDs a resource path fixes, by tag (``/studies/{study}/series`` fixes one)."""
    scope = {}
    for name, tag in (("study", LEVEL_KEYS["study"]), ("series", LEVEL_KEYS["series"])):
        if name in path_params:
            scope[tag] = path_params[name]
    return scope


Endpoint = Callable[[Request], Response]


def guarded(handler: Endpoint) -> Endpoint:
    """Turn known failures into PS3.18 statuses; never a traceback to the client."""

    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except HTTPProblem as exc:
            return problem(exc.status, str(exc), exc.headers)
        except BadQuery as exc:
            return problem(400, str(exc))
        except QueryTimeout as exc:
            return problem(504, str(exc))
        except duckdb.Error:
            log.exception("DICOMweb query failed: %s", request.url.path)
            return problem(500, "internal error; see the server log")

    wrapped.__name__ = handler.__name__
    return wrapped


def build_routes(
    db: LakeConnection, *, allow_store: bool = False, store_dir: str | None = None
) -> list[BaseRoute]:
    """The routes under ``/dicomweb``."""
    from dicomlake.viewer.dicomweb import retrieve, wado_uri

    def qido(level: str) -> Endpoint:
        def handler(request: Request) -> Response:
            scope = level_scope(level, uids(request))
            query = parse(level, request.query_params.multi_items(), scope=scope)
            with db.cursor() as cur:
                page = run(cur, query, base_url(request))
            warnings = []
            if page.truncated:
                warnings.append(
                    '299 dicomlake "There are more results than this page holds; '
                    'ask again with offset and limit."'
                )
            if page.ignored:
                names = ", ".join(re.sub(r"[^A-Za-z0-9_.-]", "?", k) for k in page.ignored)
                warnings.append(f'299 dicomlake "Unsupported query parameters ignored: {names}"')
            headers = {"Warning": ", ".join(warnings)} if warnings else {}
            return json_response(page.items, headers=headers)

        handler.__name__ = f"search_{level}"
        return guarded(handler)

    routes: list[BaseRoute] = [
        Route("/studies", qido("study"), methods=["GET"]),
        Route("/series", qido("series"), methods=["GET"]),
        Route("/instances", qido("instance"), methods=["GET"]),
        Route("/studies/{study}/series", qido("series"), methods=["GET"]),
        Route("/studies/{study}/instances", qido("instance"), methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", qido("instance"), methods=["GET"]),
        *retrieve.routes(db),
        *wado_uri.routes(db),
    ]
    if allow_store:
        from dicomlake.viewer.dicomweb.stow import stow_route

        routes.extend(stow_route(db.lake, store_dir))
    return routes
