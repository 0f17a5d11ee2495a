"""Our display pipeline against an independent one: DCMTK's ``dcm2pnm``.

A sample of pydicom's test files, one or more per photometric interpretation and per
transfer syntax, is drawn by us (``render`` + ``encode_png``, the thumbnail path) and by
``dcm2pnm``; both are scaled to the same size and must correlate (Pearson r > 0.98).

How the reference is drawn:

- ``+Wi 1`` (the file's first VOI window) when the file has *Window Center*/*Width*
  (top level or in its functional groups), ``+Wl 1`` (the first VOI LUT) when it has a
  *VOI LUT Sequence* and no window, else ``+Wm`` (min-max; ours uses the 0.5/99.5
  percentiles, which still correlates highly); ``+F n`` picks the frame we draw (the
  middle one); ``-O`` leaves overlays out (we do not burn overlays into thumbnails);
  color uses dcm2pnm's defaults.
- Where a file has no VOI, the two windows differ (percentiles vs min-max): for the
  NM whole-body files (JPEG-LL, JPGExtended, JPEG2000) a few hot pixels stretch
  dcm2pnm's range, so r is only ~0.988 there. Given our window (``+Ww``), dcm2pnm
  matches those files at r > 0.999: see the test of files without a window.
- Not in the sample: gdcm-US-ALOKA-16 (DCMTK does not support segmented palettes; it is
  checked for colour below) and HTJ2K (no test file and no HTJ2K encoder installed).
- dcm2pnm reads native, deflated, big endian and RLE files itself. JPEG files are
  decompressed with ``dcmdjpeg`` and JPEG-LS files with ``dcmdjpls`` first. DCMTK has no
  JPEG 2000 decoder: those files are decompressed to explicit VR little endian with
  pydicom's pylibjpeg-openjpeg plugin (``ds.decompress(decoding_plugin='pylibjpeg')``).
  Our own path decodes them with GDCM or, for large frames, Pillow's openjpeg at a
  reduced resolution, so the two sides do not share a decoder call.
"""

from __future__ import annotations

import io
import shutil
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from dicomlake.dicom.drawing import encode_png
from dicomlake.dicom.pixels import ROBUST_PERCENTILES, number_of_frames, render
from dicomlake.sample import sample_file

pytestmark = pytest.mark.dcmtk

DCM2PNM = shutil.which("dcm2pnm")
needs_dcmtk = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("dcm2pnm", "dcmdjpeg", "dcmdjpls")),
    reason="DCMTK's dcm2pnm, dcmdjpeg or dcmdjpls not found: apt-get install -y dcmtk",
)
SIZE = 256
MIN_CORRELATION = 0.98

