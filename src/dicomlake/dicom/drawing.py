"""Drawing: a display frame scaled to a thumbnail and encoded as PNG.

The display pipeline (:func:`~dicomlake.dicom.pixels.render`) gives uint8 pixels that
are medically right; this module only scales them (keeping the physical aspect of
non-square pixels, never enlarging) and encodes them.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import IO

from dicomlake.dicom.pixels import DisplayFrame, render


@dataclass(frozen=True, slots=True)
class Drawing:
    """One frame drawn: PNG bytes, their size in pixels, and the mode ('L' or 'RGB')."""

    png: bytes
    width: int
    height: int
    mode: str


def encode_png(display: DisplayFrame, size: int) -> tuple[bytes, int, int]:
    """Scale a display frame to fit ``size`` (aspect kept, physical) and encode PNG.

    Returns:
        (PNG bytes, width, height).
    """
    from PIL import Image

    image = Image.fromarray(display.pixels, mode=display.mode)
    width = float(image.width)
    height = float(image.height) * display.aspect  # non-square pixels
    scale = min(1.0, size / max(width, height))  # never enlarge
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    # zlib's fastest level, with run-length matches only for grayscale: on the test
    # files' thumbnails gray comes out as small as at level 6 and color 3% larger, in
    # 40% and 50% of level 6's time
    strategy = zlib.Z_RLE if image.mode == "L" else zlib.Z_DEFAULT_STRATEGY
    image.save(out, format="PNG", compress_level=1, compress_type=strategy)
    return out.getvalue(), image.width, image.height


def draw(fp: IO[bytes], *, frame: int, size: int) -> Drawing:
    """Draw frame ``frame`` of the file open in ``fp`` as a PNG of at most ``size`` px.

    Large JPEG and JPEG 2000 frames are decoded at reduced resolution (never below
    what ``size`` needs).

    Raises:
        Exception: Whatever decoding the frame raises (a missing codec, corrupt data).
    """
    display = render(fp, frame=frame, max_side=size)
    data, width, height = encode_png(display, size)
    return Drawing(data, width, height, display.mode)
