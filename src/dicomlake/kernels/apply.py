"""Your own function over frames, instances or series: the kernel of ``dicomlake.apply``.

The item contract. A user's function ``fn`` takes ONE item and returns a dict:

- the item is what the datasets give, with numpy arrays for tensors (see
  :mod:`dicomlake.kernels.apply_items`): for ``unit='frame'`` ``{"image": float32
  (C, H, W), "meta": {path, SOPInstanceUID, frame, spacing, row_id}}``; for
  ``'instance'`` the image is every frame stacked, (F, C, H, W), and meta has
  ``frames``; for ``'series'`` ``{"image": float32 (C, rows, columns, slices),
  "meta": {SeriesInstanceUID, paths, spacing, affine, origin}}``. Values are physical
  (Modality LUT applied) unless a window is given.
- the dict maps column names to numbers, strings, bytes, booleans, None or lists of
  them (numpy values are fine); each key becomes a typed column
  (:mod:`dicomlake.kernels.apply_columns` has the type rule). Keys must be
  identifiers other than the key columns below.

Rows: one per unit, with the key columns ``row_id`` (the instance's row id, as in
``instances``, for frame and instance units; :func:`series_row_id` of the UID for a
series), ``path`` (the file; a series' first slice), ``SOPInstanceUID`` and ``frame``
(frame unit) or ``SeriesInstanceUID`` (series unit), then ``status`` ('ok' or
'error'), ``error`` (``ExceptionClass: message``, clipped as every error text is),
``version`` (the caller's label of its function), ``size`` and ``modification_time``
of the source file (a series: the sum of its files' sizes and the latest time), and
``created_at``; the function's columns follow. A function that raises, a file that
does not decode, a value without a column type, a series that is not one regular
volume, each gives an error row and the run goes on.

The engine's reference (:class:`~dicomlake.catalog.FileRef`) of a unit is its file
for frame and instance units (a file's frames run together, so one decode setup
serves them; its error row, on a timeout or a crashed worker, is one row per frame)
and :func:`series_key` for a series, so the engine's per-file timeout is a per-unit
timeout. The function is given as ``"package.module:name"`` (imported in each worker)
or as a picklable callable. The kernel knows no engine and writes nothing: the local
job (:mod:`dicomlake.jobs.apply`) and Spark run it alike.
"""

from __future__ import annotations

import datetime as dt
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias

import pyarrow as pa

from dicomlake.catalog import FileRef
from dicomlake.kernels.apply_columns import ValueTypeError, plain, typed_columns
from dicomlake.kernels.apply_items import Decoder, frame_item, instance_item, series_item
from dicomlake.rows import clip_error, error_text, row_id

if TYPE_CHECKING:
    from dicomlake._types import StorageOptions
    from dicomlake.dicom.frames import Window
    from dicomlake.dicom.geometry import Rejection, VolumeGeometry

Unit: TypeAlias = Literal["frame", "instance", "series"]
#: The units an item may be.
UNITS: Final = ("frame", "instance", "series")

Function: TypeAlias = "str | Callable[[dict[str, Any]], Mapping[str, Any]]"

#: Prefix of a series unit's engine reference path.
SERIES_PREFIX: Final = "series:"

_TIME = pa.timestamp("us", tz="UTC")
_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def key_schema(unit: Unit) -> pa.Schema:
    """The key columns of an apply table of ``unit``; the function's columns follow."""
    where: list[pa.Field] = [
        pa.field("row_id", pa.int64(), nullable=False),
        pa.field("path", pa.string()),
    ]
    if unit == "series":
        where.append(pa.field("SeriesInstanceUID", pa.string()))
    else:
        where.append(pa.field("SOPInstanceUID", pa.string()))
    if unit == "frame":
        where.append(pa.field("frame", pa.int32()))
    return pa.schema(
        [
            *where,
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("version", pa.string()),
            pa.field("size", pa.int64()),
            pa.field("modification_time", _TIME),
            pa.field("created_at", _TIME),
        ]
    )


#: Every key column name, of any unit: a function's keys may not use them.
RESERVED: Final = frozenset(name for unit in UNITS for name in key_schema(unit).names)


def series_key(uid: str) -> str:
    """The engine reference path of a series unit."""
    return SERIES_PREFIX + uid


def series_row_id(uid: str) -> int:
    """The ``row_id`` of a series unit: the stable hash of its SeriesInstanceUID."""
    return row_id(uid)