#: The sample drawn by both sides: file -> what it covers.
SAMPLED = {
    "CT_small.dcm": "explicit LE, MONOCHROME2 signed, rescale, no window (min-max)",
    "MR_small.dcm": "explicit LE, MONOCHROME2, window",
    "MR_small_implicit.dcm": "implicit LE",
    "MR_small_bigendian.dcm": "explicit big endian",
    "image_dfl.dcm": "deflated explicit LE",
    "MR_small_RLE.dcm": "RLE lossless, grayscale",
    "emri_small.dcm": "multi-frame grayscale (middle frame)",
    "rtdose.dcm": "implicit LE, 32-bit multi-frame RT dose",
    "liver.dcm": "1-bit segmentation, multi-frame",
    "eCT_Supplemental.dcm": "enhanced CT: rescale and window in functional groups",
    "MR2_UNCI.dcm": "12-bit MR, rescale + window",
    "RG3_UNCI.dcm": "MONOCHROME1, uncompressed, window",
    "vlut_04.dcm": "VOI LUT Sequence",
    "mlut_18.dcm": "Modality LUT Sequence",
    "JPGExtended.dcm": "JPEG extended 12-bit",
    "JPEG-LL.dcm": "JPEG lossless SV1, 16-bit",
    "JPGLosslessP14SV1_1s_1f_8b.dcm": "JPEG lossless SV1, 8-bit",
    "SC_rgb_jpeg_gdcm.dcm": "JPEG lossless SV1, RGB",
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS lossless",
    "JPEGLSNearLossless_16.dcm": "JPEG-LS near-lossless, 16-bit",
    "SC_rgb_jls_lossy_line.dcm": "JPEG-LS near-lossless, RGB",
    "MR2_J2KR.dcm": "JPEG 2000 lossless",
    "emri_small_jpeg_2k_lossless.dcm": "JPEG 2000 lossless, multi-frame",
    "J2K_pixelrep_mismatch.dcm": "JPEG 2000, unsigned codestream in a signed dataset",
    "GDCMJ2K_TextGBR.dcm": "JPEG 2000 in a JP2 box, YBR_RCT",
    "RG3_J2KI.dcm": "JPEG 2000 lossy, MONOCHROME1",
    "MR2_J2KI.dcm": "JPEG 2000 lossy",
    "RG1_J2KR.dcm": "JPEG 2000, MONOCHROME1, reduced-resolution decode",
    "693_J2KR.dcm": "JPEG 2000, signed CT",
    "JPEG2000.dcm": "JPEG 2000 lossy, signed NM, reduced-resolution decode",
    "US1_J2KR.dcm": "JPEG 2000 lossless, YBR_RCT",
    "US1_J2KI.dcm": "JPEG 2000 lossy, YBR_ICT",
    "SC_rgb_jpeg_dcmtk.dcm": "JPEG baseline, YBR_FULL",
    "color3d_jpeg_baseline.dcm": "JPEG baseline, YBR_FULL_422, multi-frame",
    "examples_ybr_color.dcm": "JPEG baseline, YBR_FULL_422",
    "SC_rgb_dcmtk_+eb+cr.dcm": "JPEG baseline, RGB (no color transform)",
    "SC_jpeg_no_color_transform.dcm": "JPEG baseline, RGB, no APP14 marker",
    "MR-SIEMENS-DICOM-WithOverlays.dcm": "MR with overlays (left out on both sides)",
    "JPEGLSNearLossless_08.dcm": "JPEG-LS near-lossless, 8-bit",
    "bad_sequence.dcm": "JPEG lossless, CT with a malformed sequence",
    "US1_UNCI.dcm": "RGB, uncompressed",
    "ExplVR_BigEnd.dcm": "RGB, big endian",
    "SC_rgb_16bit.dcm": "RGB, 16 bits per sample",
    "SC_rgb_rle_2frame.dcm": "RGB, RLE, multi-frame",
    "SC_ybr_full_uncompressed.dcm": "YBR_FULL, uncompressed",
    "SC_ybr_full_422_uncompressed.dcm": "YBR_FULL_422, uncompressed",
    "color-pl.dcm": "RGB, planar configuration 1",
    "OT-PAL-8-face.dcm": "PALETTE COLOR, 8-bit, no file meta",
    "OBXXXX1A_rle.dcm": "PALETTE COLOR, RLE",
    "examples_palette.dcm": "PALETTE COLOR",
}


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def ours(path: Path, frame: int) -> Image.Image:
    with path.open("rb") as fp:
        display = render(fp, frame=frame, max_side=SIZE)
    data, _width, _height = encode_png(display, SIZE)
    return Image.open(io.BytesIO(data))


def voi_options(ds: pydicom.Dataset, frame: int) -> list[str]:
    """dcm2pnm's VOI options for ``frame`` of ``ds``.

    DCMTK applies the rescale of an enhanced image's functional groups but does not
    see its *Frame VOI LUT Sequence*, so that window is passed explicitly (``+Ww``).
    """
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return ["+Wi", "1"]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = [*(ds.get("SharedFunctionalGroupsSequence") or []), *per_frame[frame : frame + 1]]
    for item in reversed(groups):  # the per-frame item wins
        if "FrameVOILUTSequence" in item:
            voi = item.FrameVOILUTSequence[0]
            center, width = (
                float(np.ravel(voi[k].value)[0]) for k in ("WindowCenter", "WindowWidth")
            )
            return ["+Ww", f"{center:g}", f"{width:g}"]
    if "VOILUTSequence" in ds:
        return ["+Wl", "1"]
    return ["+Wm"]


