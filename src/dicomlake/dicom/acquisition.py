"""Acquisition attributes of one instance, typed, from its header's DICOM JSON.

The columns and their Arrow types are fixed by
:data:`dicomlake.schema.ACQUISITION_COLUMNS`. A classic object holds each attribute
at the top level (or in a sequence such as (0054,0016) *Radiopharmaceutical
Information Sequence*, whose first item counts); an enhanced multi-frame object holds
most of them in functional group macros: each frame's item of (5200,9230)
*Per-Frame Functional Groups Sequence*, else the item of (5200,9229) *Shared
Functional Groups Sequence*. A list column gets one value per frame there (the tube
current of each frame); a single-valued column gets the first frame's value.

A value that does not convert (a KVP that is not a number) is None, and the
returned warnings name the column, never the value (it may be patient data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from dicomlake.dicom.keywords import tag_for_keyword
from dicomlake.schema import ACQUISITION_COLUMNS

JsonDict = dict[str, Any]
Path = tuple[str, ...]  # DICOM JSON keys: sequences (first item each), then the element

_SHARED: Final = "52009229"
_PER_FRAME: Final = "52009230"


def _key(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:  # a typo in the table below: fail at import, in tests
        raise ValueError(f"{keyword} is not a DICOM keyword")
    return f"{tag:08X}"


def _path(*keywords: str) -> Path:
    return tuple(_key(k) for k in keywords)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a column's value lies: at the top level, or in a functional group.

    ``top`` paths are tried first, in order; then ``group`` paths, each looked up
    per frame (a macro item of the frame, else of the shared groups). ``index`` picks
    one value of a multi-valued element (row or column of *Pixel Spacing*).
    """

    top: tuple[Path, ...] = ()
    group: tuple[Path, ...] = ()
    index: int = 0


def _same(keyword: str, *macros: str) -> Source:
    """The keyword at the top level, or inside each of ``macros``' items."""
    return Source(top=(_path(keyword),), group=tuple(_path(m, keyword) for m in macros))


