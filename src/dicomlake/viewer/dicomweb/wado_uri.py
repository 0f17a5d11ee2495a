"""WADO-URI (PS3.18 §9): one object by its three UIDs, as a file or a rendered image.

``/dicomweb/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..`` with
``contentType`` ``application/dicom`` (the file; ``transferSyntax`` may ask for
Explicit VR Little Endian) or ``image/jpeg`` (the default) / ``image/png``, and the
rendering parameters ``frameNumber``, ``rows``, ``columns``, ``windowCenter``,
``windowWidth``, ``imageQuality``.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomlake.search.connection import LakeConnection
from dicomlake.viewer.dicomweb import media, render
from dicomlake.viewer.dicomweb.lookup import Instance, instances_of
from dicomlake.viewer.dicomweb.retrieve import instance_body, parse_frames
from dicomlake.viewer.dicomweb.service import HTTPProblem, checked_uids, guarded, problem


def routes(db: LakeConnection) -> list[BaseRoute]:
    """The ``/wado`` route."""

    def wado(request: Request) -> Response:
        params = request.query_params
        if params.get("requestType") != "WADO":
            raise HTTPProblem(400, "requestType must be WADO")
        given = {}
        for name, key in (
            ("study", "studyUID"),
            ("series", "seriesUID"),
            ("instance", "objectUID"),
        ):
            if not params.get(key):
                raise HTTPProblem(400, f"{key} is required")
            given[name] = params[key]
        with db.cursor() as cur:
            item = instances_of(cur, checked_uids(given))[0]
        content_types = [c.strip() for c in (params.get("contentType") or "image/jpeg").split(",")]
        for content_type in content_types:
            if content_type == "application/dicom":
                return _file(item, params.get("transferSyntax"))
            if content_type in ("image/jpeg", "image/png", "image/*", "*/*"):
                image_type = "image/png" if content_type == "image/png" else "image/jpeg"
                return _image(params, item, image_type)
        return problem(406, "contentType is application/dicom, image/jpeg or image/png")

    return [Route("/wado", guarded(wado), methods=["GET"])]


def _file(item: Instance, syntax: str | None) -> Response:
    if syntax and syntax not in (item.syntax, media.EXPLICIT_LE):
        return problem(406, "transferSyntax may only ask for 1.2.840.10008.1.2.1")
    try:
        body = instance_body(item, syntax or item.syntax)
    except media.NotAcceptable as exc:
        return problem(406, str(exc))
    return StreamingResponse(iterate_in_threadpool(iter(body)), media_type="application/dicom")


def _image(params: Mapping[str, str], item: Instance, image_type: str) -> Response:
    frame = 0
    if params.get("frameNumber"):
        frame = parse_frames(params["frameNumber"], item.frames)[0] - 1
    translated: dict[str, str] = {}
    if params.get("windowCenter") or params.get("windowWidth"):
        translated["window"] = f"{params.get('windowCenter', '')},{params.get('windowWidth', '')}"
    if params.get("rows") or params.get("columns"):
        rows = params.get("rows") or params.get("columns") or ""
        columns = params.get("columns") or params.get("rows") or ""
        translated["viewport"] = f"{columns},{rows}"
    if params.get("imageQuality"):
        translated["quality"] = params["imageQuality"]
    look = render.Presentation.from_params(translated)
    data = render.encode(render.draw(item, frame, look), image_type, look.quality)
    return Response(data, media_type=image_type)