def dcmtk_input(path: Path, work: Path) -> Path:
    """A file dcm2pnm can read: JPEG/JPEG-LS through DCMTK, J2K through pydicom."""
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    target = work / f"{path.name}.native.dcm"
    if tsyntax in JPEGTransferSyntaxes:
        subprocess.run(["dcmdjpeg", str(path), str(target)], check=True, capture_output=True)
    elif tsyntax in JPEGLSTransferSyntaxes:
        subprocess.run(["dcmdjpls", str(path), str(target)], check=True, capture_output=True)
    elif tsyntax in JPEG2000TransferSyntaxes:
        full = pydicom.dcmread(path)
        full.decompress(decoding_plugin="pylibjpeg")
        full.save_as(target, enforce_file_format=True)
        assert full.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    else:
        return path
    return target


def dcm2pnm(path: Path, frame: int, work: Path, voi: list[str] | None = None) -> Image.Image:
    """DCMTK's rendering of frame ``frame`` (0-based) of ``path``."""
    source = dcmtk_input(path, work)
    ds = pydicom.dcmread(source, force=True, stop_before_pixels=True)
    voi = voi or voi_options(ds, frame)
    out = work / f"{path.name}.{'_'.join(voi)}.png"
    command = [DCM2PNM, "-O", *voi, "+F", str(frame + 1), "+on", str(source), str(out)]
    subprocess.run(command, check=True, capture_output=True)
    return Image.open(out)


def compare(
    name: str, work: Path, voi: list[str] | None = None
) -> tuple[float, Image.Image, Image.Image]:
    """(correlation, ours, dcm2pnm's scaled to our size) for one sampled file."""
    path = sample_file(name)
    frame = number_of_frames(pydicom.dcmread(path, force=True, stop_before_pixels=True)) // 2
    mine = ours(path, frame)
    theirs = dcm2pnm(path, frame, work, voi)
    mode = "RGB" if "RGB" in (mine.mode, theirs.mode) else "L"
    mine, theirs = mine.convert(mode), theirs.convert(mode)
    theirs = theirs.resize(mine.size, Image.Resampling.LANCZOS)
    return correlation(np.asarray(mine), np.asarray(theirs)), mine, theirs


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float | Exception]:
    """Correlation with dcm2pnm for every sampled file (drawn once per module)."""
    work = tmp_path_factory.mktemp("dcmtk")
    results: dict[str, float | Exception] = {}
    for name in SAMPLED:
        try:
            results[name] = compare(name, work)[0]
        except Exception as exc:  # reported by that file's own test
            results[name] = exc
    return results


@needs_dcmtk
@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_matches_dcm2pnm(reference: dict[str, float | Exception], name: str) -> None:
    r = reference[name]
    if isinstance(r, Exception):
        raise r
    assert r > MIN_CORRELATION, f"{name} ({SAMPLED[name]}): r={r:.4f}"


