"""Waveforms drawn as a plot: what an ECG (or other waveform instance) shows instead of pixels.

Waveform IODs (PS3.3 C.10.9: 12-lead, general and ambulatory ECG, hemodynamic, cardiac
electrophysiology, respiratory, EEG ...) carry samples, not a Pixel Data element, so
the display pipeline has nothing to draw. This module plots the first multiplex group
(Waveform Sequence item 0): one trace per channel, stacked top to bottom in the order
of the Channel Definition Sequence, each labelled with its source's Code Meaning (else
its Channel Label). pydicom decodes the samples into physical units (Channel
Sensitivity x Correction Factor + Channel Baseline).

Scale: when every channel is a voltage, the sampling frequency is known and the plot's
size allows it, the traces are drawn as on ECG paper, 25 mm/s and 10 mm/mV, over a
1 mm / 5 mm grid (a "mm" is whatever the time axis makes it: the full recording spans
the plot's width). Otherwise the channels share one amplitude scale when they share a
unit (relative amplitudes stay comparable), or each is fitted to its band; the title
says which. Audio (Basic Voice Audio, General Audio) is not drawn: its companded
samples are sound, not a trace to read.

The cost is bounded whatever the recording's length: at most :data:`MAX_VALUES`
samples are decoded (a long recording shows its beginning, and the title says so), at
most :data:`MAX_CHANNELS` channels are drawn, and each trace is reduced to the plot's
pixel columns (per column its first, lowest, highest and last sample, so no peak is
lost).
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Final

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from dicomlake.dicom.drawing import Drawing
from dicomlake.dicom.quiet import quiet
from dicomlake.errors import WaveformError

if TYPE_CHECKING:  # Pillow is imported when something is drawn
    from PIL import Image, ImageDraw, ImageFont

#: SOP classes whose waveforms are sound: never drawn.
AUDIO_SOP_CLASSES: Final = frozenset(
    {"1.2.840.10008.5.1.4.1.1.9.4.1", "1.2.840.10008.5.1.4.1.1.9.4.2"}
)
#: At most this many channels of a multiplex group are drawn.
MAX_CHANNELS: Final = 24
#: At most this many values (samples x channels) are decoded; a longer recording is
#: drawn from its beginning.
MAX_VALUES: Final = 4_000_000
#: ECG paper: millimetres per second and per millivolt.
PAPER_SPEED: Final = 25.0
PAPER_GAIN: Final = 10.0
#: Band heights (in mV at :data:`PAPER_GAIN`) for which ECG paper scale is used: below,
#: every QRS would spill over its neighbours; above, the traces would be flat lines.
PAPER_BAND_MV: Final = (1.0, 6.0)
#: Image sizes accepted by :func:`render_waveform`, in pixels.
MIN_SIDE: Final = 16
MAX_SIDE: Final = 8192
#: Media types :func:`render_waveform_bytes` writes, and Pillow's name for each.
MEDIA_TYPES: Final = {"image/png": "PNG", "image/jpeg": "JPEG"}

#: Sample interpretations pydicom decodes, by bits allocated (MB/AB are companded audio).
_SAMPLE_FORMATS: Final = {
    (8, "SB"),
    (8, "UB"),
    (16, "SS"),
    (16, "US"),
    (32, "SL"),
    (32, "UL"),
    (64, "SV"),
    (64, "UV"),
}
#: UCUM voltage units of Channel Sensitivity, as a factor to millivolts.
_TO_MILLIVOLTS: Final = {"nV": 1e-6, "uV": 1e-3, "mV": 1.0, "V": 1e3}

_BACKGROUND: Final = (255, 255, 255)
_MINOR_GRID: Final = (252, 222, 222)
_MAJOR_GRID: Final = (240, 170, 170)
_SEPARATOR: Final = (225, 225, 225)
_TRACE: Final = (0, 0, 0)
_TEXT: Final = (40, 40, 90)


@dataclass(frozen=True, slots=True)
class _Group:
    """The part of a multiplex group that is drawn, in physical units."""

    values: np.ndarray  # (samples, channels), float64
    labels: list[str]
    units: list[str]  # Channel Sensitivity Units code values ('' when absent)
    frequency: float | None  # Hz
    samples: int  # in the whole recording
    channels: int  # in the whole group


def has_waveform(ds: Dataset) -> bool:
    """Whether ``ds`` holds a waveform this module draws (audio does not count).

    Never raises: a header too broken to tell is not a waveform.
    """
    try:
        sequence = ds.get("WaveformSequence")
        if not sequence or str(ds.get("SOPClassUID", "") or "") in AUDIO_SOP_CLASSES:
            return False
        item = sequence[0]
        interpretation = str(item.get("WaveformSampleInterpretation", "") or "")
        return "WaveformData" in item and interpretation not in ("MB", "AB")
    except Exception:
        return False


@quiet
def render_waveform(ds: Dataset, *, width: int = 1024, height: int | None = None) -> Image.Image:
    """Plot the first multiplex group of ``ds`` as an RGB image.

    Args:
        ds: A dataset with a Waveform Sequence.
        width: The image's width in pixels.
        height: The image's height; by default it grows with the channels drawn.

    Raises:
        WaveformError: No waveform, audio, or a malformed or truncated one.
        ValueError: ``width`` or ``height`` outside 16..8192.
    """
    _check_side("width", width)
    if height is not None:
        _check_side("height", height)
    group = _read_group(ds)
    columns = group.values.shape[1]
    return _plot(group, width, height if height is not None else natural_height(width, columns))


def render_waveform_bytes(
    ds: Dataset, *, media_type: str = "image/png", width: int = 1024
) -> bytes:
    """The plot of :func:`render_waveform` encoded as PNG or JPEG (for ``/rendered``).

    Args:
        ds: A dataset with a Waveform Sequence.
        media_type: ``image/png`` or ``image/jpeg`` (parameters after ``;`` ignored).
        width: The image's width in pixels.

    Raises:
        WaveformError: No waveform, audio, or a malformed or truncated one.
        ValueError: Another media type, or ``width`` outside 16..8192.
    """
    kind = media_type.split(";", 1)[0].strip().lower()
    if kind not in MEDIA_TYPES:
        raise ValueError(f"a waveform is rendered as {' or '.join(MEDIA_TYPES)}, not {kind!r}")
    image = render_waveform(ds, width=width)
    return _encode(image, MEDIA_TYPES[kind])


@quiet
def draw_waveform(fp: IO[bytes], *, size: int) -> Drawing:
    """Plot the waveform of the file open in ``fp`` as a PNG whose longest side is ``size``.

    The thumbnail's counterpart of :func:`dicomlake.dicom.drawing.draw`.

    Raises:
        WaveformError: No waveform, audio, or a malformed or truncated one.
        Exception: Whatever reading the file raises.
    """
    _check_side("size", size)
    fp.seek(0)
    ds = pydicom.dcmread(fp, force=True, stop_before_pixels=True)
    group = _read_group(ds)
    channels = group.values.shape[1]
    width, height = size, natural_height(size, channels)
    if height > size:  # taller than wide: the height is the longest side
        width = max(MIN_SIDE, math.floor(size * size / height))
        height = min(size, natural_height(width, channels))
    image = _plot(group, width, height)
    return Drawing(_encode(image, "PNG"), image.width, image.height, image.mode)


def natural_height(width: int, channels: int) -> int:
    """The default height for ``channels`` traces: about a twelfth of the width each.

    A 12-lead ECG comes out about square; one channel a strip, 24 channels taller.
    """
    share = min(max(0.08 * channels, 0.3), 1.3)
    return max(MIN_SIDE, round(width * share))


def _check_side(name: str, value: int) -> None:
    if not MIN_SIDE <= value <= MAX_SIDE:
        raise ValueError(f"{name} must be {MIN_SIDE}..{MAX_SIDE} pixels, got {value}")


def _encode(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    if kind == "JPEG":
        image.save(out, format="JPEG", quality=90)
    else:
        image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


# --------------------------------------------------------------------------- reading


def _count(item: Dataset, keyword: str, tag: str) -> int:
    """A required positive integer of the multiplex group, or a WaveformError."""
    value = item.get(keyword)
    if value is None or value == "":
        raise WaveformError(f"({tag}) {_spaced(keyword)} is missing from the Waveform Sequence")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise WaveformError(f"({tag}) {_spaced(keyword)} is not an integer") from None
    if number <= 0:
        raise WaveformError(f"({tag}) {_spaced(keyword)} must be positive, found {number}")
    return number


def _spaced(keyword: str) -> str:
    """'NumberOfWaveformChannels' -> 'Number Of Waveform Channels' (for messages)."""
    return "".join(f" {c}" if c.isupper() and i else c for i, c in enumerate(keyword))


def _number(element: Any, default: float | None) -> float | None:
    """A DS value as a float; ``default`` when absent, None when unreadable."""
    if element is None:
        return default
    try:
        value = float(element)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _check_channels(definitions: list[Dataset]) -> None:
    """Sensitivity, correction factor and baseline must be numbers where present."""
    fields = (
        ("ChannelSensitivity", "003A,0210"),
        ("ChannelSensitivityCorrectionFactor", "003A,0212"),
        ("ChannelBaseline", "003A,0213"),
    )
    for index, channel in enumerate(definitions):
        for keyword, tag in fields:
            if keyword in channel and _number(channel.get(keyword), None) is None:
                raise WaveformError(
                    f"channel {index + 1}: ({tag}) {_spaced(keyword)} is empty or not a "
                    "finite number"
                )


def _label(channel: Dataset, index: int) -> str:
    """The channel's source Code Meaning, else its Channel Label, else its number."""
    try:
        source = channel.get("ChannelSourceSequence")
        if source:
            meaning = str(source[0].get("CodeMeaning", "") or "").strip()
            if meaning:
                return meaning
        label = str(channel.get("ChannelLabel", "") or "").strip()
        if label:
            return label
    except Exception:  # a broken code item: the channel keeps its number
        pass
    return f"Channel {index + 1}"