#: column -> where its value lies
SOURCES: Final[dict[str, Source]] = {
    "ImageType": _same("ImageType"),
    "PixelSpacing_row_mm": _same("PixelSpacing", "PixelMeasuresSequence"),
    "PixelSpacing_col_mm": Source(
        top=(_path("PixelSpacing"),),
        group=(_path("PixelMeasuresSequence", "PixelSpacing"),),
        index=1,
    ),
    "Rows": _same("Rows"),
    "Columns": _same("Columns"),
    "SliceThickness": _same("SliceThickness", "PixelMeasuresSequence"),
    "KVP": _same("KVP", "CTXRayDetailsSequence"),
    "ScanOptions": _same("ScanOptions"),
    "ConvolutionKernel": _same("ConvolutionKernel", "CTReconstructionSequence"),
    "GantryDetectorTilt": _same("GantryDetectorTilt", "CTAcquisitionDetailsSequence"),
    "XRayTubeCurrent": Source(
        top=(_path("XRayTubeCurrent"), _path("XRayTubeCurrentInmA")),
        group=(_path("CTExposureSequence", "XRayTubeCurrentInmA"),),
    ),
    "FilterType": _same("FilterType", "CTXRayDetailsSequence"),
    "Exposure": Source(
        top=(_path("Exposure"), _path("ExposureInmAs")),
        group=(_path("CTExposureSequence", "ExposureInmAs"),),
    ),
    "ExposureTime": Source(
        top=(_path("ExposureTime"), _path("ExposureTimeInms")),
        group=(_path("CTExposureSequence", "ExposureTimeInms"),),
    ),
    "DataCollectionDiameter": _same("DataCollectionDiameter", "CTAcquisitionDetailsSequence"),
    "ReconstructionDiameter": _same("ReconstructionDiameter", "CTReconstructionSequence"),
    "SpiralPitchFactor": _same("SpiralPitchFactor", "CTTableDynamicsSequence"),
    "MagneticFieldStrength": _same("MagneticFieldStrength"),
    "ScanningSequence": _same("ScanningSequence"),
    "SequenceVariant": _same("SequenceVariant"),
    "MRAcquisitionType": _same("MRAcquisitionType"),
    "EchoTime": Source(
        top=(_path("EchoTime"),), group=(_path("MREchoSequence", "EffectiveEchoTime"),)
    ),
    "RepetitionTime": _same("RepetitionTime", "MRTimingAndRelatedParametersSequence"),
    "EchoTrainLength": _same("EchoTrainLength", "MRTimingAndRelatedParametersSequence"),
    "FlipAngle": _same("FlipAngle", "MRTimingAndRelatedParametersSequence"),
    "PixelBandwidth": _same("PixelBandwidth", "MRImagingModifierSequence"),
    "ImagingFrequency": Source(
        top=(_path("ImagingFrequency"),),
        group=(_path("MRImagingModifierSequence", "TransmitterFrequency"),),
    ),
    "ImagedNucleus": Source(top=(_path("ImagedNucleus"), _path("ResonantNucleus"))),
    "InversionTime": Source(
        top=(_path("InversionTime"),), group=(_path("MRModifierSequence", "InversionTimes"),)
    ),
    "ReceiveCoilName": _same("ReceiveCoilName", "MRReceiveCoilSequence"),
    "SequenceName": Source(top=(_path("SequenceName"), _path("PulseSequenceName"))),
    "DiffusionBValue": _same("DiffusionBValue", "MRDiffusionSequence"),
    "NumberOfTemporalPositions": _same("NumberOfTemporalPositions"),
    "SeriesType": _same("SeriesType"),
    "Units": _same("Units"),
    "DecayCorrection": _same("DecayCorrection"),
    "CorrectedImage": _same("CorrectedImage"),
    "RandomsCorrectionMethod": _same("RandomsCorrectionMethod"),
    "ReconstructionMethod": _same("ReconstructionMethod"),
    "ActualFrameDuration": _same("ActualFrameDuration"),
    "ScatterCorrectionMethod": _same("ScatterCorrectionMethod"),
    "AttenuationCorrectionMethod": _same("AttenuationCorrectionMethod"),
    "RadionuclideCodeMeaning": Source(
        top=(
            _path(
                "RadiopharmaceuticalInformationSequence", "RadionuclideCodeSequence", "CodeMeaning"
            ),
        )
    ),
    "RadionuclideTotalDose": Source(
        top=(_path("RadiopharmaceuticalInformationSequence", "RadionuclideTotalDose"),)
    ),
    "RadiopharmaceuticalStartTime": Source(
        top=(_path("RadiopharmaceuticalInformationSequence", "RadiopharmaceuticalStartTime"),)
    ),
    "Radiopharmaceutical": Source(
        top=(_path("RadiopharmaceuticalInformationSequence", "Radiopharmaceutical"),)
    ),
    "NumberOfSlices": _same("NumberOfSlices"),
    "NumberOfTimeSlices": _same("NumberOfTimeSlices"),
    "ContrastBolusAgent": _same("ContrastBolusAgent"),
    "ContrastBolusIngredient": _same("ContrastBolusIngredient"),
    "ContrastBolusRoute": _same("ContrastBolusRoute"),
    "TotalPixelMatrixColumns": _same("TotalPixelMatrixColumns"),
    "TotalPixelMatrixRows": _same("TotalPixelMatrixRows"),
    "TotalPixelMatrixFocalPlanes": _same("TotalPixelMatrixFocalPlanes"),
    "NumberOfOpticalPaths": _same("NumberOfOpticalPaths"),
    "OpticalPathIdentifier": Source(top=(_path("OpticalPathSequence", "OpticalPathIdentifier"),)),
    "ObjectiveLensPower": Source(top=(_path("OpticalPathSequence", "ObjectiveLensPower"),)),
    "ContainerIdentifier": _same("ContainerIdentifier"),
}


