"""Display pixels: one frame through the standard's grayscale and color pipelines.

The order is PS3.4's: stored values (masked to *Bits Stored*, sign from *Pixel
Representation* — pydicom's decoders do both), Modality LUT (rescale or *Modality LUT
Sequence*), VOI LUT (the first *Window Center*/*Width* with its *VOI LUT Function*,
else the first *VOI LUT Sequence* item, else a robust window from the image's own
percentiles), then *Presentation LUT Shape* / MONOCHROME1 inversion. Color images
come out as RGB: PALETTE COLOR through its LUTs, YBR_* converted, planar
configuration honoured by pydicom. Enhanced multi-frame images take rescale, window
and pixel spacing from their Shared / Per-frame Functional Groups.

Large compressed frames are decoded at reduced resolution where the codec allows it
(JPEG baseline DCT scaling, JPEG 2000 resolution levels, both through Pillow), so a
small thumbnail of a 4000 x 3000 mammogram does not cost a full decode; other large
frames are block-averaged down to twice the size asked for before the LUTs.

A frame is decoded from where its pixel data starts in the file, with pydicom's
decoders given the *Image Pixel* attributes explicitly, so the header is parsed once:
by :func:`read_frame` itself, or not at all when the caller already holds the header's
DICOM JSON (ingest's header parse, see :func:`pixel_source`).
"""

from __future__ import annotations

import base64
import io
import logging
import math
import re
import struct
import warnings
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, TypeAlias, cast

import numpy as np
import pydicom
import pydicom.uid
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    convert_color_space,
)
from pydicom.pixels.utils import as_pixel_options, pixel_array
from pydicom.uid import UID

from dicomlake._types import FrameChoice
from dicomlake.dicom.json import JsonDict
from dicomlake.dicom.quiet import quiet

logger = logging.getLogger(__name__)

_JPEG_BASELINE = {"1.2.840.10008.1.2.4.50"}
_JPEG_2000 = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
#: (7FE0,0010) Pixel Data, (7FE0,0008) Float and (7FE0,0009) Double Float Pixel Data
_PIXEL_KEYWORDS = {
    0x7FE00010: "PixelData",
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
}
#: Percentiles of the robust window used when a grayscale image has no VOI.
ROBUST_PERCENTILES = (0.5, 99.5)
#: A frame decoded at reduced resolution keeps at least this many times the pixels
#: asked for: a codec's lower resolution level alone is softer than a resize of the
#: full frame (1.0 would draw a 512 x 512 J2K frame as its 256 x 256 wavelet band).
_REDUCED_MARGIN = 1.5


@dataclass(slots=True)
class DisplayFrame:
    """A frame ready to show: uint8 ``L`` (H, W) or ``RGB`` (H, W, 3).

    Attributes:
        pixels: The display values.
        mode: ``'L'`` or ``'RGB'``.
        frame: 0-based index of the frame drawn.
        aspect: Physical height / width of one pixel (1.0 when square or unknown).
        decoded_scale: How much smaller than the stored frame the decode was.
    """

    pixels: np.ndarray
    mode: str
    frame: int
    aspect: float = 1.0
    decoded_scale: int = 1


def number_of_frames(ds: Dataset) -> int:
    """Return (0028,0008) *Number of Frames*, 1 when absent or invalid."""
    try:
        value = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


