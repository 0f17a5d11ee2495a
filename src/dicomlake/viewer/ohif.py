"""OHIF, the web viewer of the DICOM world, served at ``/ohif/`` over ``/dicomweb``.

(Placeholder: filled in by the OHIF work; until then ``/ohif/`` says how to install.)
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route


def routes(ohif_dir: str | None = None) -> list[BaseRoute]:
    """The routes under ``/ohif``."""

    def not_installed(request: Request) -> Response:
        return HTMLResponse("OHIF is not installed: run dicomlake ohif install", status_code=404)

    return [Route("/{rest:path}", not_installed)]
