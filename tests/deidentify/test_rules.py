"""The rules engine: nothing planted survives, outputs stay valid, options do what they say."""

from __future__ import annotations

import datetime as dt
import io
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomlake.deidentify.keys import Key
from dicomlake.deidentify.options import OPTIONS, method_codes, parse_options
from dicomlake.deidentify.rules import IMPLEMENTATION_CLASS_UID, deidentify
from dicomlake.errors import DeidSkipped
from dicomlake.sample import sample_file
from helpers.dicom_bytes import PATIENT, explicit, preamble
from helpers.planted import (
    Planted,
    leaks,
    pseudonyms,
    references,
    uids_in,
    write_planted_archive,
)

KEY = Key(bytes(range(32)))
OTHER_KEY = Key(bytes(range(100, 132)))
ALL_BUT_FULL_DATES = frozenset(OPTIONS) - {"retain-longitudinal-full-dates"}
STUDY_DATE, SERIES_DATE = "20200315", "20200317"


@pytest.fixture(autouse=True)
def strict_pydicom() -> Iterator[None]:
    """Every value the engine writes, and every output read back, must be valid."""
    settings = pydicom.config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom.config.RAISE
    settings.writing_validation_mode = pydicom.config.RAISE
    yield
    settings.reading_validation_mode, settings.writing_validation_mode = saved


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _reread(ds: Dataset) -> Dataset:
    return pydicom.dcmread(io.BytesIO(_bytes(ds)))


