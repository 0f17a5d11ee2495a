"""Patches: frames tiled into squares for training, written as the lake's ``patches`` table.

The grid covers every frame exactly and never leaves it: along each axis the patches
start at ``0, stride, 2*stride, ...`` while they fit, plus one patch flush with the
far edge when the stride does not land there (it then overlaps its neighbour). A side
shorter than ``size`` gets one patch of that side's length; the ``width`` and
``height`` columns always carry a patch's true extent. ``stride`` may not exceed
``size``: a larger stride would leave gaps, and a grid with gaps is not a tiling.

Each patch records ``tissue_fraction``, the share of its pixels that are foreground,
and patches below ``min_tissue`` are not written. Foreground comes from the frame's
display values (the file's window, MONOCHROME1 inverted, so tissue is bright):

- grayscale: brighter than the Otsu threshold of the whole frame;
- RGB (slides on a white background): not near-white, that is a channel below
  80 % of full scale or a saturation above 15 %.

The kernel (:func:`patch_instance`) turns one file into rows and never raises: a frame
that cannot be decoded becomes an error row (``status='error'``, ``error`` set, no
position), as in the ``thumbnails`` table. :mod:`dicomlake.jobs.patches` runs it over
instances picked with SQL on the local process pool, and the Spark
:class:`dicomlake.spark.dicom.DicomPatcher` runs the same kernel in ``mapInArrow``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pyarrow as pa

from dicomlake.catalog import FileRef, open_ref
from dicomlake.dicom.frames import PhysicalFrame, load_frame
from dicomlake.dicom.pixels import frame_indices
from dicomlake.rows import build_batch, clip_error, error_text, flatten, row_id
from dicomlake.schema import PATCHES_SCHEMA

if TYPE_CHECKING:
    from dicomlake._types import FrameChoice, StorageOptions


#: Dtype of the ``pixels`` column's values (little-endian).
PIXEL_DTYPE: Final = "float32"

#: RGB foreground: a channel below this share of 255, or a saturation above the next.
RGB_NEAR_WHITE: Final = 0.8
RGB_MIN_SATURATION: Final = 0.15


# --------------------------------------------------------------------------- options


@dataclass(frozen=True, slots=True)
class PatchOptions:
    """How to tile: patch side, step, tissue threshold, pixels or not, which frames.

    Args:
        size: Side of a patch in pixels.
        stride: Step between patches; None means ``size`` (no overlap). At most
            ``size``, so the patches cover the frame.
        min_tissue: Patches with a smaller ``tissue_fraction`` are not written (0 keeps
            every patch).
        store_pixels: Write each patch's float32 values in the ``pixels`` column.
        frames: 'first', 'middle', 'all' or a 0-based index.

    Raises:
        ValueError: A value is out of range; the message says the valid range.
    """

    size: int = 256
    stride: int | None = None
    min_tissue: float = 0.0
    store_pixels: bool = False
    frames: FrameChoice = "all"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {self.size!r}")
        stride = self.size if self.stride is None else self.stride
        if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= self.size:
            raise ValueError(
                f"stride must be 1..size ({self.size}) pixels so that the patches cover "
                f"the frame, got {self.stride!r}"
            )
        object.__setattr__(self, "stride", stride)
        if not 0.0 <= float(self.min_tissue) <= 1.0:
            raise ValueError(f"min_tissue must be a fraction in 0..1, got {self.min_tissue!r}")
        object.__setattr__(self, "min_tissue", float(self.min_tissue))
        frames = self.frames
        if not (
            frames in ("first", "middle", "all")
            or (isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0)
        ):
            raise ValueError(
                f"frames must be 'first', 'middle', 'all' or a 0-based index, got {frames!r}"
            )

    @property
    def step(self) -> int:
        """The stride, resolved (``size`` when none was given)."""
        return self.size if self.stride is None else self.stride


# --------------------------------------------------------------------------- geometry


def grid(length: int, size: int, stride: int) -> list[int]:
    """Start positions of the patches along one axis of ``length`` pixels.

    Args:
        length: The frame's extent on this axis.
        size: The patch side.
        stride: The step, 1..size.

    Returns:
        ``0, stride, ...`` while a patch fits, then ``length - size`` if the steps do
        not land there; ``[0]`` when ``length <= size``.

    Example:
        >>> grid(10, 4, 4), grid(8, 4, 4), grid(3, 4, 2)
        ([0, 4, 6], [0, 4], [0])
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float | None:
    """Otsu's threshold of ``values``: the cut that maximises the between-class variance.

    Returns:
        The threshold (foreground is ``values > threshold``), or None when the values
        are constant or none is finite.
    """
    finite = values if np.isfinite(values).all() else values[np.isfinite(values)]
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    if not high > low:
        return None
    scale = bins / (high - low)  # np.histogram's bins, counted faster
    index = (finite - np.float32(low)).astype(np.float32, copy=False)
    index *= np.float32(scale)
    bucket = index.astype(np.int32)
    np.minimum(bucket, bins - 1, out=bucket)
    counts = np.bincount(bucket.ravel(), minlength=bins).astype(np.float64)
    edges = low + np.arange(bins + 1) / scale
    centers = (edges[:-1] + edges[1:]) / 2
    below = np.cumsum(counts)
    above = below[-1] - below
    mass = np.cumsum(counts * centers)
    mean_below = mass / np.maximum(below, 1)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1)
    between = (below * above * (mean_below - mean_above) ** 2)[:-1]
    # an empty gap between the classes is a plateau of maxima: cut in its middle
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return float((edges[best[0] + 1] + edges[best[-1] + 1]) / 2)


