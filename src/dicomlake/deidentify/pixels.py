"""Clean Pixel Data (PS3.15 E.3.1): find burned-in text in the pixels and blank it.

Two steps, both on a parsed :class:`pydicom.Dataset`:

* :func:`burned_in_risk` says whether a file may carry text in its pixels, and why
  (a reason that names a kind of file, never a value of it). The caller leaves such a
  file out unless the ``clean-pixel-data`` option was given.
* :func:`clean_pixels` blanks the text: boxes found by OCR (Debian's ``tesseract``
  through ``pytesseract``) on an 8-bit display rendering of each frame, plus the
  rectangles of :class:`RegionRules` that match the device. It then OCRs the cleaned
  frames again and raises :class:`~dicomlake.errors.PixelsNotClean` when text is
  still found; only a file that passes gets *Burned In Annotation* ``NO``.

Writing back is lossless. Native pixel data is edited in place: only the bytes of the
blanked boxes change, in the file's own bit layout (bits allocated, planar
configuration, YBR 4:2:2 pairs, byte order). Compressed pixel data is decoded and
written as native Explicit VR Little Endian (color as RGB), never re-encoded with a
lossy codec. When nothing is blanked the pixel data is byte-for-byte unchanged and the
transfer syntax is kept.

How text is found: each frame goes through the display pipeline
(:func:`dicomlake.dicom.pixels.display_frame`: the file's own window, palette, YBR),
color is reduced to its brightest channel (colored text stays bright), and the frame
is upscaled to about :data:`OCR_MIN_SIDE` pixels. Tesseract (``--psm 11``, sparse
text) reads it three times: as displayed, binarized at a cut between the median and
the far extreme, and binarized after a morphological top-hat (:func:`_renderings`).
The cuts drop speckle and keep overlay text: on pydicom's ultrasound screens they
find the banners and the dim labels that the displayed image hides from tesseract.
A word counts by confidence, length and height (:func:`find_text`): speckle and
anatomy are read as letters too, and those rules keep that from blanking half an
image or failing a clean file.

Cost is bounded: at most :data:`MAX_OCR_FRAMES` frames are OCR'd (evenly spread over
the file, first and last included), and the boxes found in any of them are blanked in
every frame, since burned-in text in a cine loop stays where it is. A file takes at
most ``(MAX_ROUNDS + 1) * MAX_OCR_FRAMES * 3`` tesseract calls, each with a timeout of
:data:`OCR_TIMEOUT_S` seconds; a timeout leaves the file out rather than let it
through unchecked. A 640 x 480 ultrasound screen takes 1 to 2 s on one core.

Limits, on purpose or not: frames past the sample of a long cine loop are blanked
with the sample's boxes but not read; text drawn in values the file's window hides
(darker than its lower edge) is not seen, though another window would show it;
overlays (60xx) and text in the header are the profile's business, not this one's.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array

from dicomlake.dicom.pixels import display_frame, number_of_frames
from dicomlake.dicom.quiet import quiet
from dicomlake.errors import PixelsNotClean

logger = logging.getLogger(__name__)

#: Frames OCR'd per file at most; a longer file is sampled evenly (first and last in).
MAX_OCR_FRAMES = 8
#: Seconds one tesseract call may take before the file is left out.
OCR_TIMEOUT_S = 30
#: OCR images are upscaled (at most 4x) until their longer side reaches this many
#: pixels: tesseract reads text 20 to 40 pixels high best, and overlays are small.
OCR_MIN_SIDE = 1280
#: ... and downscaled when their longer side is above this (slow, and text is large).
OCR_MAX_SIDE = 4096
#: Tesseract word confidence (0-100) from which a word is blanked, for the frame as
#: displayed, cut globally and cut after a top-hat (see :func:`_renderings`). Low on
#: purpose, the global cut's lowest (texture rarely survives it): a box blanked for
#: nothing costs a few pixels, a word missed leaks. Tuned on pydicom's ultrasound
#: screens, where lower values blank patch after patch of speckle.
FIND_CONFIDENCE = (50.0, 20.0, 50.0)
#: Confidence from which a word still found in the cleaned pixels fails the file:
#: above the search's, so that texture read as letters (at 50 in a 64-pixel MR, at
#: 60 in the top-hat of ultrasound speckle) leaves no file out, and whatever the check
#: would find before cleaning the search blanks. Planted text reads at 85 to 96.
VERIFY_CONFIDENCE = (60.0, 60.0, 75.0)
#: Widest stroke the top-hat keeps, in frame pixels (odd), and how much brighter
#: than its surroundings (in display levels) a stroke must be.
STROKE_PIXELS = 7
TOP_HAT_CONTRAST = 40
#: Confidence from which a word of two characters or more may be of any size up to
#: :data:`MAX_SURE_SHARE`, and from which a lone character counts (beside a word).
SURE_CONFIDENCE = 80.0
#: A less sure word taller than this share of the frame's longer side (and than
#: :data:`MAX_WORD_PIXELS`) is texture read as letters: burned-in text is small.
MAX_WORD_SHARE = 0.04
MAX_WORD_PIXELS = 20
#: Any word taller than this share of the frame's height is a blob of anatomy read
#: as a letter (tesseract is sure of an "O" 47 pixels high in a 64-pixel MR).
MAX_SURE_SHARE = 0.25
#: A less sure word lower than this many frame pixels is speckle read as letters: a
#: person cannot read text that small either.
MIN_WORD_PIXELS = 6
#: Letters or digits a word must hold to count as text on its own (one is mostly
#: noise; a sure one beside a word counts: "MI=0.8" is read as "MI=0", "." and "8").
MIN_WORD_CHARS = 2
#: Margin around a found word, as a share of its height (at least 2 pixels).
MARGIN_SHARE = 0.25
#: Search-and-blank rounds with OCR before the final check (text can hide text).
MAX_ROUNDS = 2

_NO_TEXT_REASON = "text is still found in the pixels after cleaning"

#: Modalities whose images often carry burned-in text, with the reason given.
RISKY_MODALITIES: dict[str, str] = {
    "US": "ultrasound images often carry burned-in text",
    "OT": "images of modality OT (other) are often screen captures with burned-in text",
    "SC": "secondary capture images often carry burned-in text",
    "XC": "external-camera photographs may show labels and faces",
    "ES": "endoscopy images often carry burned-in text",
    "DOC": "documents are text",
    "GM": "general microscopy images may show slide labels",
}

_SECONDARY_CAPTURE = "secondary capture images often carry burned-in text"
_VIDEO = "video and visible-light photographs often carry burned-in text"
_DOCUMENT = "encapsulated documents are text"
#: SOP classes whose instances often carry burned-in text, with the reason given.
RISKY_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.7": _SECONDARY_CAPTURE,
    "1.2.840.10008.5.1.4.1.1.7.1": _SECONDARY_CAPTURE,  # multi-frame single bit
    "1.2.840.10008.5.1.4.1.1.7.2": _SECONDARY_CAPTURE,  # multi-frame grayscale byte
    "1.2.840.10008.5.1.4.1.1.7.3": _SECONDARY_CAPTURE,  # multi-frame grayscale word
    "1.2.840.10008.5.1.4.1.1.7.4": _SECONDARY_CAPTURE,  # multi-frame true color
    "1.2.840.10008.5.1.4.1.1.104.1": _DOCUMENT,  # encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.104.2": _DOCUMENT,  # encapsulated CDA
    "1.2.840.10008.5.1.4.1.1.77.1.1": _VIDEO,  # VL endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": _VIDEO,  # video endoscopic
    "1.2.840.10008.5.1.4.1.1.77.1.2": _VIDEO,  # VL microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.2.1": _VIDEO,  # video microscopic
    "1.2.840.10008.5.1.4.1.1.77.1.4": _VIDEO,  # VL photographic
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": _VIDEO,  # video photographic
    "1.2.840.10008.5.1.4.1.1.77.1.5.1": _VIDEO,  # ophthalmic photography 8 bit
    "1.2.840.10008.5.1.4.1.1.77.1.5.2": _VIDEO,  # ophthalmic photography 16 bit
    "1.2.840.10008.5.1.4.1.1.6.1": RISKY_MODALITIES["US"],  # US image
    "1.2.840.10008.5.1.4.1.1.6": RISKY_MODALITIES["US"],  # US image (retired)
    "1.2.840.10008.5.1.4.1.1.3.1": RISKY_MODALITIES["US"],  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.3": RISKY_MODALITIES["US"],  # US multi-frame (retired)
}

#: Third values of a DERIVED\SECONDARY *Image Type* that mark a screen capture.
_CAPTURE_TYPES = {"", "OTHER", "CAPTURE", "SCREEN SAVE", "SCREENSHOT", "SCREEN CAPTURE"}


def _values(value: Any) -> list[str]:
    """A (possibly multi-valued) element value as upper-case strings."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple | MultiValue) else [value]
    return [str(v).strip().upper() for v in items]


