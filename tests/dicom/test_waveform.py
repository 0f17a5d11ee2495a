"""Waveforms drawn as a plot: pydicom's 12-lead ECG, sizes, formats, and broken waveforms."""

from __future__ import annotations

import copy
import io
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomlake.dicom.waveform import (
    MAX_CHANNELS,
    MAX_VALUES,
    WaveformError,
    has_waveform,
    render_waveform,
    render_waveform_bytes,
)
from dicomlake.errors import ExtractError
from dicomlake.sample import sample_file

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


@pytest.fixture
def ecg() -> Dataset:
    """pydicom's 12-lead ECG: 10 s at 1000 Hz, leads I..V6 in microvolts."""
    return pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))


def dark(image: Image.Image) -> np.ndarray:
    """Where the traces are: near-black pixels (the grid is pink, the labels blue)."""
    return np.asarray(image.convert("RGB")).max(axis=2) < 60


def bands(image: Image.Image, count: int) -> list[np.ndarray]:
    """The trace area of each channel's band: below the title, right of the labels.

    The plot starts at the first row of the grid (the title is left of the middle).
    """
    pixels = np.asarray(image)
    right = pixels[:, image.width // 2 :]
    top = int(np.argmax((right != 255).any(axis=(1, 2))))
    edges = np.linspace(top, image.height, count + 1).round().astype(int)
    traces = dark(image)[:, image.width // 4 :]
    return [traces[a:b] for a, b in itertools.pairwise(edges)]


def extents(band: np.ndarray) -> tuple[int, int]:
    """How far a band's trace reaches above and below its resting line, in pixels."""
    rows = band.sum(axis=1)
    resting = int(np.argmax(rows))
    drawn = np.flatnonzero(rows)
    return resting - int(drawn.min()), int(drawn.max()) - resting


def test_the_ecg_is_a_waveform_and_a_ct_is_not(ecg: Dataset) -> None:
    assert has_waveform(ecg)
    assert not has_waveform(pydicom.dcmread(sample_file("CT_small.dcm")))
    audio = copy.deepcopy(ecg)
    audio.SOPClassUID = "1.2.840.10008.5.1.4.1.1.9.4.1"  # Basic Voice Audio
    assert not has_waveform(audio)
    with pytest.raises(WaveformError, match="audio"):
        render_waveform(audio)


def test_twelve_leads_each_drawn_in_its_own_band(ecg: Dataset) -> None:
    image = render_waveform(ecg)
    assert image.mode == "RGB" and image.width == 1024
    found = bands(image, len(LEADS))
    for lead, band in zip(LEADS, found, strict=True):
        assert band.sum() > 500, f"lead {lead} has no trace"
    # each lead its own trace: no two bands alike
    rows = min(band.shape[0] for band in found)
    for i in range(len(found)):
        for j in range(i + 1, len(found)):
            assert (found[i][:rows] != found[j][:rows]).mean() > 0.01, (LEADS[i], LEADS[j])
    # the leads' polarity is right: R waves point up in II and V5, down in aVR
    # (aVR sees the heart from the opposite side), and V1 is dominated by its S wave
    up_ii, down_ii = extents(found[LEADS.index("II")])
    up_avr, down_avr = extents(found[LEADS.index("aVR")])
    up_v1, down_v1 = extents(found[LEADS.index("V1")])
    assert up_ii > 2 * down_ii and down_avr > 2 * up_avr and down_v1 > up_v1


def test_ecg_paper_scale_is_25_mm_per_second_and_10_mm_per_mv(ecg: Dataset) -> None:
    """On paper scale 1 mV spans two 5 mm squares: compare a lead's height with the grid."""
    image = render_waveform(ecg)
    pixels = np.asarray(image).astype(int)
    # the grid's 5 mm lines: columns that are mostly the darker pink
    pink = (pixels[..., 0] > 200) & (pixels[..., 1] < 190) & (pixels[..., 2] < 190)
    major = np.flatnonzero(pink.mean(axis=0) > 0.5)
    squares = len(major) - 1
    five_mm = float(major.max() - major.min()) / squares
    # 10 s at 25 mm/s = 250 mm = 50 squares across the trace area, 4 px or more each
    assert squares == 50 and five_mm >= 4
    assert major.min() < image.width // 4 and major.max() >= image.width - 4
    # lead II's R peaks reach about 1.96 mV above 0 (pydicom's array), that is ~19.6 mm
    volts = ecg.waveform_array(0)[:, LEADS.index("II")] / 1000.0
    up, _down = extents(bands(image, 12)[LEADS.index("II")])
    above = float(volts.max() - np.median(volts))
    assert up == pytest.approx(above * 2 * five_mm, rel=0.15)


def test_size_is_honoured(ecg: Dataset) -> None:
    assert render_waveform(ecg, width=640, height=480).size == (640, 480)
    assert render_waveform(ecg, width=300).width == 300
    tall = render_waveform(ecg, width=200, height=900)
    assert tall.size == (200, 900) and dark(tall).any()
    for bad in ({"width": 8}, {"width": 10_000}, {"height": 0}):
        with pytest.raises(ValueError, match="pixels"):
            render_waveform(ecg, **bad)


def test_png_and_jpeg_bytes(ecg: Dataset) -> None:
    png = Image.open(io.BytesIO(render_waveform_bytes(ecg, width=512)))
    assert png.format == "PNG" and png.width == 512 and png.mode == "RGB"
    jpeg = render_waveform_bytes(ecg, media_type="image/jpeg; q=0.9", width=400)
    decoded = Image.open(io.BytesIO(jpeg))
    assert decoded.format == "JPEG" and decoded.width == 400
    with pytest.raises(ValueError, match="image/png or image/jpeg"):
        render_waveform_bytes(ecg, media_type="image/gif")


def broken(ecg: Dataset, change: Callable[[Dataset], Any]) -> Dataset:
    """A copy of the ECG with its first multiplex group changed."""
    copied = copy.deepcopy(ecg)
    change(copied.WaveformSequence[0])
    return copied


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: setattr(g, "WaveformData", g.WaveformData[:1000]), r"\(5400,1010\).*truncated"),
        (lambda g: setattr(g, "NumberOfWaveformSamples", 20000), r"truncated"),
        (lambda g: delattr(g, "WaveformData"), r"\(5400,1010\) Waveform Data is missing"),
        (lambda g: delattr(g, "NumberOfWaveformChannels"), r"\(003A,0005\)"),
        (lambda g: setattr(g, "NumberOfWaveformChannels", 0), r"must be positive"),
        (lambda g: setattr(g, "WaveformSampleInterpretation", "XX"), r"\(5400,1006\)"),
        (lambda g: setattr(g, "WaveformSampleInterpretation", "MB"), r"audio"),
        (lambda g: setattr(g, "NumberOfWaveformChannels", 3), r"12 items for 3 channels"),
        (
            lambda g: setattr(g.ChannelDefinitionSequence[4], "ChannelSensitivity", None),
            r"channel 5: \(003A,0210\)",
        ),
    ],
)
def test_a_malformed_waveform_is_a_clear_error(
    ecg: Dataset, change: Callable[[Dataset], Any], message: str
) -> None:
    with pytest.raises(WaveformError, match=message) as caught:
        render_waveform(broken(ecg, change))
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ExtractError)


