"""The ``thumbnails`` kernel: frames drawn through the display pipeline, as PNG rows.

Two ways in: during ingest, where the instances kernel draws from the file it already
has open (:func:`thumbnail_rows`), and :class:`ThumbnailsKernel` for instances of a
lake that have no thumbnail yet (see :mod:`dicomlake.jobs.thumbnails`). A frame that
cannot be drawn is an error row of the ``thumbnails`` table; its instance's row is
untouched.

An instance with no pixel data but a waveform (an ECG) gets one row, frame 0: its
plot (:func:`waveform_rows`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Final

import orjson
import pyarrow as pa

from dicomlake.catalog import FileRef, open_ref
from dicomlake.dicom.drawing import Drawing, encode_png
from dicomlake.dicom.header import Header
from dicomlake.dicom.json import JsonDict
from dicomlake.dicom.pixels import frame_indices, render
from dicomlake.dicom.waveform import draw_waveform
from dicomlake.rows import build_batch, clip_error, error_text, flatten, row_id
from dicomlake.schema import THUMBNAILS_SCHEMA

if TYPE_CHECKING:
    from dicomlake._types import Batches, FrameChoice, Row, StorageOptions

DEFAULT_SIZE: Final = 256
#: At most this many frames are drawn per instance with ``frame='all'``.
MAX_FRAMES: Final = 1000


@dataclass(frozen=True, slots=True)
class ThumbnailOptions:
    """How to draw: the longest side in pixels, and which frames.

    Raises:
        ValueError: A size outside 16..4096 or an unknown frame choice.
    """

    size: int = DEFAULT_SIZE
    frame: FrameChoice = "middle"

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 4096:
            raise ValueError(f"thumbnail size must be 16..4096 pixels, got {self.size}")
        if not (self.frame in ("first", "middle", "all") or isinstance(self.frame, int)):
            raise ValueError(
                f"frame must be 'first', 'middle', 'all' or an index, got {self.frame!r}"
            )


def thumbnail_rows(
    fp: IO[bytes],
    *,
    path: str,
    instance_id: int,
    sop_instance_uid: str | None,
    frames: int,
    options: ThumbnailOptions,
    size: int | None = None,
    mtime: dt.datetime | None = None,
    header: Header | None = None,
) -> list[Row]:
    """Return thumbnail rows for the frames ``options`` selects (never raises).

    ``header``, the file's header as ingest parsed it, spares parsing it again: the
    frames are decoded from where its JSON says the pixel data is.
    """
    base = _source(path, instance_id, sop_instance_uid, size, mtime)
    try:
        indices = frame_indices(options.frame, max(frames, 1))[:MAX_FRAMES]
        meta = _decoding_json(header)
    except ValueError as exc:
        return [{**base, "frame": None, "status": "error", "error": error_text(exc)}]
    rows = []
    for index in indices:
        try:
            display = render(fp, frame=index, max_side=options.size, header=meta)
            data, width, height = encode_png(display, options.size)
            drawing = Drawing(data, width, height, display.mode)
        except Exception as exc:  # one frame that cannot be drawn is an error row
            rows.append({**base, "frame": index, "status": "error", "error": error_text(exc)})
            continue
        rows.append(_drawn_row(base, index, drawing))
    return rows


def _decoding_json(header: Header | None) -> JsonDict | None:
    """The header's DICOM JSON to decode pixels from, or None to parse the file instead.

    Only a header read without warnings: one whose JSON lost or changed a value the
    file holds (an invalid number) would not decode as the file does.
    """
    if header is None or header.warnings:
        return None
    if header.meta:
        return header.meta
    if header.meta_json:
        loaded: JsonDict = orjson.loads(header.meta_json)
        return loaded
    return None


def waveform_rows(
    fp: IO[bytes],
    *,
    path: str,
    instance_id: int,
    sop_instance_uid: str | None,
    options: ThumbnailOptions,
    size: int | None = None,
    mtime: dt.datetime | None = None,
) -> list[Row]:
    """Return the one thumbnail row (frame 0) of a waveform: its plot (never raises).

    A waveform has no frames, so ``options.frame`` does not apply; ``options.size`` does.
    """
    base = _source(path, instance_id, sop_instance_uid, size, mtime)
    try:
        drawing = draw_waveform(fp, size=options.size)
    except Exception as exc:  # a malformed waveform is an error row
        return [{**base, "frame": 0, "status": "error", "error": error_text(exc)}]
    return [_drawn_row(base, 0, drawing)]


def _source(
    path: str,
    instance_id: int,
    sop_instance_uid: str | None,
    size: int | None,
    mtime: dt.datetime | None,
) -> Row:
    """The columns every thumbnail row of one instance shares."""
    return {
        "row_id": instance_id,
        "path": path,
        "SOPInstanceUID": sop_instance_uid,
        "size": size,
        "modification_time": mtime,
    }


def _drawn_row(base: Row, frame: int, drawing: Drawing) -> Row:
    return {
        **base,
        "frame": frame,
        "width": drawing.width,
        "height": drawing.height,
        "mode": drawing.mode,
        "format": "png",
        "data": drawing.png,
        "status": "ok",
        "error": None,
    }


def thumbnails_batch(rows: Sequence[Row], created_at: dt.datetime) -> pa.RecordBatch:
    """Build a RecordBatch in :data:`THUMBNAILS_SCHEMA` from thumbnail row dicts."""
    return build_batch(rows, THUMBNAILS_SCHEMA, stamps={"created_at": created_at})


class ThumbnailsKernel:
    """Draws instances of the lake that lack thumbnails (picklable).

    Args:
        options: How to draw.
        frames_of: path -> (SOPInstanceUID, NumberOfFrames), from the lake.
        waveforms: Paths of instances without pixel data whose waveform is drawn.
        storage_options: Settings for object storage.
    """

    def __init__(
        self,
        options: ThumbnailOptions,
        *,
        frames_of: Mapping[str, tuple[str | None, int]],
        waveforms: Collection[str] = (),
        storage_options: StorageOptions = None,
    ) -> None:
        self.options = options
        self.frames_of = dict(frames_of)
        self.waveforms = frozenset(waveforms)
        self.storage_options = storage_options
        self.created_at = dt.datetime.now(dt.UTC)

    def row(self, ref: FileRef) -> Row:
        """Draw one file (never raises)."""
        uid, frames = self.frames_of.get(ref.path, (None, 1))
        try:
            with open_ref(ref, storage_options=self.storage_options) as fp:
                if ref.path in self.waveforms:
                    rows = waveform_rows(
                        fp,
                        path=ref.path,
                        instance_id=row_id(ref.path),
                        sop_instance_uid=uid,
                        options=self.options,
                        size=ref.size,
                        mtime=ref.mtime,
                    )
                else:
                    rows = thumbnail_rows(
                        fp,
                        path=ref.path,
                        instance_id=row_id(ref.path),
                        sop_instance_uid=uid,
                        frames=frames,
                        options=self.options,
                        size=ref.size,
                        mtime=ref.mtime,
                    )
        except Exception as exc:
            return self.error_row(ref, error_text(exc))
        return {"thumbnails": rows}

    def error_row(self, ref: FileRef, reason: str) -> Row:
        """The row of a file that could not be opened, timed out or crashed a worker."""
        uid, _frames = self.frames_of.get(ref.path, (None, 1))
        row = {
            "row_id": row_id(ref.path),
            "path": ref.path,
            "SOPInstanceUID": uid,
            "frame": None,
            "status": "error",
            "error": clip_error(reason),
            "size": ref.size,
            "modification_time": ref.mtime,
        }
        return {"thumbnails": [row]}

    def batch(self, rows: Sequence[Row]) -> Batches:
        """All thumbnail rows of a task as one batch."""
        return {"thumbnails": thumbnails_batch(flatten(rows, "thumbnails"), self.created_at)}