def burned_in_risk(ds: Dataset) -> str | None:
    r"""Why ``ds``'s pixels may carry burned-in text, or None when they likely do not.

    *Burned In Annotation* (0028,0301) ``YES`` always counts, and ``NO`` is trusted:
    the device said so. Otherwise a file counts when it is of a kind that often
    carries text: a modality of :data:`RISKY_MODALITIES` (US, OT, SC, XC, ES, DOC,
    GM), a SOP class of :data:`RISKY_SOP_CLASSES` (Secondary Capture, encapsulated
    documents, visible-light and video photography, ultrasound), an *Image Type*
    naming a screen save, or DERIVED\SECONDARY with no further value or one that
    names a capture (reformats such as MPR or MIP do not count), a slide-microscopy
    LABEL or OVERVIEW image, or any *Conversion Type* (0008,0064): the image was
    digitized or captured, not acquired. A CT, MR, PT, NM, CR, DX or MG acquisition
    without the attribute is taken as clean: those devices keep their annotations
    out of the pixels, and their dose screens come as Secondary Capture.

    The reason names the kind of file and never holds a value of it.
    """
    burned = _values(ds.get("BurnedInAnnotation"))
    if burned[:1] == ["YES"]:
        return "BurnedInAnnotation is YES"
    if burned[:1] == ["NO"]:
        return None
    modality = (_values(ds.get("Modality")) or [""])[0]
    if modality in RISKY_MODALITIES:
        return RISKY_MODALITIES[modality]
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if sop_class in RISKY_SOP_CLASSES:
        return RISKY_SOP_CLASSES[sop_class]
    image_type = _values(ds.get("ImageType"))
    if any("SCREEN" in v and ("SAVE" in v or "SHOT" in v) for v in image_type):
        return "screen captures carry burned-in text"
    if image_type[:2] == ["DERIVED", "SECONDARY"] and (
        len(image_type) < 3 or image_type[2] in _CAPTURE_TYPES
    ):
        return "derived secondary images without a reformat type are often screen captures"
    if modality == "SM" and len(image_type) >= 3 and image_type[2] in ("LABEL", "OVERVIEW"):
        return "slide label and overview images show the slide's label"
    if "ConversionType" in ds:
        return "converted or captured images (Conversion Type) often carry burned-in text"
    return None