def frame_indices(choice: FrameChoice, count: int) -> list[int]:
    """Return the 0-based frames to draw for ``choice`` out of ``count``.

    Raises:
        ValueError: ``choice`` is not first/middle/all or a valid index.
    """
    if choice == "first":
        return [0]
    if choice == "middle":
        return [count // 2]
    if choice == "all":
        return list(range(count))
    if isinstance(choice, int) and 0 <= choice < count:
        return [choice]
    raise ValueError(f"frame must be 'first', 'middle', 'all' or 0..{count - 1}, got {choice!r}")


def pixel_aspect(ds: Dataset) -> float:
    """Physical height / width of a pixel from *Pixel Spacing* or *Pixel Aspect Ratio*."""
    try:
        spacing = ds.get("PixelSpacing")
        if spacing is not None and len(spacing) == 2 and float(spacing[1]) > 0:
            return float(spacing[0]) / float(spacing[1])
        ratio = ds.get("PixelAspectRatio")
        if ratio is not None and len(ratio) == 2 and float(ratio[1]) > 0:
            return float(ratio[0]) / float(ratio[1])
    except (TypeError, ValueError):
        pass
    return 1.0


@quiet
def read_frame(
    fp: IO[bytes],
    frame: int,
    *,
    max_side: int | None = None,
    header: JsonDict | None = None,
    source: PixelSource | None = None,
) -> tuple[np.ndarray, Dataset, int]:
    """Decode one frame of the file open in ``fp``: (stored values, dataset, scale).

    Only that frame's bytes are read; the other frames of a multi-frame file are not.
    The header is parsed once, here, or not at all when ``header`` is given.

    Args:
        fp: The DICOM file, seekable, at any position.
        frame: 0-based frame index.
        max_side: The largest side the caller needs; allows reduced-resolution
            decoding when the codec supports it.
        header: The file's DICOM JSON as the header parse gave it, with the pixel
            data as a BulkDataURI (see :func:`pixel_source`); None parses the header.
        source: What :func:`pixel_source` gave for another frame of this header, when
            it holds for this frame too (:func:`frame_independent`): the small
            dataset is then not built again for every frame.

    Raises:
        Exception: Whatever the decoder raises for data it cannot decode.
    """
    if source is None and header is not None:
        source = pixel_source(header, fp, frame)
    ds: Dataset
    if source is None:
        fp.seek(0)
        ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
        pixel_start = fp.tell()
        stream = fp
    else:
        ds, stream, pixel_start = source
    frames = ds.get("NumberOfFrames")
    if frames not in (None, ""):
        try:
            int(frames)
        except (TypeError, ValueError):
            # pydicom's own message would be "invalid literal for int() ...: '1A'"
            raise ValueError(
                f"(0028,0008) Number of Frames must be an integer, found {frames!r}"
            ) from None
    tsyntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if max_side and rows and cols and max(rows, cols) >= 2 * _REDUCED_MARGIN * max_side:
        # the lowest resolution level with a margin over the pixels asked for, so that
        # the final resize still filters (a 4000 x 3000 frame for 256 pixels decodes
        # at 500 x 375, a 1024 x 1024 one at 512 x 512)
        level = int(math.log2(max(rows, cols) / (_REDUCED_MARGIN * max_side)))
        reduced = _reduced_decode(stream, pixel_start, ds, tsyntax, frame, level)
        if reduced is not None:
            return reduced[0], ds, reduced[1]
    try:
        arr = _decode_at(stream, pixel_start, ds, frame)
    except (AttributeError, ValueError) as exc:
        # no file meta, deflated, or pixel data written with a VR switch: pydicom's
        # full reader copes with those where the frame-by-frame reader does not
        logger.debug("frame reader failed (%s); reading the whole dataset", exc)
        fp.seek(0)
        full = pydicom.dcmread(fp, force=True)
        if "TransferSyntaxUID" not in full.file_meta:
            full.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        arr = pixel_array(full, index=frame) if number_of_frames(full) > 1 else full.pixel_array
        ds = full
    return arr, ds, 1


def _decode_at(fp: IO[bytes], pixel_start: int, ds: Dataset, frame: int) -> np.ndarray:
    """Decode frame ``frame`` of the pixel data element at ``pixel_start`` of ``fp``.

    What ``pydicom.pixels.pixel_array(fp, index=frame)`` does, less its own parse of
    the header: the decoder gets the *Image Pixel* attributes of ``ds`` explicitly and
    reads the frame's bytes from the file.

    Raises:
        AttributeError: No transfer syntax or no pixel data (pydicom's full reader may
            still cope); also pydicom's, for a missing *Image Pixel* attribute.
        ValueError: A deflated data set (no byte offsets in the file), or pydicom's
            for invalid *Image Pixel* attributes.
        NotImplementedError: No decoder for the transfer syntax.
    """
    found = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not found:
        raise AttributeError("no (0002,0010) Transfer Syntax UID in the file meta")
    tsyntax = UID(str(found))
    if tsyntax in _DEFLATED:
        raise ValueError("deflated data set: the pixel data has no offset in the file")
    fp.seek(pixel_start)
    head = fp.read(8)
    if len(head) != 8:
        raise AttributeError("the data set has no Pixel Data element")
    order = "<" if tsyntax.is_little_endian else ">"
    opts = as_pixel_options(ds)
    if tsyntax.is_implicit_VR:
        group, element, _length = struct.unpack(f"{order}HHL", head)
    else:  # pixel data VRs always have a 4-byte length after 2 reserved bytes
        group, element, vr, _short = struct.unpack(f"{order}HH2sH", head)
        opts["pixel_vr"] = vr.decode("latin-1")
        fp.read(4)
    keyword = _PIXEL_KEYWORDS.get(group << 16 | element)
    if keyword is None:
        raise AttributeError("the data set has no Pixel Data element where it should be")
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise NotImplementedError(
            "Unable to decode the pixel data as a (0002,0010) 'Transfer Syntax UID' "
            f"value of '{tsyntax.name}' is not supported"
        ) from None
    opts.update(transfer_syntax_uid=tsyntax, pixel_keyword=keyword)
    source = cast(BinaryIO, fp)  # any binary file: pydicom only reads and seeks it
    arr, _ = decoder.as_array(source, index=frame, validate=True, raw=False, **opts)
    return arr


#: The end of this project's BulkDataURIs (:func:`dicomlake.dicom.json.bulk_data_uri`).
_BULK_RANGE = re.compile(r"\?offset=([0-9]+)&length=([0-9]+)$")
#: Top-level elements outside group 0028 that decoding or display read.
_DISPLAY_TAGS = (
    "00089205",  # Pixel Presentation (pydicom's palette check)
    "00181164",  # Imager Pixel Spacing
    "20500020",  # Presentation LUT Shape
    "7FE00001",  # Extended Offset Table
    "7FE00002",  # Extended Offset Table Lengths
)
_SHARED_GROUPS, _PER_FRAME_GROUPS = "52009229", "52009230"


#: What :func:`pixel_source` gives: (dataset, stream, offset of the pixel data element).
PixelSource: TypeAlias = tuple[Dataset, IO[bytes], int]


def frame_independent(header: JsonDict) -> bool:
    """Whether :func:`pixel_source` gives the same for every frame of ``header``.

    Only per-frame functional groups make it differ (shared ones hold for all).
    """
    return _PER_FRAME_GROUPS not in header


def pixel_source(header: JsonDict, fp: IO[bytes], frame: int) -> PixelSource | None:
    """What :func:`read_frame` needs to decode a frame, from a header's DICOM JSON.

    Ingest has already parsed the header into DICOM JSON, whose pixel data is a
    BulkDataURI (its byte offset in the file) or, when short, inline: the *Image
    Pixel* module, the LUTs, windows and spacings (group 0028, with the frame's
    functional groups applied as :func:`frame_view` does), the transfer syntax and a
    few others are turned back into a small dataset, so pydicom does not parse the
    header again.

    Args:
        header: The DICOM JSON of the whole header, file meta included.
        fp: The file, to read bulk values (pixel data, a palette's or a LUT's data).
        frame: The frame that will be decoded, for its functional groups.

    Returns:
        (dataset, stream, offset of the pixel data element in the stream): the stream
        is ``fp``, or the element rebuilt in memory from inline pixel data. None where
        the JSON cannot stand for the file: no transfer syntax, big endian or
        deflated, no single pixel data element, or an element header in the file
        that is not the one the JSON describes.
    """
    tsyntax = _json_value(header.get("00020010"))
    if not isinstance(tsyntax, str) or tsyntax in _DEFLATED:
        return None
    uid = UID(tsyntax)
    if not uid.is_little_endian:  # pydicom's reader is the one that knows big endian
        return None
    pixel = [(key, header[key]) for key in ("7FE00010", "7FE00008", "7FE00009") if key in header]
    if len(pixel) != 1 or not isinstance(pixel[0][1], dict):
        return None
    key, element = pixel[0]
    vr = str(element.get("vr", ""))
    head = struct.pack("<HH", int(key[:4], 16), int(key[4:], 16))
    head_size = 8 if uid.is_implicit_VR else 12
    if "InlineBinary" in element:
        stream = _rebuilt_element(head, vr, element["InlineBinary"], uid)
        start = 0
    else:
        match = _BULK_RANGE.search(str(element.get("BulkDataURI", "")))
        if match is None or int(match.group(1)) < head_size:
            return None
        stream, start = fp, int(match.group(1)) - head_size
        fp.seek(start)
        found = fp.read(head_size)
        # the element header must be the one the JSON describes (a VR switch is not)
        if found[:4] != head or (not uid.is_implicit_VR and found[4:6] != vr.encode()):
            return None
    chosen = {key: value for key, value in header.items() if key.startswith("0028")}
    chosen.update((key, header[key]) for key in _DISPLAY_TAGS if key in header)
    chosen.update(_frame_groups(header, frame))

    def bulk(_tag: str, _vr: str, uri: str) -> bytes:
        found = _BULK_RANGE.search(uri)
        if found is None:
            raise ValueError("a BulkDataURI without a byte range")
        fp.seek(int(found.group(1)))
        return fp.read(int(found.group(2)))

    # pydicom inspects a handler's signature for every element: pass one only if used
    ds = Dataset.from_json(chosen, bulk_data_uri_handler=bulk if _has_bulk(chosen) else None)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    ds.set_original_encoding(uid.is_implicit_VR, True, None)
    return ds, stream, start


def _has_bulk(value: Any) -> bool:
    """Whether DICOM JSON holds a BulkDataURI anywhere (a LUT's data, nested or not)."""
    if isinstance(value, dict):
        return "BulkDataURI" in value or any(_has_bulk(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_bulk(v) for v in value)
    return False


def _rebuilt_element(head: bytes, vr: str, inline: str, uid: UID) -> IO[bytes]:
    """A pixel data element as the file holds it, from its tag, VR and inline value."""
    value = base64.b64decode(inline)
    delimiter = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"  # ends encapsulated pixel data
    length = 0xFFFFFFFF if uid.is_encapsulated else len(value)
    if uid.is_implicit_VR:
        element = head + struct.pack("<L", length)
    else:
        element = head + vr.encode() + b"\x00\x00" + struct.pack("<L", length)
    return io.BytesIO(element + value + (delimiter if uid.is_encapsulated else b""))


def _json_value(element: Any) -> Any:
    """The first value of a DICOM JSON element, or None."""
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _frame_groups(header: JsonDict, frame: int) -> JsonDict:
    """The display attributes of the frame's functional groups, as :func:`frame_view` finds them."""
    items = []
    shared = _json_value(header.get(_SHARED_GROUPS))
    if isinstance(shared, dict):
        items.append(shared)
    per_frame = header.get(_PER_FRAME_GROUPS)
    frames = per_frame.get("Value") if isinstance(per_frame, dict) else None
    if isinstance(frames, list) and 0 <= frame < len(frames) and isinstance(frames[frame], dict):
        items.append(frames[frame])
    found: JsonDict = {}
    for item in items:
        for sequence, tags in _FUNCTIONAL_GROUP_TAGS.items():
            macro = _json_value(item.get(sequence))
            if isinstance(macro, dict):
                found.update((tag, macro[tag]) for tag in tags if tag in macro)
    return found


def _reduced_decode(
    fp: IO[bytes], pixel_start: int, ds: Dataset, tsyntax: str, frame: int, level: int
) -> tuple[np.ndarray, int] | None:
    """Decode a frame at 1/2**k resolution (1 <= k <= level), or None if we can't.

    JPEG baseline goes through Pillow's DCT scaling (``draft``, down to 1/8); JPEG 2000
    and HTJ2K through Pillow's openjpeg with ``reduce`` (resolution levels). Anything
    unusual (a codestream Pillow cannot read, more than 8 bits per color sample, an
    extended offset table) returns None, and the caller decodes in full with pydicom.
    """
    if tsyntax not in _JPEG_BASELINE | _JPEG_2000 or level < 1:
        return None
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return None  # palette indices must not be averaged into new indices
    try:
        from pydicom.encaps import get_frame

        fp.seek(pixel_start)
        head = fp.read(12)
        # (7FE0,0010), OB (or OW, seen in the wild), reserved, undefined length
        if head[:4] != b"\xe0\x7f\x10\x00" or head[4:6] not in (b"OB", b"OW"):
            return None  # an extended offset table first, or an unexpected encoding
        if head[8:12] != b"\xff\xff\xff\xff":
            return None
        data = get_frame(fp, frame, number_of_frames=number_of_frames(ds))
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if tsyntax in _JPEG_BASELINE:
                return _reduced_jpeg(data, ds, min(level, 3))
            return _reduced_j2k(data, ds, level)
    except Exception as exc:  # fall back to a full decode through pydicom
        logger.debug("reduced decode failed (%s); decoding in full", exc)
        return None


def _reduced_jpeg(data: bytes, ds: Dataset, level: int) -> tuple[np.ndarray, int] | None:
    """JPEG baseline at 1/2**level through libjpeg's DCT scaling (Pillow ``draft``)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data), formats=["JPEG"])
    full_width, full_height = image.size
    size = (max(1, full_width >> level), max(1, full_height >> level))
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if image.mode == "L":
        if int(ds.get("PixelRepresentation", 0) or 0):
            return None  # signed 8-bit JPEG: let pydicom reinterpret the samples
        image.draft("L", size)
        arr = np.asarray(image)
    elif image.mode in ("RGB", "YCbCr") and "adobe_transform" not in image.info:
        # like pydicom: no colour transform by Pillow, the photometric says what the
        # samples are (YBR_FULL/_422 are converted here, RGB taken as it is)
        image.draft("YCbCr", size)
        arr = np.asarray(image)
        if photometric.startswith("YBR"):
            arr = convert_color_space(arr, "YBR_FULL", "RGB")
    elif image.mode == "RGB":  # an APP14 marker says what the samples are
        image.draft("RGB", size)
        arr = np.asarray(image.convert("RGB"))
    else:
        return None  # CMYK and other rarities
    return arr, max(1, round(full_width / arr.shape[1]))


def _j2k_header(data: bytes) -> tuple[int, bool, int] | None:
    """(precision, signed, decomposition levels) of a J2K codestream's main header."""
    siz = data.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC then SIZ (also inside a JP2 box)
    if siz < 0 or len(data) < siz + 43:
        return None
    ssiz = data[siz + 42]  # Ssiz of component 0: sign bit, precision - 1
    pos = siz + 4 + int.from_bytes(data[siz + 4 : siz + 6], "big")  # after SIZ
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0x52:  # COD: Lcod, Scod, SGcod (4 bytes), then the levels
            return (ssiz & 0x7F) + 1, bool(ssiz & 0x80), data[pos + 9]
        if marker == 0x90:  # SOT: the main header is over
            break
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def _size_for_reduce(size: tuple[int, int], level: int) -> tuple[int, int]:
    """The full size to give Pillow so that it reduces it to the size openjpeg decodes.

    openjpeg's level ``level`` is ceil(side / 2**level) pixels, but Pillow (13.0) sizes
    its image round(side / 2**level): a 1841-pixel side at level 2 gets 460 for a
    461-pixel tile, and the decode fails. ceil(side / 2**level) * 2**level - 2**(level
    - 1) reduces to the ceiling under either rounding.
    """
    power = 1 << level
    width, height = (-(-side // power) * power - (power >> 1) for side in size)
    return width, height


def _reduced_j2k(data: bytes, ds: Dataset, level: int) -> tuple[np.ndarray, int] | None:
    """JPEG 2000 at 1/2**level: openjpeg decodes only the lower resolution levels."""
    header = _j2k_header(data)
    if header is None:
        return None
    precision, signed, levels = header
    from PIL import Image

    level = min(level, levels)
    if level < 1 or precision > 16:
        return None
    if int(ds.get("PixelRepresentation", 0) or 0) and not signed:
        return None  # non-conformant: signed samples in an unsigned codestream
    for attempt in range(level, 0, -1):
        image = Image.open(io.BytesIO(data), formats=["JPEG2000"])
        if image.mode not in ("L", "I;16", "RGB"):
            return None
        if image.mode == "RGB" and precision > 8:
            return None  # Pillow keeps only 8 of the bits: let pydicom decode in full
        full_width = image.size[0]
        image.reduce = attempt  # type: ignore[method-assign,assignment]  # J2K level
        image._size = _size_for_reduce(image.size, attempt)
        try:
            image.load()
            break
        except OSError as exc:  # some codestreams only open at fewer levels: try those
            logger.debug("J2K reduce=%d failed: %s", attempt, exc)
    else:
        return None
    arr = np.asarray(image)
    if image.mode == "RGB":
        # openjpeg undoes the ICT/RCT: YBR_ICT and YBR_RCT come out as RGB
        return arr, max(1, round(full_width / arr.shape[1]))
    # Pillow scales N-bit samples up to 8 or 16 bits and level-shifts signed ones
    # into unsigned (Pillow's Jpeg2KDecode.c, j2ku_gray_l and j2ku_gray_i)
    container = 8 if image.mode == "L" else 16
    values = arr.astype(np.int32) >> (container - precision)
    if signed:
        values -= 1 << (precision - 1)
    return values, max(1, round(full_width / arr.shape[1]))


def apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2: map values to [0, 1] with a window."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        width = max(width, 1e-6)
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)  # LINEAR
    return np.clip((values - (center - 0.5)) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)


def _first(value: Any) -> float | None:
    """The first number of a possibly multi-valued element value, or None."""
    if isinstance(value, list | tuple | MultiValue):
        value = value[0] if len(value) else None
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _voi(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """Apply the VOI stage to modality values; return floats in [0, 1]."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return apply_window(values, center, width, function)
    if ds.get("VOILUTSequence"):
        try:
            # the VOI LUT's input is the Modality LUT's output (rescaled values), not
            # the stored values; pydicom's apply_voi indexes with integers
            lut_out = apply_voi(np.round(values).astype(np.int64), ds)
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])  # 8 or 10..16
            return np.clip(lut_out.astype(np.float64) / float(2**bits - 1), 0.0, 1.0)
        except Exception as exc:  # a broken LUT: fall back to the image's own range
            logger.debug("VOI LUT not applied: %s", exc)
    found = robust_range(values)
    if found is None:
        return np.zeros_like(values, dtype=np.float64)
    low, high = found
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def robust_range(values: np.ndarray) -> tuple[float, float] | None:
    """The (low, high) of the window used when an image has none, or None if flat.

    The 0.5th and 99.5th percentiles of the finite values (min and max when those
    coincide), from a strided sample of a large frame.
    """
    step = max(1, math.isqrt(values.size // 1_000_000))
    sample = values[::step, ::step] if values.ndim == 2 else values
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return None
    low, high = (float(v) for v in np.percentile(finite, ROBUST_PERCENTILES))
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return None
    return low, high


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.round(unit * 255.0).astype(np.uint8)


def _rgb8(arr: np.ndarray, ds: Dataset, *, top: float | None = None) -> np.ndarray:
    """RGB values of any bit depth to uint8.

    ``top``: a palette image's largest value, when ``arr`` is its table, not the image.
    """
    if arr.dtype == np.uint8:
        return arr
    bits = int(ds.get("BitsStored", 16) or 16)
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        if top is None:
            top = float(np.max(arr)) if arr.size else 1.0
        bits = 16 if top > 255 else 8
    scale = 255.0 / float(2**bits - 1)
    return np.clip(np.round(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)


#: Palette Color LUT descriptors, data, segmented data (red, green, blue, alpha), and
#: (0008,9205) Pixel Presentation: what the RGB of a stored value depends on.
_PALETTE_TAGS = (
    *range(0x00281101, 0x00281105),
    *range(0x00281201, 0x00281205),
    *range(0x00281221, 0x00281225),
    0x00089205,
)
#: Palette tables (every stored value to RGB) of the last palettes seen, by content.
_PALETTE_TABLES: dict[tuple[Any, ...], np.ndarray] = {}
_PALETTE_TABLES_KEPT = 16


def _palette_rgb8(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """``_rgb8(apply_color_lut(stored, ds), ds)``, looked up per value, not per pixel.

    The palette maps each stored value on its own, so mapping every value the frame's
    type can hold (256 or 65,536) once and indexing that table gives the same pixels
    for far less work than pydicom's lookups and a float conversion of the whole
    frame. The table is kept for the next frame with the same palette (a device's
    images share theirs; expanding a segmented palette is the costly part).
    """
    if not stored.dtype.isnative:  # big endian: the same values in this machine's order
        stored = stored.astype(stored.dtype.newbyteorder("="))
    if stored.dtype not in (np.uint8, np.int8, np.uint16, np.int16):
        direct: np.ndarray = _rgb8(apply_color_lut(stored, ds), ds)
        return direct
    key = _palette_key(ds, stored.dtype)
    table = _PALETTE_TABLES.get(key)
    if table is None:
        info = np.iinfo(stored.dtype)
        table = apply_color_lut(np.arange(info.min, info.max + 1, dtype=stored.dtype), ds)
        if len(_PALETTE_TABLES) >= _PALETTE_TABLES_KEPT:
            _PALETTE_TABLES.clear()
        _PALETTE_TABLES[key] = table
    index = stored
    if stored.dtype.kind == "i":
        index = stored.astype(np.int32) - np.iinfo(stored.dtype).min
    if table.dtype != np.uint8:
        top = 1.0
        if stored.size:
            present = np.bincount(index.ravel(), minlength=len(table)).astype(bool)
            top = float(table[present].max())
        table = _rgb8(table, ds, top=top)
    rgb: np.ndarray = table[index]
    return rgb


def _palette_key(ds: Dataset, dtype: np.dtype[Any]) -> tuple[Any, ...]:
    """What a palette table depends on: the LUT elements, byte order, the values' type."""
    key: list[Any] = [dtype.str]
    meta = getattr(ds, "file_meta", None)
    key.append(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    key.append(ds.original_encoding)
    for tag in _PALETTE_TAGS:
        element = ds.get(tag)
        if element is not None:
            value = element.value
            if isinstance(value, list | MultiValue):
                value = tuple(value)
            key.append((tag, element.VR, value))
    return tuple(key)


#: Functional group macros of enhanced multi-frame images that hold display attributes.
_FUNCTIONAL_GROUPS = {
    "PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
    "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction"),
    "PixelMeasuresSequence": ("PixelSpacing",),
}


def _json_tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


#: :data:`_FUNCTIONAL_GROUPS` as DICOM JSON keys.
_FUNCTIONAL_GROUP_TAGS = {
    _json_tag(sequence): tuple(_json_tag(keyword) for keyword in keywords)
    for sequence, keywords in _FUNCTIONAL_GROUPS.items()
}


def frame_view(ds: Dataset, frame: int) -> Dataset:
    """``ds`` with the frame's functional-group display attributes at the top level.

    Enhanced CT/MR/XA images keep *Rescale Slope*/*Intercept*, *Window Center*/*Width*
    and *Pixel Spacing* in the Shared (5200,9229) and Per-frame (5200,9230) Functional
    Groups, not at the top level; the per-frame item wins over the shared one.
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not shared and not per_frame:
        return ds
    items = [shared[0]] if shared else []
    if per_frame and 0 <= frame < len(per_frame):
        items.append(per_frame[frame])
    found: dict[str, Any] = {}
    for item in items:
        for sequence, keywords in _FUNCTIONAL_GROUPS.items():
            macro = item.get(sequence)
            if macro:
                found.update((kw, macro[0][kw]) for kw in keywords if kw in macro[0])
    if not found:
        return ds
    view = Dataset()
    view.update(ds)  # shallow: the elements are shared, not copied
    implicit, little = ds.original_encoding
    view.set_original_encoding(implicit, little, ds.original_character_set)
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta
    for element in found.values():
        view[element.tag] = element
    return view


@quiet
def display_frame(
    stored: np.ndarray,
    ds: Dataset,
    frame: int = 0,
    *,
    window: tuple[float, float, str] | None = None,
) -> DisplayFrame:
    """Run one decoded frame through the display pipeline.

    Args:
        stored: The frame as pydicom decodes it (stored values; RGB for color).
        ds: The dataset the frame belongs to (for LUTs, windows, photometric).
        frame: Which frame this is, recorded in the result.
        window: (center, width, function) to use instead of the file's own VOI
            (a viewer's ``window=`` request); grayscale only.

    Returns:
        The frame as uint8 L or RGB.
    """
    ds = frame_view(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    aspect = pixel_aspect(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        return DisplayFrame(_palette_rgb8(stored, ds), "RGB", frame, aspect)
    if samples == 3 or (stored.ndim == 3 and stored.shape[-1] == 3):
        return DisplayFrame(_rgb8(stored, ds), "RGB", frame, aspect)
    values = apply_modality_lut(stored, ds).astype(np.float64, copy=False)
    unit = _voi(values, ds) if window is None else apply_window(values, *window)
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        unit = 1.0 - unit
    return DisplayFrame(_to_uint8(unit), "L", frame, aspect)


def render(
    fp: IO[bytes],
    *,
    frame: int = 0,
    max_side: int | None = None,
    header: JsonDict | None = None,
) -> DisplayFrame:
    """Decode frame ``frame`` of the file in ``fp`` and return it ready to display.

    ``header``, the header's DICOM JSON when the caller has parsed it already, spares
    a second parse (see :func:`read_frame`).

    Raises:
        Exception: The pixel data cannot be decoded (no decoder, corrupt data).
    """
    stored, ds, scale = read_frame(fp, frame, max_side=max_side, header=header)
    if max_side:
        stored = _shrink(stored, ds, max(stored.shape[:2]) // (2 * max_side))
    result = display_frame(stored, ds, frame)
    result.decoded_scale = scale
    return result


def _shrink(stored: np.ndarray, ds: Dataset, factor: int) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks of a frame that is far larger than needed.

    A frame no codec could decode small (native, RLE, JPEG lossless, JPEG-LS) goes
    through the display pipeline at up to twice the thumbnail's size instead of in
    full: the same averaging a reduced-resolution decode does, before the LUTs. Palette
    indices and Modality LUT Sequence inputs are looked up, never averaged.
    """
    if factor < 2 or stored.ndim not in (2, 3):
        return stored
    if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        return stored
    if ds.get("ModalityLUTSequence"):
        return stored
    rows, cols, rest = stored.shape[0] // factor, stored.shape[1] // factor, stored.shape[2:]
    # the rows of a block summed in one pass, then its columns as ``factor`` strided
    # additions: numpy is slow at reducing a short innermost axis (3-4x the time)
    strips = stored[: rows * factor, : cols * factor].reshape(rows, factor, cols * factor, *rest)
    summed = strips.sum(axis=1, dtype=np.float32)
    mean: np.ndarray = summed[:, 0::factor].copy()
    for column in range(1, factor):
        mean += summed[:, column::factor]
    mean /= np.float32(factor * factor)
    return mean