def _walk(item: JsonDict, path: Path) -> JsonDict | None:
    """The element at ``path`` below ``item`` (first item of each sequence), or None."""
    for key in path[:-1]:
        element = item.get(key)
        items = element.get("Value") if isinstance(element, dict) else None
        if not items or not isinstance(items[0], dict):
            return None
        item = items[0]
    element = item.get(path[-1])
    return element if isinstance(element, dict) and element.get("Value") else None


def _first_item(meta: JsonDict, key: str) -> JsonDict | None:
    element = meta.get(key)
    items = element.get("Value") if isinstance(element, dict) else None
    return items[0] if items and isinstance(items[0], dict) else None


def _frame_items(meta: JsonDict) -> list[JsonDict]:
    element = meta.get(_PER_FRAME)
    items = element.get("Value") if isinstance(element, dict) else None
    return [item for item in items or () if isinstance(item, dict)]


def _per_frame(meta: JsonDict, path: Path) -> Iterator[JsonDict]:
    """The element at ``path`` of each frame: its own macro, else the shared one."""
    shared_item = _first_item(meta, _SHARED)
    shared = None if shared_item is None else _walk(shared_item, path)
    frames = _frame_items(meta)
    if not frames:
        if shared is not None:
            yield shared
        return
    for frame in frames:
        element = _walk(frame, path)
        if element is None:
            element = shared
        if element is not None:
            yield element


def _values(meta: JsonDict, source: Source, *, every_frame: bool) -> list[Any] | None:
    """The raw JSON values of a column: the top element's, or one per frame."""
    for path in source.top:
        element = _walk(meta, path)
        if element is not None:
            return list(element["Value"])
    for path in source.group:
        values = []
        for element in _per_frame(meta, path):
            values.append(element["Value"][source.index] if every_frame else element["Value"])
            if not every_frame:
                return list(values[0])
        if values:
            return values
    return None


def _number(value: Any) -> float:
    if type(value) is float:  # most values: a DS or FD read as a JSON number
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"a {type(value).__name__} is not a number")
    return float(value)


def _integer(value: Any) -> int:
    number = _number(value)
    if not number.is_integer():
        raise ValueError("not an integer")
    return int(number)


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, dict | list):
        raise TypeError(f"a {type(value).__name__} is not text")
    return str(value)


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    source: Source
    convert: Callable[[Any], Any]
    is_list: bool
    every_frame: bool  # a list of one value per frame (not an element's values)
    simple: tuple[str, ...]  # top-level keys tried in order, when every top path is one

    def value(self, meta: JsonDict, warnings: list[str]) -> Any:
        """The column's typed value in ``meta``, or None (a warning when it does not convert)."""
        raw = _values(meta, self.source, every_frame=self.every_frame)
        return self.typed(raw, warnings) if raw else None

    def typed(self, raw: list[Any], warnings: list[str]) -> Any:
        """The column's value from an element's raw JSON values (or one per frame)."""
        try:
            if self.is_list:
                return [None if v is None else self.convert(v) for v in raw]
            value = raw[self.source.index]
            return None if value is None else self.convert(value)
        except (ValueError, TypeError, IndexError) as exc:
            warnings.append(f"{self.name}: {type(exc).__name__}: the value does not convert")
            return None


def _column(name: str, typ: pa.DataType) -> _Column:
    is_list = pa.types.is_list(typ)
    value_type = typ.value_type if is_list else typ
    if pa.types.is_floating(value_type):
        convert: Callable[[Any], Any] = _number
    elif pa.types.is_integer(value_type):
        convert = _integer
    else:
        convert = _text
    # numeric lists vary across frames (echo times, tube currents); text lists are an
    # element's values (ImageType's), taken from the first frame
    every_frame = is_list and convert is _number
    source = SOURCES[name]
    simple = tuple(p[0] for p in source.top) if all(len(p) == 1 for p in source.top) else ()
    return _Column(name, source, convert, is_list, every_frame, simple)