@dataclass(frozen=True, slots=True)
class Box:
    """A rectangle of a frame in pixels: columns x..x+w-1, rows y..y+h-1."""

    x: int
    y: int
    w: int
    h: int

    def clip(self, rows: int, columns: int) -> Box | None:
        """The part of the box inside a rows x columns frame, or None if none is."""
        x0, y0 = max(self.x, 0), max(self.y, 0)
        x1, y1 = min(self.x + self.w, columns), min(self.y + self.h, rows)
        if x1 <= x0 or y1 <= y0:
            return None
        return Box(x0, y0, x1 - x0, y1 - y0)


def _pattern_matches(pattern: str, value: str) -> bool:
    """Case-insensitive glob, or a regular expression after ``re:`` (whole value)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], value, flags=re.IGNORECASE) is not None
    return fnmatch.fnmatchcase(value.upper(), pattern.upper())


@dataclass(frozen=True, slots=True)
class RegionRule:
    """Rectangles blanked in every image of one device and image size.

    Attributes:
        manufacturer: Glob (or ``re:`` regex) matched to *Manufacturer*.
        model: Glob or regex matched to *Manufacturer's Model Name*; None for any.
        rows: *Rows* the rectangles were drawn for.
        columns: *Columns* the rectangles were drawn for.
        rectangles: The boxes to blank.
    """

    manufacturer: str
    model: str | None
    rows: int
    columns: int
    rectangles: tuple[Box, ...]

    def matches(self, ds: Dataset) -> bool:
        """Whether the rule is for ``ds``'s device and image size."""
        try:
            rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        except (TypeError, ValueError):
            return False
        if (rows, columns) != (self.rows, self.columns):
            return False
        if not _pattern_matches(self.manufacturer, str(ds.get("Manufacturer", "") or "")):
            return False
        model = str(ds.get("ManufacturerModelName", "") or "")
        return self.model is None or _pattern_matches(self.model, model)


