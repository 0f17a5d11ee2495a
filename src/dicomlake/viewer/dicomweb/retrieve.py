"""WADO-RS: instances, metadata, frames, bulk data and rendered images from the lake.

Instances are the stored bytes of each file or zip member, streamed part by part, so
a study of any size costs one file's buffer at a time; metadata is the ``meta``
column, read in batches and streamed as one JSON array, with every BulkDataURI
pointing back at this server. Which files make up a study, series or instance comes
from the search index (one file per SOP Instance UID).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import IO, Any

import orjson
from starlette.concurrency import iterate_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from dicomlake.catalog import open_ref
from dicomlake.search.connection import LakeConnection
from dicomlake.viewer.dicomweb import media, render
from dicomlake.viewer.dicomweb.lookup import Instance, instances_of
from dicomlake.viewer.dicomweb.multipart import (
    multipart_chunks,
    multipart_content_type,
    new_boundary,
)
from dicomlake.viewer.dicomweb.service import (
    Endpoint,
    HTTPProblem,
    base_url,
    guarded,
    multipart_response,
    problem,
    uids,
)

log = logging.getLogger(__name__)

#: Rows of ``meta`` read per query while streaming metadata.
META_BATCH = 256
#: Bytes read from a file per chunk while streaming it.
CHUNK = 256 * 1024
#: Frames one ``/frames/{list}`` request may name.
MAX_FRAMES = 1000

_BULK = re.compile(r"\?offset=([0-9]+)&length=([0-9]+)$")


@contextlib.contextmanager
def opened(instance: Instance) -> Iterator[IO[bytes]]:
    """The instance's file, open; a file that went away since ingest is a 410.

    Raises:
        HTTPProblem: The file cannot be read any more (410).
    """
    stack = contextlib.ExitStack()
    try:
        handle = stack.enter_context(open_ref(instance.path))
    except Exception as exc:  # gone, moved, a zip that no longer reads
        stack.close()
        log.info("cannot open %s: %s", instance.path, exc)
        raise HTTPProblem(410, "the file is in the lake but cannot be read any more") from None
    with stack:
        yield handle


def file_chunks(instance: Instance) -> Iterator[bytes] | None:
    """The file's bytes in chunks, opened now (None when it cannot be opened)."""
    stack = contextlib.ExitStack()
    try:
        handle = stack.enter_context(opened(instance))
    except HTTPProblem:
        return None

    def chunks() -> Iterator[bytes]:
        with stack:
            while data := handle.read(CHUNK):
                yield data

    return chunks()


def transcoded(instance: Instance) -> bytes:
    """The instance rewritten in Explicit VR Little Endian, pixel data decoded.

    Raises:
        media.NotAcceptable: Its pixel data cannot be decoded here.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    with opened(instance) as handle:
        ds = pydicom.dcmread(handle, force=True)
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        elif "PixelData" in ds and ds.file_meta.TransferSyntaxUID == media.EXPLICIT_BE:
            ds.PixelData = ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    except Exception as exc:
        log.info("cannot transcode %s: %s", instance.path, exc)
        raise media.NotAcceptable(
            f"this instance (transfer syntax {instance.syntax}) cannot be decoded to "
            "1.2.840.10008.1.2.1 here; ask for transfer-syntax=*"
        ) from None
    return out.getvalue()


def instance_body(instance: Instance, syntax: str) -> Iterable[bytes]:
    """The instance's bytes in ``syntax``: the stored file streamed, or transcoded.

    Raises:
        HTTPProblem: The file cannot be read any more (410).
        media.NotAcceptable: It cannot be transcoded.
    """
    if syntax != instance.syntax:
        return [transcoded(instance)]
    chunks = file_chunks(instance)
    if chunks is None:
        raise HTTPProblem(410, "the file is in the lake but cannot be read any more")
    return chunks


def _part_headers(syntax: str) -> dict[str, str]:
    return {"Content-Type": f"application/dicom; transfer-syntax={syntax}"}


# --------------------------------------------------------------------------- metadata


def _rewrite(header: dict[str, Any], instance_url: str) -> dict[str, Any]:
    """A header for a client: no file meta group, BulkDataURIs on this server."""
    out = {}
    for tag, element in header.items():
        if tag.startswith("0002"):
            continue
        out[tag] = _rewrite_element(element, instance_url)
    return out


def _rewrite_element(element: Any, instance_url: str) -> Any:
    if not isinstance(element, dict):
        return element
    uri = element.get("BulkDataURI")
    if isinstance(uri, str):
        found = _BULK.search(uri)
        element = dict(element)
        element["BulkDataURI"] = (
            f"{instance_url}/bulkdata/{found.group(1)}/{found.group(2)}" if found else instance_url
        )
        return element
    values = element.get("Value")
    if element.get("vr") == "SQ" and isinstance(values, list):
        element = dict(element)
        element["Value"] = [
            {t: _rewrite_element(e, instance_url) for t, e in item.items()}
            if isinstance(item, dict)
            else item
            for item in values
        ]
    return element


def metadata_chunks(db: LakeConnection, items: Sequence[Instance], root: str) -> Iterator[bytes]:
    """The JSON array of the instances' headers, in pieces of :data:`META_BATCH`."""
    yield b"["
    first = True
    for start in range(0, len(items), META_BATCH):
        batch = items[start : start + META_BATCH]
        with db.cursor() as cur:
            rows = dict(
                cur.fetch(
                    "SELECT row_id, meta FROM instances WHERE status = 'ok' "
                    "AND row_id IN (SELECT unnest(?::BIGINT[]))",
                    [[i.row_id for i in batch]],
                )
            )
        pieces = []
        for item in batch:
            meta = rows.get(item.row_id)
            if not meta:
                continue
            url = f"{root}/studies/{item.study}/series/{item.series}/instances/{item.sop}"
            pieces.append(orjson.dumps(_rewrite(orjson.loads(meta), url)))
        if pieces:
            yield (b"" if first else b",") + b",".join(pieces)
            first = False
    yield b"]"