def tissue_mask(frame: PhysicalFrame) -> np.ndarray:
    """Foreground pixels of a frame, (H, W) bool (see the module docstring).

    A constant grayscale frame has no foreground.
    """
    values = frame.values
    if values.shape[0] == 3:
        low = values.min(axis=0)
        high = values.max(axis=0)
        saturation = (high - low) / np.maximum(high, 1.0)
        colored: np.ndarray = (low < RGB_NEAR_WHITE * 255.0) | (saturation > RGB_MIN_SATURATION)
        return colored
    display = frame.windowed("dicom")[0]
    threshold = otsu_threshold(display)
    if threshold is None:
        return np.zeros(display.shape, dtype=bool)
    bright: np.ndarray = display > threshold
    return bright


def tissue_fractions(
    mask: np.ndarray, xs: Sequence[int], ys: Sequence[int], width: int, height: int
) -> np.ndarray:
    """Foreground share of every patch of the grid ``ys`` x ``xs``, shaped (len(ys), len(xs)).

    Column sums are accumulated row by row, keeping only the rows where a patch starts
    or ends (numpy's cumsum down axis 0 of a 4096 x 3072 mask is ten times slower),
    then summed across within each band of rows; the cost does not grow with overlap.
    """
    rows, cols = mask.shape
    kind = np.int64 if rows * cols >= 2**31 else np.int32
    wanted = sorted(set(ys) | {y + height for y in ys})
    kept: dict[int, np.ndarray] = {}
    running = np.zeros(cols, dtype=kind)
    for row in range(rows + 1):
        if row == wanted[len(kept)]:
            kept[row] = running.copy()
        if len(kept) == len(wanted):
            break
        np.add(running, mask[row], out=running)
    bands = np.stack([kept[y + height] - kept[y] for y in ys])  # (len(ys), cols)
    across = np.zeros((len(ys), cols + 1), dtype=np.int64)
    np.cumsum(bands, axis=1, out=across[:, 1:])
    left = np.asarray(xs)
    sums = across[:, left + width] - across[:, left]
    return sums.astype(np.float64) / float(width * height)


# --------------------------------------------------------------------------- kernel


@dataclass(frozen=True, slots=True)
class PatchSource:
    """One instance to tile, with what the lake knows of it.

    Attributes:
        path: The file's URI, as in ``instances.path``.
        sop_instance_uid: Copied to the rows; read from the header when None and the
            header is read anyway (``frames`` None).
        frames: (0028,0008) *Number of Frames* (1 when absent); None to read the header
            first, which also skips files that are not DICOM or have no pixel data.
        size: Size of the file in bytes, copied to the rows.
        mtime: Modification time of the file, copied to the rows.
    """

    path: str
    sop_instance_uid: str | None = None
    frames: int | None = 1
    size: int | None = None
    mtime: dt.datetime | None = None