# --------------------------------------------------------------------------- function


def resolve_function(fn: Function) -> Callable[[dict[str, Any]], Any]:
    """The callable ``fn`` names: ``"package.module:name"`` imported, or ``fn`` itself.

    Raises:
        ValueError: A string that is not ``package.module:name``.
        ImportError: The module cannot be imported (its own error, named).
        AttributeError: The module has no such name.
        TypeError: What is found is not callable.
    """
    if not isinstance(fn, str):
        if not callable(fn):
            raise TypeError(
                f"fn must be callable or 'package.module:name', got {type(fn).__name__}"
            )
        return fn
    if not _SPEC.match(fn):
        raise ValueError(
            f"a function is given as 'package.module:name' (as in 'mypkg.features:hu_stats'), "
            f"got {fn!r}"
        )
    module_name, _, attribute = fn.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import {module_name!r} for {fn!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no {attribute!r}") from None
    if not callable(found):
        raise TypeError(f"{fn!r} is a {type(found).__name__}, not a function")
    return found  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- units


@dataclass(frozen=True, slots=True)
class InstanceSource:
    """A file whose frames (or which, whole) the function gets, as the lake knows it."""

    path: str
    sop_instance_uid: str | None = None
    frames: int = 1
    size: int | None = None
    mtime: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class SeriesSource:
    """A series: its checked geometry, or why it is not one volume.

    Attributes:
        uid: SeriesInstanceUID.
        geometry: Slice order, spacing, affine; None when rejected.
        rejection: ``reason: message`` of a series that is not one regular volume.
        path: Its first slice's file (or first file when rejected).
        size: Sum of its files' sizes.
        mtime: Latest modification time of its files.
    """

    uid: str
    geometry: VolumeGeometry | None
    rejection: str | None
    path: str | None
    size: int | None
    mtime: dt.datetime | None


Source: TypeAlias = InstanceSource | SeriesSource


def series_source(
    uid: str,
    files: Mapping[str, tuple[int | None, dt.datetime | None]],
    geometry: VolumeGeometry | Rejection,
) -> SeriesSource:
    """What the kernel needs of one series, as the local job and Spark both build it.

    The size is the sum of its files' sizes (None when one is unknown) and the time
    the latest of theirs: what a re-run compares, so both engines must agree on it.

    Args:
        uid: SeriesInstanceUID.
        files: path → (size, modification time) of each of its instances.
        geometry: Its checked geometry, or why it is not one regular volume.
    """
    from dicomlake.dicom.geometry import Rejection

    sizes = [size for size, _ in files.values()]
    times = [moment for _, moment in files.values() if moment is not None]
    size = sum(s for s in sizes if s is not None) if None not in sizes else None
    mtime = max(times) if times else None
    if isinstance(geometry, Rejection):
        return SeriesSource(uid, None, str(geometry), min(files), size, mtime)
    return SeriesSource(uid, geometry, None, geometry.paths[0], size, mtime)


@dataclass(frozen=True, slots=True)
class UnitRef(FileRef):
    """An engine reference that carries what the lake knows of its unit.

    The source travels with its task, not with the kernel: a kernel holding the
    sources of a whole run would be pickled to every worker as it starts (the
    coordinator waits while each new process reads it), and held by each.
    """

    source: Source | None = None


@dataclass(frozen=True, slots=True)
class ApplyOptions:
    """What the kernel does with each unit (picklable, validated once).

    Raises:
        ValueError: An unknown unit, or ``size`` with series units.
    """

    fn: Function
    unit: Unit = "frame"
    version: str = "1"
    window: Window = None
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.unit == "series" and self.size is not None:
            raise ValueError(
                "size resizes frames and instances; a series keeps its grid (and affine): "
                "resample inside the function"
            )
        object.__setattr__(self, "version", str(self.version))


_RESOLVED: dict[str, Callable[[dict[str, Any]], Any]] = {}


class ApplyKernel:
    """Run a user's function over units: one row per unit (see the module docstring).

    The kernel is picklable (the function travels as its name, or pickled) and
    resolves a named function once per process.

    Args:
        options: Function, unit, version, window and size.
        table: Name of the output table: the batches come under it.
        sources: Engine reference path → what the lake knows of the unit, for
            references that are not a :class:`UnitRef` carrying it. A frame or
            instance reference known neither way has its header read for frames and
            UID.
        storage_options: fsspec options for object storage.
        created_at: Stamp of every row; now when None.
    """

    def __init__(
        self,
        options: ApplyOptions,
        *,
        table: str = "features",
        sources: Mapping[str, Source] | None = None,
        storage_options: StorageOptions = None,
        created_at: dt.datetime | None = None,
    ) -> None:
        self.options = options
        self.table = table
        self.sources = dict(sources or {})
        self.decoder = Decoder(options.window, options.size, storage_options)
        self.created_at = created_at or dt.datetime.now(dt.UTC)
        self.schema = key_schema(options.unit)

    # -- the function

    def function(self) -> Callable[[dict[str, Any]], Any]:
        """The user's function, resolved once per process."""
        fn = self.options.fn
        if not isinstance(fn, str):
            return fn
        found = _RESOLVED.get(fn)
        if found is None:
            found = _RESOLVED[fn] = resolve_function(fn)
        return found

    def call(self, item: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
        """``fn(item)`` as plain values, or the error text of what went wrong."""
        try:
            out = self.function()(item)
        except Exception as exc:  # the user's code: any error is its unit's error row
            return None, error_text(exc)
        if not isinstance(out, Mapping):
            return None, clip_error(
                f"TypeError: the function returned {type(out).__name__}, not a dict of "
                "column values"
            )
        values: dict[str, Any] = {}
        for key, value in out.items():
            if not isinstance(key, str) or not _IDENTIFIER.match(key) or key in RESERVED:
                return None, clip_error(
                    f"ValueError: the function returned the key {key!r}: keys are column "
                    "names (letters, digits, _) other than the key columns "
                    f"{sorted(RESERVED)}"
                )
            try:
                values[key] = plain(value)
            except ValueTypeError as exc:
                return None, clip_error(f"TypeError: {key!r}: {exc}")
        return values, None

    # -- units

    def source(self, ref: FileRef) -> Source:
        """What the kernel knows of a reference (a bare file: one frame, header unread)."""
        known = ref.source if isinstance(ref, UnitRef) else None
        known = known or self.sources.get(ref.path)
        if known is not None:
            return known
        if ref.path.startswith(SERIES_PREFIX):
            uid = ref.path[len(SERIES_PREFIX) :]
            return SeriesSource(uid, None, "unknown_series: not selected", None, None, None)
        return InstanceSource(ref.path, None, 0, ref.size, ref.mtime)

    def _base(self, source: Source) -> dict[str, Any]:
        if isinstance(source, SeriesSource):
            return {
                "row_id": series_row_id(source.uid),
                "path": source.path,
                "SeriesInstanceUID": source.uid,
                "size": source.size,
                "modification_time": source.mtime,
            }
        return {
            "row_id": row_id(source.path),
            "path": source.path,
            "SOPInstanceUID": source.sop_instance_uid,
            "size": source.size,
            "modification_time": source.mtime,
        }

    def row(self, ref: FileRef) -> dict[str, Any]:
        """Run the function over the unit(s) of one reference (never raises)."""
        source = self.source(ref)
        if isinstance(source, SeriesSource):
            rows = [self._series(source)]
        else:
            rows = self._instance(source)
        failures = [r["error"] for r in rows if r.pop("_fn_failed", False)]
        return {"rows": rows, "units": len(rows), "failures": failures}

    def _done(self, base: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
        values, error = self.call(item)
        if error is not None:
            return {**base, "status": "error", "error": error, "_fn_failed": True}
        return {**base, "status": "ok", "error": None, "_values": values}

    def _series(self, source: SeriesSource) -> dict[str, Any]:
        base = self._base(source)
        if source.geometry is None:
            reason = source.rejection or "unknown"
            return {**base, "status": "error", "error": clip_error(f"RejectedSeries: {reason}")}
        try:
            item = series_item(self.decoder, source.uid, source.geometry)
        except Exception as exc:  # a slice that does not decode: the series' error row
            return {**base, "status": "error", "error": error_text(exc)}
        return self._done(base, item)

    def _instance(self, source: InstanceSource) -> list[dict[str, Any]]:
        try:
            if source.frames < 1:
                source = _probe(source, self.decoder.storage_options)
        except Exception as exc:  # an unreadable file: its error row
            return [self._error(self._base(source), None, error_text(exc))]
        base = self._base(source)
        if self.options.unit == "instance":
            try:
                item = instance_item(
                    self.decoder,
                    source.path,
                    source.frames,
                    source.sop_instance_uid,
                    base["row_id"],
                )
            except Exception as exc:  # a frame that does not decode: the instance's row
                return [self._error(base, None, error_text(exc))]
            return [self._done(base, item)]
        rows = []
        try:
            for index, decoded in self.decoder.frames(source.path, range(source.frames)):
                if isinstance(decoded, Exception):  # a frame that does not decode
                    rows.append(self._error(base, index, error_text(decoded)))
                    continue
                image, spacing = decoded
                item = frame_item(
                    image, spacing, source.path, index, source.sop_instance_uid, base["row_id"]
                )
                rows.append(self._done({**base, "frame": index}, item))
        except Exception as exc:  # the file or its header cannot be read: every frame
            done = {row["frame"] for row in rows}
            reason = error_text(exc)
            rows += [self._error(base, i, reason) for i in range(source.frames) if i not in done]
        return rows

    def _error(self, base: dict[str, Any], frame: int | None, reason: str) -> dict[str, Any]:
        row = {**base, "status": "error", "error": clip_error(reason)}
        if self.options.unit == "frame":
            row["frame"] = frame
        return row

    def error_row(self, ref: FileRef, reason: str) -> dict[str, Any]:
        """The row(s) of a unit the engine gave up on (timed out, crashed its worker).

        A file of frame units gives one error row per frame, so every unit has a row.
        """
        source = self.source(ref)
        base = self._base(source)
        if isinstance(source, SeriesSource) or self.options.unit == "instance":
            rows = [{**base, "status": "error", "error": clip_error(reason)}]
        else:
            frames = range(source.frames) if source.frames >= 1 else [None]
            rows = [self._error(base, index, reason) for index in frames]
        return {"rows": rows, "units": len(rows), "failures": []}

    # -- batches

    def batch(self, rows: Sequence[dict[str, Any]]) -> dict[str, pa.RecordBatch]:
        """A task's rows as one batch under :attr:`table`, and its counts as ``stats``.

        The function's columns follow the key columns in the order their keys first
        appear; a key with only nulls so far has the null type (see
        :mod:`dicomlake.kernels.apply_columns`).
        """
        flat = [r for row in rows for r in row["rows"]]
        values = [r.get("_values") or {} for r in flat]
        order: dict[str, None] = {}
        for found in values:
            order.update(dict.fromkeys(found))
        columns, bad = typed_columns(values, list(order))
        for index, text in bad.items():
            flat[index] = {**flat[index], "status": "error", "error": clip_error(text)}
        stamps = {"version": self.options.version, "created_at": self.created_at}
        arrays = [
            pa.array(
                [stamps[f.name]] * len(flat) if f.name in stamps else [r.get(f.name) for r in flat],
                type=f.type,
            )
            for f in self.schema
        ]
        fields = list(self.schema) + [pa.field(k, columns[k].type) for k in order]
        out = pa.RecordBatch.from_arrays(
            arrays + [columns[k] for k in order], schema=pa.schema(fields)
        )
        failures = [text for row in rows for text in row["failures"]]
        stats = pa.RecordBatch.from_pydict(
            {"units": [sum(row["units"] for row in rows)], "failures": [failures]},
            schema=STATS_SCHEMA,
        )
        return {self.table: out, "stats": stats}


#: Schema of the per-task counts beside the rows: units run, and the error texts of
#: the units whose function raised (``on_error='raise'`` stops on the first).
STATS_SCHEMA: Final = pa.schema([("units", pa.int64()), ("failures", pa.list_(pa.string()))])


def _probe(source: InstanceSource, storage_options: StorageOptions) -> InstanceSource:
    """``source`` with *Number of Frames* and *SOP Instance UID* from its header.

    Raises:
        OSError: The file cannot be read.
        ExtractError: It is not DICOM or has no pixel data.
    """
    from dicomlake.catalog import open_ref
    from dicomlake.dicom.header import read_header
    from dicomlake.errors import ExtractError

    with open_ref(source.path, storage_options=storage_options) as fp:
        header = read_header(fp, uri=source.path)
    if not header.has_pixel_data:
        raise ExtractError("the file has no pixel data", path=source.path)
    meta = header.meta

    def first(key: str) -> Any:
        return (meta.get(key, {}).get("Value") or [None])[0]

    try:
        frames = max(int(first("00280008") or 1), 1)
    except (TypeError, ValueError):
        frames = 1  # decoding will say what is wrong
    uid = source.sop_instance_uid or first("00080018")
    return InstanceSource(source.path, uid, frames, source.size, source.mtime)
