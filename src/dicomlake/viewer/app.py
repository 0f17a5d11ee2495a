"""The Starlette application: routes, responses and error handling, no SQL.

Pages: ``/`` (the series grid), ``/series/{uid}``. JSON API used by the pages:
``/api/facets``, ``/api/series``, ``/api/series/{uid}``, ``/api/instances/{row_id}``,
``/api/errors``; images and files: ``/api/thumbnail/{row_id}?frame=N``,
``/api/download?path=URI``. Everything is GET and read-only; every query runs on a
cursor of the one locked-down database that :class:`LakeConnection` holds.
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import duckdb
import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dicomlake.search.connection import LakeConnection, QueryTimeout
from dicomlake.viewer import dicomweb, ohif, pages, queries
from dicomlake.viewer.auth import TokenAuth
from dicomlake.viewer.queries import BadRequest, Filters
from dicomlake.viewer.safety import UnsafeClause

log = logging.getLogger(__name__)

_ROW_ID = re.compile(r"-?[0-9]{1,20}")
_CHUNK = 256 * 1024

#: Sent with every response: no inline script, no framing, no sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

#: Host names a server bound to a loopback address answers to (against DNS rebinding).
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)


def _error(status: int, message: str) -> Response:
    return _JSON({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _ok(content: Any, **headers: str) -> Response:
    return _JSON(content, headers={**SECURITY_HEADERS, "Cache-Control": "no-store", **headers})


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers=SECURITY_HEADERS)


def _row_id(request: Request) -> int:
    text = request.path_params["row_id"]
    if not _ROW_ID.fullmatch(text):
        raise BadRequest(f"row id must be a whole number, not {text!r}")
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise BadRequest("row id is out of range")
    return value


def _user_error(exc: BaseException) -> str:
    """The first line of a DuckDB error: what went wrong, without a traceback."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


Handler = Callable[[Request], Response]


def _api(handler: Handler) -> Handler:
    """Turn expected failures into JSON errors: 400 for bad input, 504 for timeouts."""

    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except (BadRequest, UnsafeClause) as exc:
            return _error(400, str(exc))
        except QueryTimeout as exc:
            return _error(504, str(exc))
        except duckdb.Error as exc:
            # Only a user's WHERE clause can make a query fail on purpose.
            if request.query_params.get("where"):
                return _error(400, f"the WHERE clause failed: {_user_error(exc)}")
            log.exception("query failed")
            return _error(500, "internal error; see the server log")

    wrapped.__name__ = handler.__name__
    return wrapped