def _rule_from_json(item: Any, where: str) -> RegionRule:
    """One rule of a rules file; ValueError naming ``where`` when it is malformed."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: a rule must be an object")
    unknown = set(item) - {"manufacturer", "model", "rows", "columns", "rectangles", "comment"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    manufacturer, model = item.get("manufacturer"), item.get("model")
    if not isinstance(manufacturer, str) or not manufacturer:
        raise ValueError(f"{where}: 'manufacturer' must be a non-empty string")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"{where}: 'model' must be a string when given")
    for pattern in (manufacturer, model):
        if pattern is not None and pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as exc:
                raise ValueError(f"{where}: bad regular expression: {exc}") from None
    rows, columns = item.get("rows"), item.get("columns")
    for name, size in (("rows", rows), ("columns", columns)):
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"{where}: '{name}' must be a positive integer")
    rectangles = item.get("rectangles")
    if not isinstance(rectangles, list) or not rectangles:
        raise ValueError(f"{where}: 'rectangles' must be a non-empty list of [x, y, w, h]")
    boxes = []
    for k, rect in enumerate(rectangles):
        if (
            not isinstance(rect, list)
            or len(rect) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in rect)
            or rect[0] < 0
            or rect[1] < 0
            or rect[2] <= 0
            or rect[3] <= 0
        ):
            raise ValueError(
                f"{where}: rectangle {k} must be [x, y, w, h] with x, y >= 0 and w, h > 0"
            )
        boxes.append(Box(*rect))
    assert isinstance(rows, int) and isinstance(columns, int)  # checked above
    return RegionRule(manufacturer, model, rows, columns, tuple(boxes))


@dataclass(frozen=True, slots=True)
class RegionRules:
    """Known places of burned-in text by device: rectangles blanked with or without OCR.

    A rules file is JSON: a list of rules, or an object whose ``rules`` key holds the
    list (other keys are comments). A rule is ``{"manufacturer": GLOB, "model": GLOB
    (optional), "rows": N, "columns": N, "rectangles": [[x, y, w, h], ...]}``; globs
    match case-insensitively, a pattern starting ``re:`` is a regular expression.
    Every matching rule's rectangles are blanked in every frame.
    """

    rules: tuple[RegionRule, ...] = ()

    @classmethod
    def from_json(cls, data: Any, *, source: str = "rules") -> RegionRules:
        """Rules from parsed JSON; ValueError naming ``source`` when malformed."""
        if isinstance(data, dict):
            data = data.get("rules")
        if not isinstance(data, list):
            raise ValueError(f"{source}: expected a list of rules, or an object with 'rules'")
        return cls(
            tuple(_rule_from_json(item, f"{source}: rule {i}") for i, item in enumerate(data))
        )

    @classmethod
    def from_file(cls, path: str | Path) -> RegionRules:
        """Read a rules file (``dicomlake deid --regions FILE``).

        Raises:
            OSError: The file cannot be read.
            ValueError: It is not JSON or not a valid rules list.
        """
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from None
        return cls.from_json(data, source=str(path))

    @classmethod
    def default(cls) -> RegionRules:
        """The rules shipped with dicomlake (``burned_in_regions.json``): the user's to extend.

        Read once per process: the de-identification kernel asks for them per file.
        """
        return _shipped_rules()

    def boxes_for(self, ds: Dataset) -> list[Box]:
        """The rectangles of every rule that matches ``ds``."""
        return [box for rule in self.rules if rule.matches(ds) for box in rule.rectangles]


# --- OCR ---------------------------------------------------------------------------


def tesseract_available() -> bool:
    """Whether both ``pytesseract`` and the ``tesseract`` program can be used."""
    try:
        import pytesseract  # type: ignore[import-untyped]  # noqa: F401  # no stubs
    except ImportError:
        return False
    return shutil.which("tesseract") is not None


def _single_threaded() -> None:
    """Run tesseract with one OpenMP thread unless the user set OMP_THREAD_LIMIT.

    Its threads only slow small images down (a 640 x 480 screen takes 2.7 times as
    long with two), and de-identification runs files in parallel anyway. pytesseract
    0.3.13 passes its module's ``environ`` to the subprocess; this process's own
    environment is left alone, since OpenMP in it (torch) would read the limit too.
    """
    from pytesseract import pytesseract as module

    module.environ = {"OMP_THREAD_LIMIT": "1", **os.environ}


def _ocr_image(image: np.ndarray) -> list[tuple[Box, float, int]]:
    """Words tesseract reads in a uint8 L image: (box, confidence, letters and digits)."""
    import pytesseract
    from PIL import Image

    _single_threaded()
    try:
        data = pytesseract.image_to_data(
            Image.fromarray(image),
            lang="eng",
            config="--psm 11",  # sparse text: words anywhere, in no order
            output_type=pytesseract.Output.DICT,
            timeout=OCR_TIMEOUT_S,
        )
    except RuntimeError as exc:  # pytesseract's "Tesseract process timeout"
        raise PixelsNotClean(f"OCR did not finish within {OCR_TIMEOUT_S} s") from exc
    except (pytesseract.TesseractError, OSError) as exc:
        raise PixelsNotClean(f"OCR failed ({type(exc).__name__})") from exc
    words = []
    for text, conf, left, top, width, height in zip(
        data["text"],
        data["conf"],
        data["left"],
        data["top"],
        data["width"],
        data["height"],
        strict=True,
    ):
        chars = sum(c.isalnum() for c in str(text))
        if chars:
            words.append((Box(int(left), int(top), int(width), int(height)), float(conf), chars))
    return words


def _gray(pixels: np.ndarray) -> np.ndarray:
    """One channel to OCR: the brightest of R, G and B, so colored text stays bright."""
    if pixels.ndim == 3:
        return np.asarray(pixels.max(axis=2), dtype=np.uint8)
    return np.asarray(pixels, dtype=np.uint8)


def _running(values: np.ndarray, size: int, axis: int, reduce: Any) -> np.ndarray:
    """``reduce`` (np.min, np.max) over a window of ``size`` along one axis."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (size // 2, size // 2)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(values, pad, mode="edge"), size, axis=axis
    )
    return np.asarray(reduce(windows, axis=-1))