def _planted_ct() -> Dataset:
    """CT_small with an identifying value (all holding PLANTED) in every hiding place."""
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.preamble = b"PLANTEDPREAMBLE".ljust(128, b"\0")
    ds.file_meta.SourceApplicationEntityTitle = "PLANTEDAE"
    ds.PatientName = "PLANTEDFAM^PLANTEDGIVEN"
    ds.PatientID = "PLANTEDPID01"
    ds.PatientBirthDate = "19500101"
    ds.PatientAge = "070Y"
    ds.PatientSex = "F"
    ds.PatientWeight = "61.5"
    ds.PatientAddress = "1 PLANTEDADDR Street"
    ds.PatientComments = "PLANTEDCOMMENT"
    ds.ImageComments = "PLANTEDIMAGECOMMENT"
    other = Dataset()
    other.PatientID = "PLANTEDOTHERID"
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
    ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7"
    ds.ReferencedPatientSequence = Sequence([ref])
    request = Dataset()
    request.RequestedProcedureID = "PLANTEDRQID"
    request.ScheduledProcedureStepID = "PLANTEDSPSID"
    request.ScheduledPerformingPhysicianName = "PLANTEDSPPHYS^X"
    request.RequestedProcedureDescription = "PLANTEDRQDESC"
    ds.RequestAttributesSequence = Sequence([request])
    ds.InstitutionName = "PLANTEDINST"
    ds.InstitutionAddress = "PLANTEDINSTADDR"
    ds.ReferringPhysicianName = "PLANTEDREF^DOC"
    ds.PerformingPhysicianName = "PLANTEDPERF^DOC"
    ds.OperatorsName = "PLANTEDOP^ER"
    ds.AccessionNumber = "PLANTEDACC"
    ds.StudyID = "PLANTEDSTUDYID"
    ds.DeviceSerialNumber = "PLANTEDSERIAL"
    ds.StationName = "PLANTEDSTATION"
    ds.StudyDescription = "CT for PLANTEDDESC"
    ds.SeriesDescription = "PLANTEDSERIESDESC"
    ds.StudyDate = STUDY_DATE
    ds.SeriesDate = SERIES_DATE
    ds.AcquisitionDateTime = "20200317101530.25+0100"
    ds.StudyTime = "101500"
    context = Dataset()
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "113100", "DCM"
    concept.CodeMeaning = "test"
    context.ConceptNameCodeSequence = Sequence([concept])
    context.TextValue = "PLANTEDCONTEXTTEXT"
    ds.AcquisitionContextSequence = Sequence([context])
    # an overlay plane (dropped whole) and two private blocks, one holding a safe element
    ds.add_new(0x60000010, "US", 128)
    ds.add_new(0x60000011, "US", 128)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(0x60000022, "LO", "PLANTEDOVERLAY")
    ds.add_new(0x60003000, "OW", b"PLANTEDOVERLAYBITS".ljust(128 * 128 // 8, b"\0"))
    unsafe = ds.private_block(0x0009, "PLANTED CREATOR", create=True)
    unsafe.add_new(0x01, "LO", "PLANTEDPRIVATE")
    inner = Dataset()
    inner.PatientName = "PLANTEDPRIVNAME"
    unsafe.add_new(0x02, "SQ", Sequence([inner]))
    siemens = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    siemens.add_new(0x0C, "IS", "1000")
    siemens.add_new(0x08, "LO", "PLANTEDSIEMENS")
    return ds


def _assert_no_planted(data: bytes) -> None:
    assert b"PLANTED" not in data.upper(), re.findall(rb"(?i)\w*planted\w*", data)[:10]


# --- the planted archive (three patients: CT, RTSTRUCT, SR, SC, MR, US) -------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Planted, list[Path], Path]:
    planted = write_planted_archive(tmp_path_factory.mktemp("planted") / "in")
    out = tmp_path_factory.mktemp("deid")
    outputs = []
    for i, path in enumerate(planted.files):
        target = out / f"{i:03d}.dcm"
        deidentify(pydicom.dcmread(path), KEY, frozenset()).save_as(
            target, enforce_file_format=True
        )
        outputs.append(target)
    return planted, outputs, out


def test_archive_nothing_planted_survives(archive: tuple[Planted, list[Path], Path]) -> None:
    planted, outputs, _ = archive
    found = {path.name: leaks(path.read_bytes(), planted) for path in outputs}
    assert {name: hits for name, hits in found.items() if hits} == {}


def test_archive_references_pseudonyms_and_uids(
    archive: tuple[Planted, list[Path], Path],
) -> None:
    planted, outputs, _ = archive
    resolved, dangling = references(outputs)
    assert dangling == [] and resolved > 0
    assert pseudonyms(outputs, planted) == []
    assert uids_in(outputs) & planted.uids == set()


def test_archive_rereads_strictly(archive: tuple[Planted, list[Path], Path]) -> None:
    for path in archive[1]:
        ds = pydicom.dcmread(path)
        ds.walk(lambda _ds, elem: elem.value)  # decode every value under RAISE
        assert ds.PatientIdentityRemoved == "YES"


def _dciodvfy_errors(path: Path) -> set[str]:
    run = subprocess.run(
        ["dciodvfy", str(path)], capture_output=True, text=True, errors="replace", check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    # values differ between input and output: compare the messages without them
    return {re.sub(r"= <[^>]*>", "", line) for line in lines if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_dciodvfy_finds_no_new_errors(
    archive: tuple[Planted, list[Path], Path], tmp_path: Path
) -> None:
    planted, outputs, _ = archive
    pairs = list(zip(planted.files, outputs, strict=True))
    for i, path in enumerate(planted.files):
        target = tmp_path / f"all_options_{i:03d}.dcm"
        out = deidentify(pydicom.dcmread(path), KEY, ALL_BUT_FULL_DATES)
        out.save_as(target, enforce_file_format=True)
        pairs.append((path, target))
    source = tmp_path / "ct_in.dcm"
    ct = _planted_ct()
    ct.save_as(source, enforce_file_format=True)
    for options in (frozenset(), ALL_BUT_FULL_DATES):
        target = tmp_path / f"ct_out_{len(options)}.dcm"
        deidentify(ct, KEY, options).save_as(target, enforce_file_format=True)
        pairs.append((source, target))
    for before, after in pairs:
        new = _dciodvfy_errors(after) - _dciodvfy_errors(before)
        assert new == set(), f"{before.name}: {sorted(new)}"


# --- one planted CT ---------------------------------------------------------------


def test_basic_profile_removes_every_planted_value() -> None:
    ds = _planted_ct()
    before = _bytes(ds)
    out = deidentify(ds, KEY, frozenset())
    data = _bytes(out)
    _assert_no_planted(data)
    assert STUDY_DATE.encode() not in data and b"19500101" not in data
    assert _bytes(ds) == before  # the input is untouched
    back = _reread(out)
    assert back.PatientID == KEY.patient_id("PLANTEDPID01")
    assert back.PatientName == KEY.patient_name("PLANTEDPID01")
    assert back.preamble == b"\0" * 128
    assert "SourceApplicationEntityTitle" not in back.file_meta
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    for keyword in ("OtherPatientIDsSequence", "ReferencedPatientSequence", "PatientAge"):
        assert keyword not in back
    assert back.StudyDate == "" and back.AccessionNumber == "" and back.PatientSex == ""
    assert back.AcquisitionContextSequence == []
    assert not [elem for elem in back if elem.tag.group in (0x0009, 0x0019, 0x6000)]


def test_uids_map_consistently_and_by_key() -> None:
    ds = _planted_ct()
    out, again = deidentify(ds, KEY, frozenset()), deidentify(ds, KEY, frozenset())
    other = deidentify(ds, OTHER_KEY, frozenset())
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert out[keyword].value == KEY.uid(ds[keyword].value) == again[keyword].value
        assert other[keyword].value != out[keyword].value
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPClassUID == ds.SOPClassUID
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    assert out.FrameOfReferenceUID == KEY.uid(ds.FrameOfReferenceUID)


def test_references_between_files_resolve() -> None:
    image = _planted_ct()
    seg = Dataset()
    seg.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    seg.StudyInstanceUID = image.StudyInstanceUID
    seg.FrameOfReferenceUID = image.FrameOfReferenceUID
    instance = Dataset()
    instance.ReferencedSOPClassUID = image.SOPClassUID
    instance.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    series.ReferencedInstanceSequence = Sequence([instance])
    seg.ReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = image.FrameOfReferenceUID
    frame.ReferencedFrameOfReferenceUID = image.FrameOfReferenceUID
    seg.ReferencedFrameOfReferenceSequence = Sequence([frame])
    image_out = deidentify(image, KEY, frozenset())
    seg_out = deidentify(seg, KEY, frozenset())
    out_series = seg_out.ReferencedSeriesSequence[0]
    out_instance = out_series.ReferencedInstanceSequence[0]
    assert out_instance.ReferencedSOPInstanceUID == image_out.SOPInstanceUID
    assert out_instance.ReferencedSOPClassUID == image.SOPClassUID
    assert out_series.SeriesInstanceUID == image_out.SeriesInstanceUID
    assert seg_out.StudyInstanceUID == image_out.StudyInstanceUID
    out_frame = seg_out.ReferencedFrameOfReferenceSequence[0]
    assert out_frame.FrameOfReferenceUID == image_out.FrameOfReferenceUID
    assert out_frame.ReferencedFrameOfReferenceUID == image_out.FrameOfReferenceUID
    assert seg_out.FrameOfReferenceUID == image_out.FrameOfReferenceUID


def test_well_known_uids_are_kept() -> None:
    ds = _planted_ct()
    ds.FrameOfReferenceUID = "1.2.840.10008.1.4.1.1"  # Talairach: a well-known frame
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "T-1", "99X", "x"
    item.CodingSchemeUID = "1.2.826.0.1.3680043.8.498.7"
    ds.AnatomicRegionSequence = Sequence([item])
    ds.InstanceCreatorUID = "1.2.826.0.1.3680043.8.498.8"
    out = deidentify(ds, KEY, frozenset())
    assert out.FrameOfReferenceUID == "1.2.840.10008.1.4.1.1"
    assert out.AnatomicRegionSequence[0].CodingSchemeUID == "1.2.826.0.1.3680043.8.498.7"
    assert out.InstanceCreatorUID == KEY.uid("1.2.826.0.1.3680043.8.498.8")


# --- options ----------------------------------------------------------------------


def _deid(*options: str) -> Dataset:
    return _reread(deidentify(_planted_ct(), KEY, parse_options(options)))


def test_retain_uids() -> None:
    ds, out = _planted_ct(), _deid("retain-uids")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID"):
        assert out[keyword].value == ds[keyword].value
    assert out.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_retain_device_and_institution_identity() -> None:
    basic = _deid()
    assert basic.DeviceSerialNumber != "PLANTEDSERIAL"
    assert basic.InstitutionName != "PLANTEDINST"
    out = _deid("retain-device-identity", "retain-institution-identity")
    assert out.DeviceSerialNumber == "PLANTEDSERIAL"
    assert out.StationName == "PLANTEDSTATION"
    assert out.InstitutionName == "PLANTEDINST"
    assert out.InstitutionAddress == "PLANTEDINSTADDR"
    assert out.PatientName == KEY.patient_name("PLANTEDPID01")


def test_retain_patient_characteristics() -> None:
    out = _deid("retain-patient-characteristics")
    assert (out.PatientAge, out.PatientSex, out.PatientWeight) == ("070Y", "F", 61.5)
    assert out.PatientBirthDate == ""


def test_retain_full_dates() -> None:
    out = _deid("retain-longitudinal-full-dates")
    assert (out.StudyDate, out.SeriesDate) == (STUDY_DATE, SERIES_DATE)
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert _deid().LongitudinalTemporalInformationModified == "REMOVED"


def test_retain_modified_dates_shifts_by_the_patients_days() -> None:
    out = _deid("retain-longitudinal-modified-dates")
    shift = dt.timedelta(days=KEY.date_shift_days("PLANTEDPID01"))
    study = dt.datetime.strptime(out.StudyDate, "%Y%m%d").date()
    series = dt.datetime.strptime(out.SeriesDate, "%Y%m%d").date()
    assert study == dt.date(2020, 3, 15) + shift
    assert series - study == dt.timedelta(days=2)
    moved = (dt.date(2020, 3, 17) + shift).strftime("%Y%m%d")
    assert out.AcquisitionDateTime == moved + "101530.25+0100"
    assert out.StudyTime == "101500"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    # another patient, another shift
    other = _planted_ct()
    other.PatientID = "PLANTEDPID02"
    if KEY.date_shift_days("PLANTEDPID02") != KEY.date_shift_days("PLANTEDPID01"):
        assert deidentify(other, KEY, parse_options([RETAIN_MODIFIED])).StudyDate != out.StudyDate


RETAIN_MODIFIED = "retain-longitudinal-modified-dates"


def test_clean_descriptors_keeps_the_attributes_empty() -> None:
    assert "StudyDescription" not in _deid()
    out = _deid("clean-descriptors")
    assert out.StudyDescription == "" and out.SeriesDescription == ""
    item = out.RequestAttributesSequence[0]  # cleaned item by item, not removed
    assert "RequestedProcedureDescription" not in item or item.RequestedProcedureDescription == ""
    _assert_no_planted(_bytes(out))


def test_clean_structured_content_cleans_items() -> None:
    out = _deid("clean-structured-content")
    (item,) = out.AcquisitionContextSequence
    assert item.ConceptNameCodeSequence[0].CodeValue == "113100"
    assert item.TextValue == "ANONYMIZED"


def test_retain_safe_private() -> None:
    out = _deid("retain-safe-private")
    block = out.private_block(0x0019, "SIEMENS MR HEADER")
    assert block[0x0C].value == 1000
    assert block.get_tag(0x08) not in out
    assert not [elem for elem in out if elem.tag.group == 0x0009]
    _assert_no_planted(_bytes(out))


def test_clean_graphics_still_drops_overlay_bitmaps() -> None:
    out = _deid("clean-graphics")
    assert not [elem for elem in out if elem.tag.group == 0x6000]


def test_all_options_leave_only_what_they_retain() -> None:
    data = _bytes(deidentify(_planted_ct(), KEY, ALL_BUT_FULL_DATES))
    kept = {m.upper() for m in re.findall(rb"(?i)\w*planted\w*", data)}
    retained = {b"PLANTEDSERIAL", b"PLANTEDSTATION", b"PLANTEDINST", b"PLANTEDINSTADDR"}
    assert kept <= retained


@pytest.mark.parametrize("options", [frozenset(), ALL_BUT_FULL_DATES])
def test_marking(options: frozenset[str]) -> None:
    out = _reread(deidentify(_planted_ct(), KEY, options))
    assert out.PatientIdentityRemoved == "YES"
    codes = [
        (item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning)
        for item in out.DeidentificationMethodCodeSequence
    ]
    assert codes == [tuple(code) for code in method_codes(options)]
    assert codes[0] == ("113100", "DCM", "Basic Application Confidentiality Profile")
    assert len(codes) == 1 + len(options)
    methods = out.DeidentificationMethod
    assert (methods if isinstance(methods, str) else methods[0]).startswith("Basic Application")
    assert "BurnedInAnnotation" not in out


def test_option_codes() -> None:
    assert {name: code.value for name, code in OPTIONS.items()} == {
        "clean-pixel-data": "113101",
        "clean-graphics": "113103",
        "clean-structured-content": "113104",
        "clean-descriptors": "113105",
        "retain-longitudinal-full-dates": "113106",
        "retain-longitudinal-modified-dates": "113107",
        "retain-patient-characteristics": "113108",
        "retain-device-identity": "113109",
        "retain-uids": "113110",
        "retain-safe-private": "113111",
        "retain-institution-identity": "113112",
    }
    assert all(len(code.meaning) <= 64 for code in OPTIONS.values())


def test_parse_options() -> None:
    assert parse_options(["retain-uids", "Clean-Descriptors "]) == {
        "retain-uids",
        "clean-descriptors",
    }
    with pytest.raises(ValueError, match=r"'retain-uid'.*valid: clean-descriptors"):
        parse_options(["retain-uid"])
    with pytest.raises(ValueError, match="exclude each other"):
        parse_options([RETAIN_MODIFIED, "retain-longitudinal-full-dates"])
    with pytest.raises(ValueError):
        deidentify(_planted_ct(), KEY, frozenset({"nonsense"}))


def test_unreadable_date_becomes_a_dummy() -> None:
    ds = _planted_ct()
    # not a date: shifting falls back to a dummy
    ds["SeriesDate"] = pydicom.DataElement(
        0x00080021, "DA", "PLANTED!", validation_mode=pydicom.config.IGNORE
    )
    out = deidentify(ds, KEY, parse_options([RETAIN_MODIFIED]))
    assert out.SeriesDate == "19000101"


def test_pixels_are_untouched() -> None:
    ds = _planted_ct()
    out = deidentify(ds, KEY, frozenset(OPTIONS) - {RETAIN_MODIFIED})
    assert np.array_equal(out.pixel_array, ds.pixel_array)


def test_an_undecodable_value_skips_the_file_without_quoting_it() -> None:
    # an item whose US element holds 3 bytes: pydicom fails only when it is decoded
    bad = struct.pack("<HH", 0x0018, 0x1000) + b"US" + struct.pack("<H", 3) + b"PLANTED!"
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(bad)) + bad
    data = preamble() + PATIENT + explicit(0x0040, 0x0275, b"SQ", item)
    with pytest.raises(DeidSkipped) as caught:
        deidentify(pydicom.dcmread(io.BytesIO(data)), KEY, frozenset({"clean-descriptors"}))
    assert "(0018,1000)" in str(caught.value)
    assert "PLANTED" not in str(caught.value).upper()
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_device_identity_cleans_ae_titles_to_keyed_stand_ins() -> None:
    ds = _planted_ct()
    ds.PerformedStationAETitle = "PLANTEDAET"
    assert "PerformedStationAETitle" not in deidentify(ds, KEY, frozenset())
    out = deidentify(ds, KEY, parse_options(["retain-device-identity"]))
    again = deidentify(ds, KEY, parse_options(["retain-device-identity"]))
    assert re.fullmatch(r"AE[0-9A-F]{14}", out.PerformedStationAETitle)
    assert out.PerformedStationAETitle == again.PerformedStationAETitle
    other = deidentify(ds, OTHER_KEY, parse_options(["retain-device-identity"]))
    assert other.PerformedStationAETitle != out.PerformedStationAETitle


def test_modified_dates_keep_the_time_zone_offset() -> None:
    ds = _planted_ct()
    ds.TimezoneOffsetFromUTC = "+0100"
    assert "TimezoneOffsetFromUTC" not in deidentify(ds, KEY, frozenset())
    out = deidentify(ds, KEY, parse_options([RETAIN_MODIFIED]))
    assert out.TimezoneOffsetFromUTC == "+0100"