def without_voi(name: str) -> bool:
    """A grayscale file with neither window nor VOI LUT (dcm2pnm draws it with +Wm)."""
    ds = pydicom.dcmread(sample_file(name), force=True, stop_before_pixels=True)
    if ds.get("SamplesPerPixel", 1) != 1 or ds.PhotometricInterpretation == "PALETTE COLOR":
        return False
    return voi_options(ds, number_of_frames(ds) // 2) == ["+Wm"]


def percentile_window(name: str) -> list[str]:
    """dcm2pnm's ``+Ww`` for the window ours computes when a grayscale file has none."""
    ds = pydicom.dcmread(sample_file(name), force=True)
    frames = ds.pixel_array
    frame = frames[number_of_frames(ds) // 2] if number_of_frames(ds) > 1 else frames
    low, high = np.percentile(apply_modality_lut(frame, ds), ROBUST_PERCENTILES)
    width = high - low + 1  # LINEAR maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] to 0..255
    return ["+Ww", f"{low + width / 2:.6f}", f"{width:.6f}"]


NO_WINDOW = [name for name in sorted(SAMPLED) if without_voi(name)]


@needs_dcmtk
@pytest.mark.parametrize("name", NO_WINDOW)
def test_without_a_window_dcm2pnm_given_our_robust_window_matches(
    name: str, tmp_path: Path
) -> None:
    """Files without VOI: the only difference from dcm2pnm's +Wm is the window itself."""
    window = percentile_window(name)
    r = compare(name, tmp_path, window)[0]
    assert r > 0.995, f"{name}: r={r:.4f} with {window}"


@needs_dcmtk
def test_reference_summary(reference: dict[str, float | Exception]) -> None:
    values = [r for r in reference.values() if isinstance(r, float)]
    print(
        f"\ncorrelation with dcm2pnm over {len(values)} files: "
        f"min {min(values):.4f}, median {statistics.median(values):.4f}"
    )
    assert statistics.median(values) > 0.99


# --- the pipeline's stages, each checked on real files against the standard's formula ---


def draw_full(path: Path, frame: int = 0) -> np.ndarray:
    """Our display values at full resolution (one display pixel per stored pixel)."""
    with path.open("rb") as fp:
        return render(fp, frame=frame).pixels


def saved(ds: pydicom.Dataset, folder: Path, name: str) -> Path:
    path = folder / name
    ds.save_as(path)
    return path


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, LINEAR, to 0..255."""
    unit = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    return np.round(unit * 255)


def test_monochrome1_is_drawn_inverted() -> None:
    for name, sign in (("RG3_UNCI.dcm", -1), ("MR_small.dcm", 1), ("6154", -1)):
        path = sample_file(name)
        stored = pydicom.dcmread(path).pixel_array
        r = correlation(draw_full(path), stored)
        assert sign * r > 0.9, f"{name}: correlation with the stored values {r:.3f}"


def test_monochrome1_and_inverse_presentation_lut_invert_the_same_picture(tmp_path: Path) -> None:
    source = sample_file("MR_small.dcm")
    plain = draw_full(source).astype(int)
    mono1 = pydicom.dcmread(source)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    inverse = pydicom.dcmread(source)
    inverse.PresentationLUTShape = "INVERSE"
    for ds, name in ((mono1, "mono1.dcm"), (inverse, "inverse.dcm")):
        drawn = draw_full(saved(ds, tmp_path, name)).astype(int)
        assert np.abs(drawn - (255 - plain)).max() <= 1


def test_lung_and_soft_tissue_windows_of_one_ct(tmp_path: Path) -> None:
    source = pydicom.dcmread(sample_file("CT_small.dcm"))
    hounsfield = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
    drawn = {}
    for center, width in ((-600, 1500), (40, 400)):
        ds = pydicom.dcmread(sample_file("CT_small.dcm"))
        ds.WindowCenter, ds.WindowWidth = center, width
        drawn[center] = draw_full(saved(ds, tmp_path, f"ct_{center}.dcm")).astype(int)
        expected = linear_window(hounsfield, center, width)
        assert np.abs(drawn[center] - expected).max() <= 1, (center, width)
    lung, soft = drawn[-600], drawn[40]
    assert np.abs(lung - soft).mean() > 30
    soft_tissue = (hounsfield > 0) & (hounsfield < 80)
    assert lung[soft_tissue].mean() > 200  # near white in a lung window
    assert 60 < soft[soft_tissue].mean() < 200  # mid grey in a soft-tissue window


def test_sigmoid_voi_function_is_different_and_monotonic(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ds.WindowCenter, ds.WindowWidth = 40, 400
    linear = draw_full(saved(ds, tmp_path, "linear.dcm")).astype(int)
    ds.VOILUTFunction = "SIGMOID"
    sigmoid = draw_full(saved(ds, tmp_path, "sigmoid.dcm")).astype(int)
    assert np.abs(sigmoid - linear).mean() > 3
    order = np.argsort(hounsfield, axis=None, kind="stable")
    assert np.all(np.diff(sigmoid.ravel()[order]) >= 0), "SIGMOID must not reverse any two values"
    expected = np.round(255 / (1 + np.exp(-4 * (hounsfield - 40) / 400)))  # PS3.3 C.11.2.1.3.1
    assert np.abs(sigmoid - expected).max() <= 1


def test_voi_lut_sequence_is_applied() -> None:
    path = sample_file("vlut_04.dcm")
    ds = pydicom.dcmread(path)
    item = ds.VOILUTSequence[0]
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    lut = np.asarray(item.LUTData, dtype=np.float64)
    index = np.clip(ds.pixel_array.astype(int) - first, 0, entries - 1)
    expected = np.round(lut[index] / (2**bits - 1) * 255)
    assert np.abs(draw_full(path) - expected).max() <= 1


def test_modality_lut_sequence_is_applied(tmp_path: Path) -> None:
    path = sample_file("mlut_18.dcm")
    plain = draw_full(path)
    ds = pydicom.dcmread(path)
    item = ds.ModalityLUTSequence[0]
    item.LUTData = list(reversed(item.LUTData))  # a decreasing LUT: the picture inverts
    reversed_lut = draw_full(saved(ds, tmp_path, "reversed.dcm"))
    assert correlation(plain, reversed_lut) < -0.99


def test_windows_of_an_enhanced_ct_come_from_its_functional_groups() -> None:
    path = sample_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    rescale = shared.PixelValueTransformationSequence[0]
    voi = shared.FrameVOILUTSequence[0]
    hounsfield = ds.pixel_array[1] * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept)
    expected = linear_window(hounsfield, float(voi.WindowCenter), float(voi.WindowWidth))
    assert np.abs(draw_full(path, frame=1) - expected).max() <= 1


def test_palette_color_comes_out_rgb() -> None:
    for name in ("OT-PAL-8-face.dcm", "gdcm-US-ALOKA-16.dcm"):
        with sample_file(name).open("rb") as fp:
            display = render(fp)
        pixels = display.pixels.astype(int)
        assert display.mode == "RGB" and pixels.ndim == 3 and pixels.shape[-1] == 3
        assert np.ptp(pixels, axis=-1).max() > 100, name  # saturated colors, not grey
        assert pixels.max() > 200, name  # 16-bit LUT entries scaled to 8 bits, not clipped


def bar_colors(name: str) -> np.ndarray:
    """Median color of each of SC_rgb's ten horizontal bars (10 rows each)."""
    pixels = draw_full(sample_file(name)).astype(int)
    return np.array(
        [
            np.median(pixels[10 * i + 3 : 10 * i + 7, 10:90].reshape(-1, 3), axis=0)
            for i in range(10)
        ]
    )


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline, YBR_FULL_422
        "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG baseline, RGB without color transform
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_ybr_full_uncompressed.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_16bit.dcm",
        "SC_rgb_expb_32bit.dcm",
        "SC_rgb_jls_lossy_line.dcm",
        "SC_rgb_gdcm_KY.dcm",  # JPEG 2000
    ],
)
def test_color_encodings_give_the_colors_of_the_rgb_original(name: str) -> None:
    original = bar_colors("SC_rgb.dcm")
    assert original[0].tolist() == [255, 0, 0] and original[4].tolist() == [0, 0, 255]
    assert np.abs(bar_colors(name) - original).max() <= 8


def test_planar_configuration_is_honoured() -> None:
    by_plane = draw_full(sample_file("color-pl.dcm")).astype(int)
    by_pixel = draw_full(sample_file("color-px.dcm")).astype(int)
    assert by_plane.shape == by_pixel.shape and np.abs(by_plane - by_pixel).max() <= 1