def test_no_waveform_sequence_is_a_clear_error() -> None:
    with pytest.raises(WaveformError, match=r"no \(5400,0100\) Waveform Sequence"):
        render_waveform(pydicom.dcmread(sample_file("CT_small.dcm")))


def long_recording(ecg: Dataset, samples: int, channels: int, spike: int) -> Dataset:
    """The ECG's group refilled: ``channels`` flat channels of ``samples``, one spike each."""

    def refill(group: Dataset) -> None:
        data = np.zeros((samples, channels), dtype=np.int16)
        data[spike, :] = 2000
        group.NumberOfWaveformSamples = samples
        group.NumberOfWaveformChannels = channels
        group.WaveformData = data.tobytes()
        first = group.ChannelDefinitionSequence[0]
        group.ChannelDefinitionSequence = [copy.deepcopy(first) for _ in range(channels)]

    return broken(ecg, refill)


def test_a_long_recording_costs_a_bounded_decode(
    ecg: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples, channels = 1_000_000, 30  # 30 million values, ~8 minutes at 1000 Hz
    ds = long_recording(ecg, samples, channels, spike=100_000)  # within the drawn part
    decoded: list[tuple[int, ...]] = []
    original = Dataset.waveform_array

    def counted(self: Dataset, index: int) -> np.ndarray:
        values = original(self, index)
        decoded.append(values.shape)
        return values

    monkeypatch.setattr(Dataset, "waveform_array", counted)
    image = render_waveform(ds, width=800)
    assert decoded and all(np.prod(shape) <= MAX_VALUES for shape in decoded)
    # the caller's dataset is untouched
    group = ds.WaveformSequence[0]
    assert group.NumberOfWaveformSamples == samples
    assert len(group.WaveformData) == samples * channels * 2
    # 24 channels drawn, each with its spike
    found = bands(image, MAX_CHANNELS)
    for band in found:
        up, _down = extents(band)
        assert up > 5


def test_decimation_keeps_a_one_sample_peak(ecg: Dataset) -> None:
    ds = long_recording(ecg, 200_000, 1, spike=123_457)
    del ds.WaveformSequence[0].SamplingFrequency  # no paper scale: fitted to the band
    image = render_waveform(ds, width=400, height=200)
    (band,) = bands(image, 1)
    up, _down = extents(band)
    assert up > 50  # the single sample still reaches far above the flat line