def _top_hat(gray: np.ndarray) -> np.ndarray:
    """Thin strokes brighter than their surroundings: gray minus its opening.

    The opening (min then max filter over :data:`STROKE_PIXELS` squared) wipes out
    anything thinner than that, so subtracting it keeps text strokes and drops the
    broad structures (organs, the bright fan) a global cut keeps with them. It finds
    dim text that no global cut separates from the image (pydicom's cardiac loops).
    """
    opened = gray
    for reduce in (np.min, np.max):
        for axis in (0, 1):
            opened = _running(opened, STROKE_PIXELS, axis, reduce)
    return gray.astype(np.int16) - opened.astype(np.int16)


def _renderings(gray: np.ndarray) -> list[np.ndarray]:
    """The images OCR'd for one frame: as displayed, cut globally, and top-hat.

    Noise and texture defeat tesseract's own thresholding, while burned-in text is
    drawn bright on dark images (or dark on light screens and documents, which are
    inverted first). Two binarized copies, black on white as tesseract reads best:
    a cut between the median and the far extreme keeps saturated text and drops the
    texture; a cut of the top-hat (:func:`_top_hat`) keeps text that is only brighter
    than what is around it.
    """
    light = float(np.median(gray)) >= 128
    bright = 255 - gray if light else gray
    median = float(np.median(bright))
    cut = np.where(bright >= median + 0.55 * (255.0 - median), 0, 255).astype(np.uint8)
    strokes = np.where(_top_hat(bright) >= TOP_HAT_CONTRAST, 0, 255).astype(np.uint8)
    return [gray, cut, strokes]


def _scale_for(rows: int, columns: int) -> float:
    """Factor from frame pixels to OCR pixels (see :data:`OCR_MIN_SIDE`)."""
    side = max(rows, columns, 1)
    if side > OCR_MAX_SIDE:
        return OCR_MAX_SIDE / side
    return float(min(4, max(1, math.ceil(OCR_MIN_SIDE / side))))


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1:
        return image
    from PIL import Image

    rows, columns = image.shape
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    resample = Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(image, mode="L").resize(size, resample))


