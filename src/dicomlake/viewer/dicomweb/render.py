"""Rendered images and thumbnails (PS3.18 §8.3.5 and §9.5): consumer-ready JPEG or PNG.

Frames go through the project's display pipeline (modality LUT, VOI, MONOCHROME1,
color spaces) exactly as the thumbnails table's; ``window=center,width[,function]``
replaces the file's own VOI, ``viewport=vw,vh[,sx,sy,sw,sh]`` crops a region of the
source and fits it into ``vw`` x ``vh`` (aspect kept), ``quality`` sets JPEG quality.
A waveform (ECG) is drawn as a plot. Thumbnails come from the ``thumbnails`` table
when the lake has one, else are rendered small.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from dicomlake.search.connection import LakeConnection
from dicomlake.viewer.dicomweb import media
from dicomlake.viewer.dicomweb.service import HTTPProblem, multipart_response

if TYPE_CHECKING:
    from PIL import Image

    from dicomlake.viewer.dicomweb.lookup import Instance

log = logging.getLogger(__name__)

#: Side of a thumbnail rendered on demand, in pixels.
THUMBNAIL_SIZE = 128
#: Largest viewport side a client may ask for.
MAX_VIEWPORT = 4096
#: Instances one rendered series or study may hold (the rest are left out).
MAX_RENDERED = 500

_WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear_exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}


@dataclass(frozen=True)
class Presentation:
    """How a client asked for the image to be shown."""

    window: tuple[float, float, str] | None = None
    size: tuple[int, int] | None = None  # viewport width, height
    crop: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh in source pixels
    quality: int = 90

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Presentation:
        """Read ``window``, ``viewport`` and ``quality``.

        Raises:
            HTTPProblem: A malformed parameter (400).
        """
        window = None
        if params.get("window"):
            parts = params["window"].split(",")
            try:
                center, width = float(parts[0]), float(parts[1])
            except (IndexError, ValueError):
                raise HTTPProblem(400, "window is center,width[,function]") from None
            function = _WINDOW_FUNCTIONS.get(
                parts[2].strip().lower() if len(parts) > 2 else "linear"
            )
            if function is None or len(parts) > 3 or width <= 0:
                raise HTTPProblem(
                    400, "window is center,width[,linear|linear_exact|sigmoid], width > 0"
                )
            window = (center, width, function)
        size = crop = None
        if params.get("viewport"):
            try:
                numbers = [int(float(v)) for v in params["viewport"].split(",")]
            except ValueError:
                raise HTTPProblem(400, "viewport is vw,vh[,sx,sy,sw,sh]") from None
            if len(numbers) not in (2, 6) or not all(0 < n <= MAX_VIEWPORT for n in numbers[:2]):
                raise HTTPProblem(
                    400, f"viewport is vw,vh[,sx,sy,sw,sh], 0 < vw,vh <= {MAX_VIEWPORT}"
                )
            size = (numbers[0], numbers[1])
            if len(numbers) == 6:
                sx, sy, sw, sh = numbers[2:]
                if sx < 0 or sy < 0 or sw == 0 or sh == 0:
                    raise HTTPProblem(400, "viewport's sx,sy must be >= 0 and sw,sh not 0")
                crop = (sx, sy, sw, sh)
        quality = 90
        if params.get("quality"):
            text = params["quality"]
            if not text.isdigit() or not 1 <= int(text) <= 100:
                raise HTTPProblem(400, "quality is a whole number from 1 to 100")
            quality = int(text)
        return cls(window, size, crop, quality)


def _waveform(ds: Any, width: int) -> Image.Image:
    try:
        from dicomlake.dicom.waveform import has_waveform, render_waveform
    except ImportError:
        raise HTTPProblem(404, "this instance has no image") from None
    if not has_waveform(ds):
        raise HTTPProblem(404, "this instance has no image")
    return render_waveform(ds, width=width)


def draw(instance: Instance, frame: int, look: Presentation) -> Image.Image:
    """Frame ``frame`` (0-based) of an instance as a display image, cropped and fitted.

    Raises:
        HTTPProblem: No image (404), unreadable file (410) or undecodable pixels (500).
    """
    import pydicom
    from PIL import Image

    from dicomlake.dicom.pixels import display_frame, read_frame
    from dicomlake.viewer.dicomweb.retrieve import opened

    max_side = max(look.size) if look.size and look.crop is None else None
    with opened(instance) as handle:
        if instance.frames == 0:
            handle.seek(0)
            image = _waveform(pydicom.dcmread(handle, force=True), (look.size or (1024, 0))[0])
        else:
            try:
                stored, ds, _ = read_frame(handle, frame, max_side=max_side)
                shown = display_frame(stored, ds, frame, window=look.window)
            except HTTPProblem:
                raise
            except Exception as exc:
                log.info("cannot render %s frame %d: %s", instance.path, frame, exc)
                raise HTTPProblem(500, "the pixel data cannot be decoded here") from None
            image = Image.fromarray(shown.pixels, mode=shown.mode)
            if abs(shown.aspect - 1.0) > 1e-3:  # non-square pixels: physical proportions
                height = max(1, round(image.height * shown.aspect))
                image = image.resize((image.width, height), Image.Resampling.LANCZOS)
    if look.crop is not None:
        sx, sy, sw, sh = look.crop
        box = (min(sx, sx + sw), min(sy, sy + sh), max(sx, sx + sw), max(sy, sy + sh))
        image = image.crop(box)
        if sw < 0:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if sh < 0:
            image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if look.size is not None:
        scale = min(look.size[0] / image.width, look.size[1] / image.height)
        target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if target != image.size:
            image = image.resize(target, Image.Resampling.LANCZOS)
    return image


def encode(image: Image.Image, media_type: str, quality: int = 90) -> bytes:
    """JPEG or PNG bytes of an image."""
    out = io.BytesIO()
    if media_type == "image/png":
        image.save(out, format="PNG", compress_level=6)
    else:
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _frame_numbers(request: Request, instance: Instance) -> list[int]:
    from dicomlake.viewer.dicomweb.retrieve import parse_frames

    text = request.path_params.get("frames")
    if text is None:
        return [1]
    return parse_frames(text, instance.frames)


def rendered(db: LakeConnection, request: Request, items: Sequence[Instance]) -> Response:
    """An instance's or frame's rendered image; a series' or study's as multipart."""
    look = Presentation.from_params(request.query_params)
    ranges = media.accepted(request.headers.get("accept"))
    image_type = media.image_media(ranges)
    if "instance" in request.path_params:
        item = items[0]
        numbers = _frame_numbers(request, item)
        if len(numbers) == 1:
            data = encode(draw(item, numbers[0] - 1, look), image_type, look.quality)
            return Response(data, media_type=image_type)
        images = [(item, n - 1) for n in numbers]
    else:
        images = [(item, 0) for item in items[:MAX_RENDERED]]

    def parts() -> Iterator[tuple[dict[str, str], list[bytes]]]:
        for item, frame in images:
            try:
                data = encode(draw(item, frame, look), image_type, look.quality)
            except HTTPProblem as exc:
                log.info("left out of a rendered series: %s", exc)
                continue
            yield {"Content-Type": image_type}, [data]

    return multipart_response(parts(), image_type)


def thumbnail(db: LakeConnection, request: Request, items: Sequence[Instance]) -> Response:
    """A small image of a study, series, instance or frame (the middle one of many)."""
    look = Presentation.from_params(request.query_params)
    ranges = media.accepted(request.headers.get("accept"))
    image_type = media.image_media(ranges)
    item = items[len(items) // 2]
    if "frames" in request.path_params:
        frame = _frame_numbers(request, item)[0] - 1
    else:
        frame = item.frames // 2 if item.frames > 1 else 0
    if look.window is None and look.crop is None:
        stored = _stored_thumbnail(db, item.row_id, frame)
        if stored is not None:
            from PIL import Image

            image = Image.open(io.BytesIO(stored))
            image.load()
            if look.size is not None:
                image.thumbnail(look.size, Image.Resampling.LANCZOS)
            return Response(encode(image, image_type, look.quality), media_type=image_type)
    if look.size is None:
        look = Presentation(look.window, (THUMBNAIL_SIZE, THUMBNAIL_SIZE), None, look.quality)
    return Response(
        encode(draw(item, frame, look), image_type, look.quality), media_type=image_type
    )


def _stored_thumbnail(db: LakeConnection, row_id: int, frame: int) -> bytes | None:
    with db.cursor() as cur:
        if not cur.has_thumbnails:
            return None
        rows = cur.fetch(
            "SELECT data FROM thumbnails WHERE row_id = ? AND frame = ? AND status = 'ok' "
            "AND data IS NOT NULL LIMIT 1",
            [row_id, frame],
        )
    return bytes(rows[0][0]) if rows else None