# --------------------------------------------------------------------------- frames


def parse_frames(text: str, count: int) -> list[int]:
    """1-based frame numbers of a ``/frames/{list}`` path, checked against ``count``.

    Raises:
        HTTPProblem: Malformed (400) or beyond the instance's frames (404).
    """
    parts = [p.strip() for p in text.split(",")]
    if not parts or len(parts) > MAX_FRAMES or not all(p.isdigit() and len(p) < 10 for p in parts):
        raise HTTPProblem(
            400, f"frames are 1-based numbers, comma-separated (at most {MAX_FRAMES})"
        )
    numbers = [int(p) for p in parts]
    if count == 0:
        raise HTTPProblem(404, "this instance has no frames")
    if any(n < 1 or n > count for n in numbers):
        raise HTTPProblem(404, f"this instance has frames 1 to {count}")
    return numbers


def read_frames(instance: Instance, numbers: list[int], decode: bool) -> list[bytes]:
    """The frames' bytes: as stored (native slices or compressed frames), or decoded.

    Raises:
        media.NotAcceptable: ``decode`` asked for and the frames cannot be decoded.
        HTTPProblem: The file cannot be read (410) or its pixel data is broken (500).
    """
    import pydicom
    from pydicom.encaps import generate_frames

    with opened(instance) as handle:
        ds = pydicom.dcmread(handle, force=True)
    if "PixelData" not in ds:
        raise HTTPProblem(404, "this instance has no pixel data")
    stored = instance.syntax
    if decode or stored == media.EXPLICIT_BE:
        try:
            array = ds.pixel_array
        except Exception as exc:
            log.info("cannot decode %s: %s", instance.path, exc)
            raise media.NotAcceptable(
                f"the frames (transfer syntax {stored}) cannot be decoded here"
            ) from None
        if int(ds.get("NumberOfFrames", 1) or 1) == 1:
            array = array[None, ...]
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return [little[n - 1].tobytes() for n in numbers]
    data = ds.PixelData
    if stored in media.NATIVE:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        pixels = rows * columns * samples
        if bits == 1:
            if instance.frames > 1 and pixels % 8:
                raise media.NotAcceptable("bit-packed frames that do not end on a byte")
            size = (pixels + 7) // 8
        else:
            size = pixels * (bits // 8)
        out = []
        for n in numbers:
            chunk = data[(n - 1) * size : n * size]
            if len(chunk) != size:
                raise HTTPProblem(500, "the pixel data is shorter than its frames")
            out.append(bytes(chunk))
        return out
    try:
        frames = list(generate_frames(data, number_of_frames=instance.frames))
    except Exception as exc:
        log.info("cannot split the frames of %s: %s", instance.path, exc)
        raise HTTPProblem(500, "the encapsulated pixel data cannot be split into frames") from None
    if len(frames) < max(numbers):
        raise HTTPProblem(500, "the encapsulated pixel data has fewer frames than it says")
    return [frames[n - 1] for n in numbers]


# --------------------------------------------------------------------------- routes


def routes(db: LakeConnection) -> list[BaseRoute]:
    """WADO-RS routes (retrieve, metadata, frames, bulkdata, rendered, thumbnail)."""

    def find(request: Request) -> list[Instance]:
        with db.cursor() as cur:
            return instances_of(cur, uids(request))

    def retrieve(request: Request) -> Response:
        items = find(request)
        ranges = media.accepted(request.headers.get("accept"))
        single = len(items) == 1 and "instance" in request.path_params
        chosen = [
            media.choose_syntax(ranges, "application/dicom", i.syntax, single=single) for i in items
        ]
        if len(items) == 1:  # fail (406, 410) before the response starts
            body = instance_body(items[0], chosen[0])
            if single and media.wants_bare(ranges, "application/dicom"):
                return StreamingResponse(
                    iterate_in_threadpool(iter(body)), media_type="application/dicom"
                )
            return multipart_response(iter([(_part_headers(chosen[0]), body)]), "application/dicom")

        def parts() -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
            for item, syntax in zip(items, chosen, strict=True):
                try:
                    yield _part_headers(syntax), instance_body(item, syntax)
                except (media.NotAcceptable, HTTPProblem) as exc:
                    log.warning("left out of a retrieval: %s (%s)", item.path, exc)

        return multipart_response(parts(), "application/dicom")

    def metadata(request: Request) -> Response:
        items = find(request)
        return StreamingResponse(
            iterate_in_threadpool(metadata_chunks(db, items, base_url(request))),
            media_type="application/dicom+json",
        )

    def frames(request: Request) -> Response:
        item = find(request)[0]
        numbers = parse_frames(request.path_params["frames"], item.frames)
        answer = media.choose_frames(media.accepted(request.headers.get("accept")), item.syntax)
        data = read_frames(item, numbers, answer.decode)
        header = {"Content-Type": f"{answer.media}; transfer-syntax={answer.syntax}"}
        boundary = new_boundary()  # frames are in memory already: one body, no streaming
        body = b"".join(multipart_chunks(((header, [chunk]) for chunk in data), boundary))
        return Response(
            body, headers={"Content-Type": multipart_content_type(boundary, answer.media)}
        )

    def bulkdata(request: Request) -> Response:
        item = find(request)[0]
        offset, length = int(request.path_params["offset"]), int(request.path_params["length"])
        if item.size is not None and offset + length > item.size:
            raise HTTPProblem(404, "no such bulk data in this instance")
        with opened(item) as handle:
            handle.seek(offset)
            data = handle.read(length)
        ranges = media.accepted(request.headers.get("accept"))
        if media.wants_bare(ranges, media.OCTET):
            return Response(data, media_type=media.OCTET)
        return multipart_response(iter([({"Content-Type": media.OCTET}, [data])]), media.OCTET)

    def rendered(request: Request) -> Response:
        return render.rendered(db, request, find(request))

    def thumbnail(request: Request) -> Response:
        return render.thumbnail(db, request, find(request))

    study = "/studies/{study}"
    series = study + "/series/{series}"
    instance = series + "/instances/{instance}"
    frame_list = instance + "/frames/{frames}"
    table = [
        (study, retrieve),
        (series, retrieve),
        (instance, retrieve),
        (study + "/metadata", metadata),
        (series + "/metadata", metadata),
        (instance + "/metadata", metadata),
        (frame_list, frames),
        (instance + "/bulkdata/{offset:int}/{length:int}", bulkdata),
        (study + "/rendered", rendered),
        (series + "/rendered", rendered),
        (instance + "/rendered", rendered),
        (frame_list + "/rendered", rendered),
        (study + "/thumbnail", thumbnail),
        (series + "/thumbnail", thumbnail),
        (instance + "/thumbnail", thumbnail),
        (frame_list + "/thumbnail", thumbnail),
    ]
    return [Route(path, _negotiated(handler), methods=["GET"]) for path, handler in table]


def _negotiated(handler: Endpoint) -> Endpoint:
    """``guarded``, and a 406 for what cannot be offered."""

    def wrapped(request: Request) -> Response:
        try:
            return handler(request)
        except media.NotAcceptable as exc:
            return problem(406, str(exc))

    wrapped.__name__ = handler.__name__
    return guarded(wrapped)