_COLUMNS: Final = tuple(_column(name, typ) for name, typ in ACQUISITION_COLUMNS.items())


#: How a column is read from one top-level key: its name, whether the key is its first
#: top-level element (read there directly, else through :meth:`_Column.value`), and
#: the direct read's conversion, list flag and value index (a plain tuple: read for
#: every column of every instance at ingest, so attribute lookups count).
_Read = tuple[str, bool, Callable[[Any], Any], bool, int, _Column]


def _columns_by_root() -> dict[str, tuple[_Read, ...]]:
    """Each top-level key a column's value may start from, and how to read those columns."""
    by_root: dict[str, list[_Read]] = {}
    for column in _COLUMNS:
        roots = {path[0] for path in column.source.top}
        if column.source.group:
            roots |= {_SHARED, _PER_FRAME}
        for root in roots:
            # read here directly when the root is the first top-level element to try
            # (a later one, XRayTubeCurrentInmA, goes through value(), which tries the
            # first again)
            direct = bool(column.simple) and column.simple[0] == root
            read = (column.name, direct, column.convert, column.is_list, column.source.index)
            by_root.setdefault(root, []).append((*read, column))
    return {root: tuple(reads) for root, reads in by_root.items()}


_BY_ROOT: Final = _columns_by_root()
#: The top-level elements (DICOM JSON keys) the columns are read from: all a header
#: needs to hold for :func:`acquisition_values`, so the native parser hands over just
#: these (with the promoted tags) and never the whole header as objects.
TOP_LEVEL_KEYS: Final = frozenset(_BY_ROOT)


def acquisition_values(meta: JsonDict) -> tuple[dict[str, Any], list[str]]:
    """The typed acquisition attributes of one instance, and its conversion warnings.

    Args:
        meta: The instance's header as DICOM JSON (the ``meta`` column, parsed), or
            any part of it that holds its :data:`TOP_LEVEL_KEYS` elements.

    Returns:
        ``{column: value or None}`` for every column of
        :data:`~dicomlake.schema.ACQUISITION_COLUMNS` (lists for list columns), and
        the warnings: ``"<column>: <reason>"`` for each value that did not convert.

    Example:
        >>> values, warnings = acquisition_values({"00180060": {"vr": "DS", "Value": [120]}})
        >>> values["KVP"], warnings
        (120.0, [])
    """
    found, warnings = found_values(meta)
    return dict.fromkeys(ACQUISITION_COLUMNS) | found, warnings


def found_values(meta: JsonDict) -> tuple[dict[str, Any], list[str]]:
    """:func:`acquisition_values` of only the columns whose elements ``meta`` holds.

    Only those columns are looked at: a CT header holds some fifteen of the sixty, so
    this costs a few microseconds, and the rows of a batch are sparse (the ``acquisition``
    table's columns are built from them in about as little).
    """
    row: dict[str, Any] = {}
    warnings: list[str] = []
    for key in meta:
        reads = _BY_ROOT.get(key)
        if reads is None:
            continue
        for name, direct, convert, is_list, index, column in reads:
            if name in row:  # a column with two roots in the header
                continue
            if not direct:
                row[name] = column.value(meta, warnings)
                continue
            raw = meta[key].get("Value")  # most columns: their one top-level element
            if not raw:  # empty here: another element or a functional group may hold it
                elsewhere = column.source.group or len(column.simple) > 1
                row[name] = column.value(meta, warnings) if elsewhere else None
                continue
            if not is_list and index < len(raw):
                # the usual single values need no call: text as text, a DS or FD as a
                # float, a DS or IS written as an integer made a float
                value = raw[index]
                kind = type(value)
                if (kind is str and convert is _text) or (kind is float and convert is _number):
                    row[name] = value
                    continue
                if kind is int and convert is _number:
                    row[name] = float(value)
                    continue
            row[name] = column.typed(raw, warnings)
    return row, warnings
