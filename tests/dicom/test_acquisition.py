"""Acquisition attributes from DICOM JSON: classic and enhanced objects, real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.sequence import Sequence

from dicomlake.dicom.acquisition import SOURCES, acquisition_values
from dicomlake.dicom.header import read_header
from dicomlake.schema import ACQUISITION_COLUMNS
from helpers.acquisition_files import enhanced_ct, enhanced_mr, item


def meta_of(path: str | Path) -> dict[str, Any]:
    with open(path, "rb") as fp:
        return read_header(fp, uri=str(path)).meta


def test_every_column_has_a_source() -> None:
    assert list(SOURCES) == list(ACQUISITION_COLUMNS)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "CT_small.dcm",
            {
                "KVP": 120.0,
                "XRayTubeCurrent": [170.0],
                "Exposure": [170.0],
                "ExposureTime": [1601.0],
                "ConvolutionKernel": ["STANDARD"],
                "ContrastBolusAgent": "ISOVUE300/100",
            },
        ),
        (
            "MR_small.dcm",
            {"EchoTime": [240.0], "RepetitionTime": 4000.0, "ImagedNucleus": "H"},
        ),
    ],
    ids=["CT_small", "MR_small"],
)
def test_classic_files_read_as_pydicom_reads_them(name: str, expected: dict[str, Any]) -> None:
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values, warnings = acquisition_values(meta_of(path))
    assert warnings == []
    for column, typ in ACQUISITION_COLUMNS.items():
        keyword = {"PixelSpacing_row_mm": "PixelSpacing", "PixelSpacing_col_mm": "PixelSpacing"}
        element = ds.get(keyword.get(column, column))
        if element is None or element == "":  # absent or empty: null
            assert values[column] is None, column
            continue
        if column == "PixelSpacing_row_mm":
            assert values[column] == float(element[0])
        elif column == "PixelSpacing_col_mm":
            assert values[column] == float(element[1])
        elif str(typ).startswith("list"):
            seq = list(element) if isinstance(element, pydicom.multival.MultiValue) else [element]
            if "double" in str(typ):
                assert values[column] == [float(v) for v in seq], column
            else:
                assert values[column] == [str(v) for v in seq], column
        elif str(typ) == "double":
            assert values[column] == float(element), column
        elif str(typ) == "int64":
            assert values[column] == int(element), column
        else:
            assert values[column] == str(element), column
    for column, value in expected.items():
        assert values[column] == value


def test_enhanced_files_of_pydicom_data() -> None:
    path = get_testdata_file("eCT_Supplemental.dcm")
    assert path is not None, "pydicom-data is installed with the test extras"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    values, _ = acquisition_values(meta_of(path))
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert values["PixelSpacing_row_mm"] == float(measures.PixelSpacing[0])
    assert values["PixelSpacing_col_mm"] == float(measures.PixelSpacing[1])
    assert values["SliceThickness"] == float(measures.SliceThickness)
    assert values["ImageType"] == list(ds.ImageType)
    mr = pydicom.dcmread(get_testdata_file("emri_small.dcm"), stop_before_pixels=True)
    values, _ = acquisition_values(meta_of(get_testdata_file("emri_small.dcm")))
    assert values["MagneticFieldStrength"] == float(mr.MagneticFieldStrength)
    assert values["ImagedNucleus"] == mr.ResonantNucleus
    assert values["SequenceName"] == mr.PulseSequenceName


def test_enhanced_mr_gives_one_value_per_frame(tmp_path: Path) -> None:
    path = enhanced_mr(tmp_path / "emr.dcm", [80.0, 80.0, 95.5], [0.0, 1000.0, 1000.0])
    values, warnings = acquisition_values(meta_of(path))
    assert warnings == []
    assert values["EchoTime"] == [80.0, 80.0, 95.5]
    assert values["DiffusionBValue"] == [0.0, 1000.0, 1000.0]
    assert values["RepetitionTime"] == 4200.0
    assert values["FlipAngle"] == 90.0
    assert values["EchoTrainLength"] == 64
    assert values["PixelBandwidth"] == 1500.0
    assert values["ImagingFrequency"] == 127.7
    assert values["ReceiveCoilName"] == "HEAD32"
    assert values["PixelSpacing_row_mm"] == 0.5
    assert values["PixelSpacing_col_mm"] == 0.75
    assert values["SliceThickness"] == 3.0
    assert (values["ImagedNucleus"], values["SequenceName"]) == ("1H", "DWI_EPI")


def test_enhanced_ct_takes_shared_and_per_frame_macros(tmp_path: Path) -> None:
    values, warnings = acquisition_values(meta_of(enhanced_ct(tmp_path / "ect.dcm")))
    assert warnings == []
    assert values["KVP"] == 100.0
    assert values["FilterType"] == "BODY"
    assert values["ConvolutionKernel"] == ["B30f"]
    assert values["ReconstructionDiameter"] == 350.0
    assert values["DataCollectionDiameter"] == 500.0
    assert values["GantryDetectorTilt"] == 0.0
    assert values["SpiralPitchFactor"] == 0.8
    assert values["XRayTubeCurrent"] == [150.0, 210.5, 180.0]
    assert values["Exposure"] == [75.0, 105.25, 90.0]
    assert values["ExposureTime"] == [500.0] * 3


def test_radiopharmaceutical_sequence() -> None:
    ds_item = item(
        Radiopharmaceutical="Fluorodeoxyglucose",
        RadionuclideTotalDose=370000000,
        RadiopharmaceuticalStartTime="101500",
        RadionuclideCodeSequence=Sequence([item(CodeMeaning="^18^Fluorine")]),
    )
    ds = item(Modality="PT", RadiopharmaceuticalInformationSequence=Sequence([ds_item]))
    values, warnings = acquisition_values(ds.to_json_dict())
    assert warnings == []
    assert values["Radiopharmaceutical"] == "Fluorodeoxyglucose"
    assert values["RadionuclideTotalDose"] == 370000000.0
    assert values["RadiopharmaceuticalStartTime"] == "101500"
    assert values["RadionuclideCodeMeaning"] == "^18^Fluorine"


def test_a_value_that_does_not_convert_is_null_with_a_warning() -> None:
    meta = {
        "00180060": {"vr": "DS", "Value": ["abc"]},  # KVP
        "00180091": {"vr": "IS", "Value": [12.5]},  # EchoTrainLength
        "00181151": {"vr": "IS", "Value": [100, "x"]},  # XRayTubeCurrent
    }
    values, warnings = acquisition_values(meta)
    assert values["KVP"] is None
    assert values["EchoTrainLength"] is None
    assert values["XRayTubeCurrent"] is None
    assert sorted(w.split(":")[0] for w in warnings) == [
        "EchoTrainLength",
        "KVP",
        "XRayTubeCurrent",
    ]
    assert not any("abc" in w for w in warnings)