def _unit(channel: Dataset) -> str:
    try:
        units = channel.get("ChannelSensitivityUnitsSequence")
        return str(units[0].get("CodeValue", "") or "").strip() if units else ""
    except Exception:
        return ""


def _read_group(ds: Dataset) -> _Group:
    """Check and decode the first multiplex group (at most :data:`MAX_VALUES` values)."""
    sequence = ds.get("WaveformSequence")
    if not sequence:
        raise WaveformError("no (5400,0100) Waveform Sequence to draw")
    if str(ds.get("SOPClassUID", "") or "") in AUDIO_SOP_CLASSES:
        raise WaveformError("audio waveforms are not drawn")
    item = sequence[0]
    channels = _count(item, "NumberOfWaveformChannels", "003A,0005")
    samples = _count(item, "NumberOfWaveformSamples", "003A,0010")
    bits = _count(item, "WaveformBitsAllocated", "5400,1004")
    interpretation = str(item.get("WaveformSampleInterpretation", "") or "")
    if interpretation in ("MB", "AB"):
        raise WaveformError("audio waveforms (mu-law or A-law samples) are not drawn")
    if (bits, interpretation) not in _SAMPLE_FORMATS:
        raise WaveformError(
            f"(5400,1006) Waveform Sample Interpretation {interpretation or '(missing)'!r} "
            f"with {bits} bits allocated is not a sample format"
        )
    data = item.get("WaveformData")
    if not isinstance(data, bytes):
        raise WaveformError("(5400,1010) Waveform Data is missing from the Waveform Sequence")
    expected = samples * channels * (bits // 8)
    if len(data) < expected:
        raise WaveformError(
            f"(5400,1010) Waveform Data holds {len(data)} bytes, {expected} expected "
            f"({channels} channels x {samples} samples x {bits} bits): it is truncated"
        )
    definitions = list(item.get("ChannelDefinitionSequence") or [])
    if len(definitions) > channels:
        raise WaveformError(
            f"(003A,0200) Channel Definition Sequence has {len(definitions)} items "
            f"for {channels} channels"
        )
    _check_channels(definitions)
    kept = min(samples, max(1, MAX_VALUES // channels))
    source = ds if kept == samples else _trimmed(item, kept, channels * (bits // 8))
    try:
        values = source.waveform_array(0)
    except Exception as exc:  # pydicom's own checks: name them, don't crash the caller
        raise WaveformError(f"the waveform cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if values.shape != (kept, channels):
        raise WaveformError(
            f"the waveform decodes to {values.shape}, not ({kept} samples, {channels} channels)"
        )
    drawn = min(channels, MAX_CHANNELS)
    labels = [
        _label(definitions[i], i) if i < len(definitions) else f"Channel {i + 1}"
        for i in range(drawn)
    ]
    units = [_unit(definitions[i]) if i < len(definitions) else "" for i in range(drawn)]
    frequency = _number(item.get("SamplingFrequency"), None)
    return _Group(
        values=np.nan_to_num(values[:, :drawn].astype(np.float64, copy=False)),
        labels=labels,
        units=units,
        frequency=frequency if frequency is not None and frequency > 0 else None,
        samples=samples,
        channels=channels,
    )


def _trimmed(item: Dataset, kept: int, frame_bytes: int) -> Dataset:
    """A dataset whose only multiplex group is ``item`` cut to its first ``kept`` samples.

    New elements replace the trimmed ones: the caller's dataset is not changed.
    """
    group = Dataset()
    group.update(item)  # shallow: the other elements are shared, not copied
    count = item["NumberOfWaveformSamples"]
    data = item["WaveformData"]
    group[count.tag] = DataElement(count.tag, count.VR, kept)
    group[data.tag] = DataElement(data.tag, data.VR, data.value[: kept * frame_bytes])
    holder = Dataset()
    holder.WaveformSequence = [group]
    return holder


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where things go: the plot's box, each band's height, the font and line widths."""

    left: int
    right: int
    top: int
    bottom: int
    band: float
    font_size: int
    line: int

    @property
    def plot_width(self) -> int:
        return self.right - self.left


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow built without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def _fit_label(draw: ImageDraw.ImageDraw, label: str, room: float, size: int) -> str:
    """The label shortened to ``room`` pixels: its qualifier, 'Lead ', then characters."""
    font = _font(size)
    candidates = [label]
    if "(" in label and label.index("(") > 0:
        candidates.append(label[: label.index("(")].strip())
    if candidates[-1].lower().startswith("lead ") and len(candidates[-1]) > 5:
        candidates.append(candidates[-1][5:])
    for text in candidates:
        if draw.textlength(text, font=font) <= room:
            return text
    text = candidates[-1]
    while len(text) > 1 and draw.textlength(text + "…", font=font) > room:
        text = text[:-1]
    return text + "…" if text != candidates[-1] else text


def _layout(draw: ImageDraw.ImageDraw, group: _Group, width: int, height: int) -> _Layout:
    channels = group.values.shape[1]
    font_size = max(8, min(round(width / 64), 16))
    title = font_size + 6 if height >= 4 * font_size else 0
    band = (height - title) / channels
    label_room = 0
    if band >= font_size:
        widest = max(draw.textlength(label, font=_font(font_size)) for label in group.labels)
        label_room = round(min(widest, width / 5)) + font_size // 2
    return _Layout(
        left=label_room + 2,
        right=width - 2,
        top=title,
        bottom=height,
        band=band,
        font_size=font_size,
        line=max(1, width // 700),
    )


def _columns(values: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Reduce (samples, channels) to what ``columns`` pixel columns can show.

    Returns the points' values (points, channels) and their x offsets in pixels: every
    sample when there are few, else per column its first, lowest, highest and last
    sample, in that order, so that a polyline through them covers the column's range
    and joins the next column.
    """
    samples = values.shape[0]
    if samples <= 2 * columns:
        span = max(samples - 1, 1)
        return values, np.arange(samples, dtype=np.float64) * (columns - 1) / span
    starts = (np.arange(columns, dtype=np.int64) * samples) // columns
    ends = np.append(starts[1:], samples) - 1
    low = np.minimum.reduceat(values, starts, axis=0)
    high = np.maximum.reduceat(values, starts, axis=0)
    stacked = np.stack([values[starts], low, high, values[ends]], axis=1)
    offsets = np.repeat(np.arange(columns, dtype=np.float64), 4) + 0.5
    return stacked.reshape(columns * 4, values.shape[1]), offsets


def _paper_scale(group: _Group, layout: _Layout) -> float | None:
    """Pixels per millimetre of ECG paper, or None when paper scale does not fit."""
    if group.frequency is None or not all(u in _TO_MILLIVOLTS for u in group.units):
        return None
    seconds = group.values.shape[0] / group.frequency
    per_mm = layout.plot_width / (seconds * PAPER_SPEED)
    band_mv = layout.band / (per_mm * PAPER_GAIN)
    low, high = PAPER_BAND_MV
    return per_mm if low <= band_mv <= high else None


def _draw_grid(draw: ImageDraw.ImageDraw, layout: _Layout, per_mm: float) -> None:
    """ECG paper: 1 mm lines when 3 px apart or more, 5 mm lines when 4 px apart or more."""
    for step_mm, colour, minimum in ((1, _MINOR_GRID, 3.0), (5, _MAJOR_GRID, 4.0)):
        step = per_mm * step_mm
        if step < minimum:
            continue
        for x in np.arange(layout.left, layout.right + 0.5, step):
            draw.line([(round(x), layout.top), (round(x), layout.bottom - 1)], fill=colour)
        for y in np.arange(layout.top, layout.bottom, step):
            draw.line([(layout.left, round(y)), (layout.right, round(y))], fill=colour)


def _fitted(group: _Group, reduced: np.ndarray, band: float) -> tuple[np.ndarray, np.ndarray, str]:
    """Pixels per unit and centre value of each channel off paper scale, and the title's words.

    A channel's range is its 0.5..99.5 percentiles (an artefact's spike does not shrink
    the trace), or its whole range when those coincide (a flat line with one peak).
    """
    low, high = np.percentile(reduced, (0.5, 99.5), axis=0)
    flat = high <= low
    low = np.where(flat, reduced.min(axis=0), low)
    high = np.where(flat, reduced.max(axis=0), high)
    moving = high > low
    spans = np.where(moving, high - low, 1.0)  # a flat line: any scale draws it flat
    centres = (low + high) / 2
    room = 0.85 * band
    if len(set(group.units)) == 1:  # one unit: one scale, amplitudes comparable
        widest = float(spans[moving].max()) if moving.any() else 1.0
        unit = group.units[0] or "units"
        return np.full(spans.shape, room / widest), centres, f"same scale ({unit})"
    return room / spans, centres, "each channel fitted"


def _title(group: _Group, scale: str) -> str:
    parts = []
    drawn = group.values.shape[1]
    if drawn < group.channels:
        parts.append(f"{drawn} of {group.channels} channels")
    else:
        parts.append(f"{group.channels} channels")
    if group.frequency is not None:
        shown = group.values.shape[0] / group.frequency
        total = group.samples / group.frequency
        if group.values.shape[0] < group.samples:
            parts.append(f"first {shown:.1f} s of {total:.1f} s")
        else:
            parts.append(f"{total:.1f} s")
        parts.append(f"{group.frequency:g} Hz")
    elif group.values.shape[0] < group.samples:
        parts.append(f"first {group.values.shape[0]} of {group.samples} samples")
    parts.append(scale)
    return " · ".join(parts)


def _plot(group: _Group, width: int, height: int) -> Image.Image:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    layout = _layout(draw, group, width, height)
    columns = max(layout.plot_width, 1)
    per_mm = _paper_scale(group, layout)
    values = group.values
    if per_mm is not None:  # physical units to millivolts, then paper gain
        factors = np.array([_TO_MILLIVOLTS[u] for u in group.units])
        values = values * factors
        _draw_grid(draw, layout, per_mm)
    reduced, offsets = _columns(values, columns)
    if per_mm is not None:
        scales = np.full(values.shape[1], per_mm * PAPER_GAIN)
        centres = np.median(reduced, axis=0)  # the trace's resting level mid-band
        scale_text = f"{PAPER_SPEED:g} mm/s, {PAPER_GAIN:g} mm/mV"
    else:
        scales, centres, scale_text = _fitted(group, reduced, layout.band)
    xs = layout.left + offsets
    font = _font(layout.font_size)
    for channel in range(values.shape[1]):
        top = layout.top + channel * layout.band
        middle = top + layout.band / 2
        if per_mm is None:  # no grid: a line above each band
            draw.line([(0, round(top)), (width, round(top))], fill=_SEPARATOR)
        ys = middle - (reduced[:, channel] - centres[channel]) * scales[channel]
        ys = np.clip(ys, 0, height - 1)
        points = list(zip(xs.tolist(), ys.tolist(), strict=True))
        if len(points) == 1:
            draw.point(points, fill=_TRACE)
        else:
            draw.line(points, fill=_TRACE, width=layout.line, joint="curve")
        if layout.left > 2:
            room = layout.left - 2 - layout.font_size // 2
            text = _fit_label(draw, group.labels[channel], room, layout.font_size)
            draw.text((2, round(middle - layout.font_size / 2)), text, fill=_TEXT, font=font)
    if layout.top:
        draw.text((2, 2), _title(group, scale_text), fill=_TEXT, font=font)
    return image