def _is_word(height: float, conf: float, chars: int, confidence: float, tallest: float) -> bool:
    """Whether a word of two characters or more (height in frame pixels) is text."""
    if conf < confidence or chars < MIN_WORD_CHARS:
        return False
    return conf >= SURE_CONFIDENCE or MIN_WORD_PIXELS <= height <= tallest


def _beside(box: Box, words: Sequence[Box]) -> bool:
    """Whether ``box`` sits on the line of one of ``words``, within a height of it."""
    for word in words:
        gap = max(word.x - (box.x + box.w), box.x - (word.x + word.w))
        middle = box.y + box.h / 2
        if gap <= max(word.h, box.h) and word.y <= middle <= word.y + word.h:
            return True
    return False


def find_text(
    pixels: np.ndarray, *, min_confidence: tuple[float, ...] = FIND_CONFIDENCE
) -> list[Box]:
    """Boxes (with a margin) of the words OCR reads in one uint8 display frame.

    A word counts when tesseract is sure of it, or fairly sure and of the size of
    burned-in text; a lone character only when sure and beside such a word (a blob
    of anatomy is read as an "O" with confidence 90, a split "MI=0.8" leaves an "8").

    Args:
        pixels: (rows, columns) L or (rows, columns, 3) RGB, as ``display_frame`` gives.
        min_confidence: Tesseract confidence (0-100) a word needs in each of the
            renderings of :func:`_renderings`, in order.

    Raises:
        PixelsNotClean: Tesseract timed out or failed.
    """
    gray = _gray(pixels)
    rows, columns = gray.shape
    scale = _scale_for(rows, columns)
    tallest = max(MAX_WORD_PIXELS, MAX_WORD_SHARE * max(rows, columns))
    found: list[Box] = []
    for image, confidence in zip(_renderings(gray), min_confidence, strict=True):
        words, singles = [], []
        for box, conf, chars in _ocr_image(_resize(image, scale)):
            frame_box = Box(
                math.floor(box.x / scale),
                math.floor(box.y / scale),
                math.ceil(box.w / scale),
                math.ceil(box.h / scale),
            )
            if frame_box.h > MAX_SURE_SHARE * rows:
                continue
            if _is_word(box.h / scale, conf, chars, confidence, tallest):
                words.append(frame_box)
            elif chars == 1 and conf >= max(confidence, SURE_CONFIDENCE):
                singles.append(frame_box)
        found.extend(words)
        found.extend(box for box in singles if _beside(box, words))
    boxes = []
    for box in found:
        margin = math.ceil(max(2.0, MARGIN_SHARE * box.h))
        grown = Box(box.x - margin, box.y - margin, box.w + 2 * margin, box.h + 2 * margin)
        clipped = grown.clip(rows, columns)
        if clipped is not None:
            boxes.append(clipped)
    return boxes


# --- decoding and writing back -----------------------------------------------------


def _ocr_frames(count: int) -> list[int]:
    """The frames OCR'd: all up to :data:`MAX_OCR_FRAMES`, else an even spread."""
    if count <= MAX_OCR_FRAMES:
        return list(range(count))
    return sorted({round(i * (count - 1) / (MAX_OCR_FRAMES - 1)) for i in range(MAX_OCR_FRAMES)})