@dataclass(slots=True)
class PatchResult:
    """What :func:`patch_instance` made of one file."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0  # frames tiled
    skipped: int = 0  # patches below min_tissue, not in rows


def _probe(source: PatchSource, storage_options: StorageOptions) -> PatchSource | None:
    """``source`` with frames and SOP Instance UID from the header; None without pixels.

    Raises:
        OSError: The file cannot be read.
    """
    from dicomlake.dicom.header import read_header
    from dicomlake.errors import NotDicom

    with open_ref(source.path, storage_options=storage_options) as fp:
        try:
            header = read_header(fp, uri=source.path)
        except NotDicom:
            return None
    if not header.has_pixel_data:
        return None
    meta = header.meta

    def first(key: str) -> Any:
        values = meta.get(key, {}).get("Value") or [None]
        return values[0]

    try:
        frames = max(int(first("00280008") or 1), 1)
    except (TypeError, ValueError):
        frames = 1  # decoding will say what is wrong
    uid = source.sop_instance_uid or first("00080018")
    return PatchSource(source.path, uid, frames, source.size, source.mtime)


def _tile(
    frame: PhysicalFrame, index: int, options: PatchOptions, base: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """Rows of the patches of one decoded frame kept by ``min_tissue``, and how many not."""
    channels, rows, cols = frame.values.shape
    width, height = min(options.size, cols), min(options.size, rows)
    xs, ys = grid(cols, options.size, options.step), grid(rows, options.size, options.step)
    fractions = tissue_fractions(tissue_mask(frame), xs, ys, width, height)
    kept: list[dict[str, Any]] = []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            fraction = float(fractions[j, i])
            if fraction < options.min_tissue:
                continue
            pixels = None
            if options.store_pixels:
                crop = frame.values[:, y : y + height, x : x + width]
                pixels = np.ascontiguousarray(crop, dtype="<f4").tobytes()
            kept.append(
                {
                    **base,
                    "frame": index,
                    "x": x,
                    "y": y,
                    "width": width,
                    "height": height,
                    "tissue_fraction": fraction,
                    "status": "ok",
                    "error": None,
                    "pixels": pixels,
                    "channels": channels,
                    "dtype": PIXEL_DTYPE,
                }
            )
    return kept, len(xs) * len(ys) - len(kept)


def _error(base: dict[str, Any], frame: int | None, reason: str) -> dict[str, Any]:
    return {**base, "frame": frame, "status": "error", "error": clip_error(reason)}


def patch_instance(
    source: PatchSource,
    options: PatchOptions,
    *,
    storage_options: StorageOptions = None,
) -> PatchResult:
    """Tile the frames ``options`` selects of one file into patch rows (never raises).

    Args:
        source: The file and what the lake knows of it.
        options: How to tile.
        storage_options: fsspec options for object storage.

    Returns:
        The rows (dicts in :data:`PATCHES_SCHEMA` without ``created_at``): one per
        patch kept, one error row per frame that cannot be decoded, or a single error
        row (``frame`` null) when the file cannot be read. A file that is not DICOM or
        has no pixel data gives no rows when ``source.frames`` is None.
    """
    result = PatchResult()
    try:
        if source.frames is None:
            probed = _probe(source, storage_options)
            if probed is None:
                return result
            source = probed
        indices = frame_indices(options.frames, max(source.frames or 1, 1))
    except Exception as exc:  # one unreadable file is an error row, never a crash
        result.rows.append(_error(_base(source), None, error_text(exc)))
        return result

    base = _base(source)
    for index in indices:
        try:
            frame = load_frame(source.path, index, storage_options=storage_options)
            rows, skipped = _tile(frame, index, options, base)
        except Exception as exc:  # one frame that cannot be decoded is an error row
            result.rows.append(_error(base, index, error_text(exc)))
            continue
        result.rows.extend(rows)
        result.frames += 1
        result.skipped += skipped
    return result


def _base(source: PatchSource) -> dict[str, Any]:
    return {
        "row_id": row_id(source.path),
        "path": source.path,
        "SOPInstanceUID": source.sop_instance_uid,
        "size": source.size,
        "modification_time": source.mtime,
    }


def patches_batch(rows: Sequence[dict[str, Any]], created_at: dt.datetime) -> pa.RecordBatch:
    """Rows from :func:`patch_instance` as a RecordBatch in :data:`PATCHES_SCHEMA`."""
    return build_batch(rows, PATCHES_SCHEMA, stamps={"created_at": created_at})


#: Schema of the per-task counts a :class:`PatchKernel` returns beside the rows.
STATS_SCHEMA: Final = pa.schema([("frames", pa.int64()), ("skipped", pa.int64())])


class PatchKernel:
    """The kernel of ``dicomlake patches`` for the local engine (picklable).

    Args:
        options: How to tile.
        sources: path -> (SOPInstanceUID, NumberOfFrames) of the selected instances.
        storage_options: fsspec options for object storage.
    """

    def __init__(
        self,
        options: PatchOptions,
        *,
        sources: dict[str, tuple[str | None, int]],
        storage_options: StorageOptions = None,
    ) -> None:
        self.options = options
        self.sources = sources
        self.storage_options = storage_options
        self.created_at = dt.datetime.now(dt.UTC)

    def source(self, ref: FileRef) -> PatchSource:
        """The :class:`PatchSource` of a reference."""
        uid, frames = self.sources.get(ref.path, (None, 1))
        return PatchSource(ref.path, uid, frames, ref.size, ref.mtime)

    def row(self, ref: FileRef) -> dict[str, Any]:
        """Tile one file (never raises)."""
        result = patch_instance(
            self.source(ref), self.options, storage_options=self.storage_options
        )
        return {"patches": result.rows, "frames": result.frames, "skipped": result.skipped}

    def error_row(self, ref: FileRef, reason: str) -> dict[str, Any]:
        """The row of a file that timed out or crashed its worker."""
        row = _error(_base(self.source(ref)), None, reason)
        return {"patches": [row], "frames": 0, "skipped": 0}

    def batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, pa.RecordBatch]:
        """A task's patch rows as one batch, and its counts as another."""
        flat = flatten(rows, "patches")
        stats = {
            "frames": [sum(row["frames"] for row in rows)],
            "skipped": [sum(row["skipped"] for row in rows)],
        }
        return {
            "patches": patches_batch(flat, self.created_at),
            "stats": pa.RecordBatch.from_pydict(stats, schema=STATS_SCHEMA),
        }