def create_app(
    lake: str,
    *,
    check_every: float = 2.0,
    allowed_hosts: list[str] | None = None,
    token: str | None = None,
    cors_origins: Sequence[str] = (),
    allow_store: bool = False,
    store_dir: str | None = None,
    ohif_dir: str | None = None,
) -> Starlette:
    """Build the viewer's ASGI app for ``lake``.

    Args:
        lake: Lake folder or URI.
        check_every: Seconds between checks for a new lake version.
        allowed_hosts: Host names to answer to; None answers any.
        token: Bearer token every request must carry; None asks for none.
        cors_origins: Origins whose pages may call the server from a browser.
        allow_store: Accept STOW-RS uploads (``POST /dicomweb/studies``).
        store_dir: Where stored instances are written before they are ingested;
            None is the lake's own ``_store`` folder (local lakes only).
        ohif_dir: The unpacked OHIF app to serve at ``/ohif/``; None looks in the
            user's cache (see :mod:`dicomlake.viewer.ohif`).

    Returns:
        A Starlette app that serves the gallery, series pages, JSON API, DICOMweb
        (``/dicomweb``) and OHIF (``/ohif``).

    Raises:
        TableNotFound: The lake has nothing ingested yet.
        LakeError: The lake cannot be read.
    """
    db = LakeConnection(lake, check_every=check_every)

    def home(request: Request) -> Response:
        return _html(pages.gallery_page(lake))

    def series_html(request: Request) -> Response:
        uid = request.path_params["uid"]
        with db.cursor() as cur:
            detail = queries.series_detail(cur, uid)
            token = cur.token
        if detail is None:
            return _html(pages.message_page("Series not found", f"No series {uid}."), 404)
        return _html(pages.series_page(detail, token))

    @_api
    def api_facets(request: Request) -> Response:
        with db.cursor() as cur:
            return _ok(queries.facets(cur))

    @_api
    def api_series(request: Request) -> Response:
        filters = Filters.from_params(request.query_params)
        offset, limit = queries.paging(request.query_params)
        with db.cursor() as cur:
            return _ok(queries.series_page(cur, filters, offset, limit))

    @_api
    def api_series_detail(request: Request) -> Response:
        with db.cursor() as cur:
            detail = queries.series_detail(cur, request.path_params["uid"])
        if detail is None:
            return _error(404, "no such series")
        return _ok(detail)

    @_api
    def api_errors(request: Request) -> Response:
        filters = Filters.from_params(request.query_params)
        offset, limit = queries.paging(request.query_params, default=100)
        with db.cursor() as cur:
            return _ok(queries.failures_page(cur, filters, offset, limit))

    @_api
    def api_instance(request: Request) -> Response:
        row_id = _row_id(request)
        with db.cursor() as cur:
            detail = queries.instance_detail(cur, row_id)
        if detail is None:
            return _error(404, "no such instance")
        return _ok(detail)

    @_api
    def api_thumbnail(request: Request) -> Response:
        row_id = _row_id(request)
        frame_text = request.query_params.get("frame")
        frame = None
        if frame_text:
            if not frame_text.isdigit():
                raise BadRequest("frame must be a whole number >= 0")
            frame = int(frame_text)
        with db.cursor() as cur:
            found = queries.thumbnail(cur, row_id, frame)
        if found is None:
            return _error(404, "no thumbnail for that instance and frame")
        data, fmt = found
        cache = "private, max-age=86400" if request.query_params.get("v") else "no-cache"
        return Response(
            data,
            media_type="image/jpeg" if fmt.lower() in ("jpeg", "jpg") else "image/png",
            headers={**SECURITY_HEADERS, "Cache-Control": cache},
        )

    @_api
    def api_download(request: Request) -> Response:
        wanted = request.query_params.get("path")
        if not wanted:
            raise BadRequest("give the file's lake path as ?path=")
        with db.cursor() as cur:
            path = queries.lake_path(cur, wanted)
        if path is None:
            return _error(404, "no row of the lake has that path")
        return _stream_file(path)

    routes = [
        Route("/", home),
        Route("/series/{uid:path}", series_html),
        Route("/api/facets", api_facets),
        Route("/api/series", api_series),
        Route("/api/series/{uid:path}", api_series_detail),
        Route("/api/errors", api_errors),
        Route("/api/instances/{row_id}", api_instance),
        Route("/api/thumbnail/{row_id}", api_thumbnail),
        Route("/api/download", api_download),
        Mount("/static", StaticFiles(packages=[("dicomlake.viewer", "static")]), name="static"),
        Mount(
            "/dicomweb", routes=dicomweb.routes(db, allow_store=allow_store, store_dir=store_dir)
        ),
        Mount("/ohif", routes=ohif.routes(ohif_dir)),
    ]
    middleware = []
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    if cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(cors_origins),
                allow_methods=["GET", "POST"] if allow_store else ["GET"],
                allow_headers=["Authorization", "Accept", "Content-Type"],
                expose_headers=["Warning", "Content-Location"],
            )
        )
    if token is not None:
        middleware.append(Middleware(TokenAuth, token=token))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={404: _not_found, 500: _server_error},
    )
    app.state.lake = db
    return app


def _not_found(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith("/api/"):
        return _error(404, "not found")
    return _html(pages.message_page("Not found", "There is no such page."), 404)


def _server_error(request: Request, exc: Exception) -> Response:
    log.error("error serving %s", request.url.path, exc_info=exc)
    if request.url.path.startswith("/api/"):
        return _error(500, "internal error; see the server log")
    return _html(pages.message_page("Error", "Something went wrong; see the server log."), 500)


def _stream_file(path: str) -> Response:
    """Stream the original bytes of a lake row (a file or a zip member)."""
    from dicomlake.catalog import open_ref

    stack = contextlib.ExitStack()
    try:
        handle = stack.enter_context(open_ref(path))
    except Exception as exc:  # gone, moved, or a zip that no longer reads (BadZipFile)
        stack.close()
        log.info("cannot open %s: %s", path, exc)
        return _error(410, "the file is in the lake but cannot be read any more")

    def chunks() -> Iterator[bytes]:
        with stack:
            while data := handle.read(_CHUNK):
                yield data

    name = pages.file_name(path)
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", name) or "download.dcm"
    disposition = (
        f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name)}"
    )
    return StreamingResponse(
        chunks(),
        media_type="application/dicom",
        headers={**SECURITY_HEADERS, "Content-Disposition": disposition},
    )