def _decode(ds: Dataset, frame: int) -> np.ndarray:
    """One frame's stored values (color as RGB); PixelsNotClean if it cannot be."""
    try:
        return pixel_array(ds, index=frame)
    except Exception as exc:  # any decoder failure: the file cannot be checked
        raise PixelsNotClean(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc


def _scan(ds: Dataset, frames: Sequence[int], min_confidence: tuple[float, ...]) -> list[Box]:
    """Boxes of text OCR finds in ``frames`` of ``ds`` as they are now."""
    boxes: list[Box] = []
    for index in frames:
        shown = display_frame(_decode(ds, index), ds, index)
        boxes.extend(find_text(shown.pixels, min_confidence=min_confidence))
    return boxes


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").upper()


def _gray_fill(ds: Dataset, frame: np.ndarray) -> int | float:
    """The stored value that shows darkest in one grayscale or palette frame."""
    photometric = _photometric(ds)
    if photometric == "PALETTE COLOR":
        present = np.unique(frame)
        if present.size > 65536:
            present = present[:65536]
        try:
            rgb = apply_color_lut(present, ds)
            value: int | float = present[int(np.argmin(rgb.astype(np.float64).sum(axis=-1)))]
        except Exception:  # a broken palette: the smallest index
            value = present.min()
        return value.item() if isinstance(value, np.generic) else value
    value = frame.max() if photometric == "MONOCHROME1" else frame.min()
    return value.item() if isinstance(value, np.generic) else value


def _is_native(ds: Dataset) -> bool:
    """Whether *Pixel Data* is native (deflated and big endian included)."""
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsyntax is None:
        return "PixelData" in ds and not ds["PixelData"].is_undefined_length
    try:
        return not tsyntax.is_compressed
    except ValueError:  # not a transfer syntax pydicom knows
        raise PixelsNotClean("the transfer syntax is not known") from None


def _blank_native(ds: Dataset, boxes: Sequence[Box]) -> None:
    """Blank ``boxes`` in every frame by editing native *Pixel Data* bytes in place.

    Only the bytes (bits, for 1-bit data) of the boxes change; the layout is the
    file's own. The fill is the darkest stored value of each frame for grayscale,
    black for color (Y = 0 or 16 and Cb = Cr = mid-range for YBR).
    """
    frames = number_of_frames(ds)
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    allocated = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", allocated) or allocated)
    photometric = _photometric(ds)
    raw = bytes(ds.PixelData)
    big = bool(ds.file_meta.get("TransferSyntaxUID", "") == "1.2.840.10008.1.2.2")

    fills: list[int | float] = []
    if samples == 1:
        for index in range(frames):
            fills.append(_gray_fill(ds, _decode(ds, index)))
    if allocated == 1:
        pixels = frames * rows * columns
        if len(raw) * 8 < pixels:
            raise PixelsNotClean("the pixel data is shorter than its attributes say")
        bits = (
            np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:pixels]
            .reshape(frames, rows, columns)
            .copy()
        )
        for index in range(frames):
            for box in boxes:
                bits[index, box.y : box.y + box.h, box.x : box.x + box.w] = fills[index]
        packed = np.packbits(bits.ravel(), bitorder="little").tobytes()
        data = packed + raw[len(packed) :]
        ds.PixelData = data if len(data) % 2 == 0 else data + b"\x00"
        return
    if allocated % 8 or allocated > 64:
        raise PixelsNotClean(f"Bits Allocated {allocated} is not supported")
    dtype = np.dtype(f"{'>' if big else '<'}u{allocated // 8}")
    size = frames * rows * columns * samples * dtype.itemsize
    subsampled = samples == 3 and photometric.endswith("_422")
    if subsampled:
        if columns % 2:
            raise PixelsNotClean("4:2:2 pixel data with an odd number of columns")
        size = frames * rows * (columns // 2) * 4 * dtype.itemsize
    if len(raw) < size:
        raise PixelsNotClean("the pixel data is shorter than its attributes say")
    values = np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize).copy()
    mask = (1 << stored) - 1
    if samples == 1:
        view = values.reshape(frames, rows, columns)
        for index in range(frames):
            fill = fills[index]
            for box in boxes:
                region = view[index, box.y : box.y + box.h, box.x : box.x + box.w]
                region[...] = int(fill) & mask
    else:
        mid = 1 << (stored - 1)
        luma = (16 << (stored - 8)) if "PARTIAL" in photometric and stored >= 8 else 0
        color = (0, 0, 0) if photometric == "RGB" else (luma, mid, mid)
        if subsampled:  # Y1 Y2 Cb Cr per pair of columns
            pairs = values.reshape(frames, rows, columns // 2, 4)
            for box in boxes:
                first, last = box.x // 2, (box.x + box.w + 1) // 2
                pairs[:, box.y : box.y + box.h, first:last] = (color[0], color[0], *color[1:])
        elif int(ds.get("PlanarConfiguration", 0) or 0) == 1:
            planes = values.reshape(frames, 3, rows, columns)
            for box in boxes:
                for sample in range(3):
                    planes[:, sample, box.y : box.y + box.h, box.x : box.x + box.w] = color[sample]
        else:
            interleaved = values.reshape(frames, rows, columns, 3)
            for box in boxes:
                interleaved[:, box.y : box.y + box.h, box.x : box.x + box.w] = color
    data = values.tobytes() + raw[size:]
    ds.PixelData = data if len(data) % 2 == 0 else data + b"\x00"


def _blank_compressed(ds: Dataset, boxes: Sequence[Box]) -> None:
    """Decode every frame, blank ``boxes``, write native Explicit VR Little Endian."""
    frames = number_of_frames(ds)
    had_frames = "NumberOfFrames" in ds
    try:
        arr = pixel_array(ds)  # all frames; YBR converted to RGB
    except Exception as exc:
        raise PixelsNotClean(f"the pixel data cannot be decoded ({type(exc).__name__})") from exc
    arr = np.array(arr, copy=True)
    samples = 3 if arr.ndim == (4 if frames > 1 else 3) else 1
    stack = arr if frames > 1 else arr[np.newaxis]
    for index in range(frames):
        fill: int | float = 0 if samples == 3 else _gray_fill(ds, stack[index])
        for box in boxes:
            stack[index, box.y : box.y + box.h, box.x : box.x + box.w] = fill
    photometric = "RGB" if samples == 3 else _photometric(ds)
    stored = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    try:
        ds.set_pixel_data(
            arr, photometric, min(stored, arr.dtype.itemsize * 8), generate_instance_uid=False
        )
    except (ValueError, NotImplementedError, AttributeError) as exc:
        raise PixelsNotClean(
            f"the cleaned pixels cannot be written natively ({type(exc).__name__})"
        ) from exc
    if had_frames and "NumberOfFrames" not in ds:
        ds.NumberOfFrames = 1  # a multi-frame IOD keeps the attribute


def _merge(boxes: Iterable[Box]) -> list[Box]:
    """Distinct boxes, in a stable order."""
    return list(dict.fromkeys(boxes))


@quiet
def clean_pixels(ds: Dataset, *, rules: RegionRules | None = None, ocr: bool = True) -> None:
    """Blank burned-in text in ``ds``'s pixels, check them again, set it NO.

    The caller calls this only for a file :func:`burned_in_risk` flags or when the
    ``clean-pixel-data`` option asks; a file it does not call this for is untouched.
    When nothing is found to blank, the pixel data and transfer syntax are byte for
    byte unchanged (only *Burned In Annotation* is set).

    Args:
        ds: The data set, changed in place. On PixelsNotClean it may be half changed
            and must not be written.
        rules: Device rectangles to blank always; None for :meth:`RegionRules.default`.
        ocr: Search for text with OCR and blank it. With False only the rules'
            rectangles are blanked, but the final OCR check still runs.

    Raises:
        PixelsNotClean: Text is still found after cleaning; or the pixels cannot be
            decoded, OCR'd (tesseract missing or timed out) or written back.
    """
    if "PixelData" not in ds:
        raise PixelsNotClean("the file has no pixel data that can be cleaned")
    if not tesseract_available():
        raise PixelsNotClean("tesseract is not installed: the pixels cannot be checked")
    rules = RegionRules.default() if rules is None else rules
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        raise PixelsNotClean("Rows and Columns are missing or not numbers") from None
    frames = _ocr_frames(number_of_frames(ds))
    native = _is_native(ds)

    def blank(boxes: list[Box]) -> None:
        nonlocal native
        clipped = [b for b in (box.clip(rows, columns) for box in boxes) if b is not None]
        if not clipped:
            return
        if native:
            _blank_native(ds, clipped)
        else:
            _blank_compressed(ds, clipped)
            native = True

    blank(rules.boxes_for(ds))
    rounds = MAX_ROUNDS if ocr else 0
    confidence = FIND_CONFIDENCE
    for _ in range(rounds):
        found = _merge(_scan(ds, frames, confidence))
        if not found:
            break
        blank(found)
    else:
        if _scan(ds, frames, VERIFY_CONFIDENCE):
            raise PixelsNotClean(_NO_TEXT_REASON)
    ds.BurnedInAnnotation = "NO"


@functools.cache
def _shipped_rules() -> RegionRules:
    text = resources.files(__package__).joinpath("burned_in_regions.json").read_text("utf-8")
    return RegionRules.from_json(json.loads(text), source="burned_in_regions.json")
