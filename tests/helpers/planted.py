"""A planted-data archive: real DICOM files with identifying values in every hiding place.

De-identification is judged by what survives it, so every value that PS3.15's Basic
Profile must remove or replace is planted as a token no real file holds
(``PLANTED-<where>-<patient>``, 15 characters so that it fits even an SH value), each
place with its own token: a token found in the output says where the tool missed.
The archive holds three patients (one name with a Latin-1 letter, one with a UTF-8
one), two studies each: a CT, an RT Structure Set referencing it, a Comprehensive SR
naming people in its text, a secondary capture with the name drawn into its pixels, an
MR and an ultrasound-like RGB image with a burned-in banner. File and folder names
hold the patient's name too. ``copies`` repeats the archive with fresh UIDs (same
patients, new studies), for benchmarks.

``leaks`` finds planted strings in bytes or names; ``references``, ``pseudonyms`` and
``burned_in_text`` check what a byte scan cannot: references that still resolve, one
pseudonym per patient, text left in pixels.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    ComprehensiveSRStorage,
    ExplicitVRLittleEndian,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

from dicomlake.sample import sample_file

#: Categories of planted values, in the order a report lists them.
CATEGORIES = (
    "patient name",
    "patient ID",
    "other patient IDs and names",
    "names in nested sequences",
    "birth date",
    "study dates",
    "patient address",
    "patient telephone",
    "patient comments",
    "image comments",
    "institution",
    "physicians",
    "operators",
    "accession number",
    "study ID",
    "device serial number",
    "station name",
    "descriptions",
    "private tags",
    "SR text and observers",
)

#: The rows of the text band drawn into the secondary capture and ultrasound pixels.
TEXT_ROWS = 48
#: (rows, columns) of the two images with burned-in text: no other planted image has them.
BURNED_IN_SHAPES = ((256, 320), (240, 320))

#: Patient key, character set, family and given name tokens, birth date, study date.
_PATIENTS = (
    ("A7Q", "ISO_IR 100", "PLANTED-PNF-A7Q", "PLANTED-PNG-A7Q", "19230917", "20170613"),
    ("B2K", "ISO_IR 100", "PLANTED-PNF-B2K", "PLANTED-PNG-BÉK", "19310205", "20180321"),
    ("C9X", "ISO_IR 192", "PLANTED-PNF-C9X", "PLANTED-PNG-CÜX", "19470611", "20191104"),
)
#: Private creator of the planted private block (not itself identifying, so not planted).
PRIVATE_CREATOR = "DICOMLAKE PLANTED"
_DETACHED_STUDY = "1.2.840.10008.3.1.2.3.1"
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class PlantedPatient:
    """One planted patient: the values a pseudonym replaces, and where they went."""

    key: str
    name: str
    patient_id: str
    birth_date: str
    files: tuple[Path, ...]
    study_uids: tuple[str, ...]


@dataclass
class Planted:
    """What ``write_planted_archive`` wrote: the strings to look for and the files."""

    folder: Path
    #: every planted string: tokens, whole PN values and their other written forms
    strings: list[str]
    #: planted string -> one of ``CATEGORIES``
    categories: dict[str, str]
    files: list[Path]
    patients: list[PlantedPatient]
    #: the files with text drawn into their pixels (see ``burned_in_text``)
    burned_in: list[Path]
    #: every UID the archive's files hold (a profile that replaces UIDs leaves none)
    uids: frozenset[str] = field(default_factory=frozenset)

    @cached_property
    def needles(self) -> list[tuple[str, tuple[bytes, ...]]]:
        """Each string as upper-cased bytes in every encoding a DICOM text may use."""
        out = []
        for text in self.strings:
            forms = {
                variant.encode(encoding, errors="ignore").upper()
                for variant in (text.upper(), text.lower())
                for encoding in ("utf-8", "latin-1")
            }
            out.append((text, tuple(sorted(forms))))
        return out

    def categories_of(self, found: Iterable[str]) -> set[str]:
        """The categories of the planted strings in ``found``."""
        return {self.categories[text] for text in found}


# --- writing ----------------------------------------------------------------------


def _token(where: str, key: str) -> str:
    return f"PLANTED-{where}-{key}"


class _Values:
    """A patient's planted values, and the strings to search for, by category."""

    def __init__(self, key: str, charset: str, family: str, given: str, born: str, day: str):
        self.key, self.charset, self.born, self.day = key, charset, born, day
        self.name = f"{family}^{given}"
        self.planted: dict[str, str] = {}
        self.add("patient name", family, given)
        self.add("birth date", born)
        self.add("study dates", day)

    def add(self, category: str, *texts: str) -> None:
        for text in texts:
            self.planted[text] = category
        if len(texts) == 2:  # a person's name: also its PN value and the free-text forms
            family, given = texts
            for form in (f"{family}^{given}", f"{given} {family}", f"{family}, {given}"):
                self.planted[form] = category

    def token(self, category: str, where: str) -> str:
        text = _token(where, self.key)
        self.add(category, text)
        return text

    def planted_id(self) -> str:
        """The PatientID, also drawn into the pixels."""
        return _token("PID", self.key)

    def person(self, category: str, where: str) -> str:
        family, given = _token(where + "F", self.key), _token(where + "G", self.key)
        self.add(category, family, given)
        return f"{family}^{given}"


def _uid(*parts: object) -> str:
    """A UID that is the same for the same parts: archives repeat run to run."""
    return str(generate_uid(_UID_PREFIX, entropy_srcs=[str(p) for p in parts]))


def _code(value: str, scheme: str, meaning: str) -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return Sequence([item])


def _plant_common(ds: Dataset, v: _Values, study: str, description: str) -> None:
    """The patient, study, series and equipment values every planted file carries."""
    ds.SpecificCharacterSet = v.charset
    ds.PatientName = v.name
    ds.PatientID = v.token("patient ID", "PID")
    ds.PatientBirthDate = v.born
    ds.PatientSex = "O"
    ds.PatientAddress = f"12 {v.token('patient address', 'ADR')} Street, Springfield"
    ds.PatientTelephoneNumbers = v.token("patient telephone", "TEL")
    ds.PatientComments = f"Spouse {v.person('patient comments', 'CM')} calls after 6pm"
    ds.AdditionalPatientHistory = f"Seen before as {v.token('patient comments', 'HIS')}"
    ds.OtherPatientNames = v.person("other patient IDs and names", "ON")
    other = Dataset()
    other.PatientID = v.token("other patient IDs and names", "OID")
    other.IssuerOfPatientID = v.token("other patient IDs and names", "ISS")
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.OtherPatientIDs = v.token("other patient IDs and names", "OPI")
    referenced = Dataset()
    referenced.PatientName = v.person("names in nested sequences", "RP")
    referenced.PatientID = v.token("names in nested sequences", "RPI")
    ds.ReferencedPatientSequence = Sequence([referenced])
    request = Dataset()
    request.RequestedProcedureID = v.token("names in nested sequences", "RQI")
    request.ScheduledProcedureStepID = v.token("names in nested sequences", "SPI")
    request.ScheduledPerformingPhysicianName = v.person("names in nested sequences", "SP")
    request.RequestedProcedureDescription = f"for {v.token('names in nested sequences', 'RQD')}"
    ds.RequestAttributesSequence = Sequence([request])
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        ds[keyword] = pydicom.DataElement(keyword, "DA", v.day)
    ds.InstanceCreationDate = v.day
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.ReferringPhysicianName = v.person("physicians", "RF")
    ds.PerformingPhysicianName = v.person("physicians", "PF")
    ds.NameOfPhysiciansReadingStudy = v.person("physicians", "RD")
    ds.PhysiciansOfRecord = v.person("physicians", "PO")
    ds.OperatorsName = v.person("operators", "OP")
    ds.AccessionNumber = v.token("accession number", "ACC")
    ds.StudyID = v.token("study ID", "SID")
    ds.InstitutionName = f"{v.token('institution', 'INS')} Hospital"
    ds.InstitutionAddress = f"1 {v.token('institution', 'IAD')} Road"
    ds.InstitutionalDepartmentName = v.token("institution", "DEP")
    ds.StationName = v.token("station name", "STN")
    ds.DeviceSerialNumber = v.token("device serial number", "DSN")
    ds.StudyDescription = f"{description} for {v.person('descriptions', 'DS').replace('^', ' ')}"
    ds.SeriesDescription = f"follow-up of {v.token('descriptions', 'SDN')}"
    ds.StudyInstanceUID = study
    block = ds.private_block(0x0013, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", v.token("private tags", "PRV"))
    block.add_new(0x11, "LT", f"patient {v.person('private tags', 'PT').replace('^', ' ')}")
    inner = Dataset()
    inner.PatientName = v.person("private tags", "PS")
    block.add_new(0x12, "SQ", Sequence([inner]))


def _finish(ds: Dataset, sop_class: str, sop: str, series: str, modality: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop
    ds.SeriesInstanceUID = series
    ds.Modality = modality
    ds.SeriesNumber = ds.SeriesNumber if "SeriesNumber" in ds else 1
    ds.InstanceNumber = 1


#: A font with the Latin-1 letters of the planted names, where the system has it.
_FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    if _FONT.exists():
        return ImageFont.truetype(str(_FONT), size)
    return ImageFont.load_default(size=size)


def _text_pixels(shape: tuple[int, int], lines: list[str], rgb: bool) -> np.ndarray:
    """A dim image with ``lines`` drawn in white over its top ``TEXT_ROWS`` rows."""
    rows, cols = shape
    y, x = np.mgrid[0:rows, 0:cols]
    if rgb:  # an ultrasound-like fan of speckle under a text banner
        rng = np.random.default_rng(rows)
        angle = np.arctan2(x - cols / 2, y + 10)
        radius = np.hypot(x - cols / 2, y + 10)
        fan = (np.abs(angle) < 0.7) & (radius > 60) & (radius < rows)
        gray = (fan * rng.uniform(20, 170, (rows, cols))).astype(np.uint8)
        base = np.stack([gray, gray, (gray * 0.9).astype(np.uint8)], axis=-1)
    else:
        base = ((x + y) * 180 // (rows + cols)).astype(np.uint8)
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    font = _font(11)
    for i, line in enumerate(lines):
        draw.text((4, 3 + 14 * i), line, fill=(255, 255, 255) if rgb else 255, font=font)
    return np.asarray(image)


def _pixel_module(ds: Dataset, pixels: np.ndarray) -> None:
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    ds.PhotometricInterpretation = "RGB" if pixels.ndim == 3 else "MONOCHROME2"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()


class _Writer:
    """Builds one copy of one patient's two studies."""

    def __init__(self, v: _Values, copy: int, folder: Path, sources: dict[str, bytes]):
        self.v, self.copy, self.sources = v, copy, sources
        self.folder = folder
        self.uids: set[str] = set()
        self.files: list[Path] = []
        self.burned_in: list[Path] = []
        self.studies = (self.uid("study", 1), self.uid("study", 2))

    def uid(self, *parts: object) -> str:
        value = _uid(self.v.key, self.copy, *parts)
        self.uids.add(value)
        return value

    def save(self, ds: Dataset, kind: str) -> Path:
        name = self.v.name
        path = self.folder / name.replace("^", "_") / f"{name}_{kind}_{self.copy:04d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        self.files.append(path)
        return path

    def sample(self, name: str) -> Dataset:
        return pydicom.dcmread(io.BytesIO(self.sources[name]))

    def write(self) -> None:
        v = self.v
        ct = self.sample("CT_small.dcm")
        _plant_common(ct, v, self.studies[0], "CT chest")
        _finish(ct, ct.SOPClassUID, self.uid("ct"), self.uid("ct series"), "CT")
        ct.FrameOfReferenceUID = self.uid("ct frame")
        ct.ImageComments = f"{v.token('image comments', 'IMC')} moved during the scan"
        self.save(ct, "CT")
        self.save(self.rtstruct(ct), "RTSTRUCT")
        self.save(self.sr(ct), "SR")
        self.burned_in.append(self.save(self.capture(), "SC"))

        mr = self.sample("MR_small.dcm")
        _plant_common(mr, v, self.studies[1], "MR brain")
        _finish(mr, mr.SOPClassUID, self.uid("mr"), self.uid("mr series"), "MR")
        mr.FrameOfReferenceUID = self.uid("mr frame")
        mr.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]  # MR_small's says secondary capture
        mr.ImageComments = f"{v.token('image comments', 'IMM')} asked for a copy"
        self.save(mr, "MR")
        self.burned_in.append(self.save(self.ultrasound(), "US"))

    def rtstruct(self, ct: Dataset) -> Dataset:
        ds = Dataset()
        _plant_common(ds, self.v, self.studies[0], "CT chest")
        _finish(ds, RTStructureSetStorage, self.uid("rt"), self.uid("rt series"), "RTSTRUCT")
        ds.SeriesNumber = 2
        ds.StructureSetLabel = "BODY"
        ds.StructureSetDate, ds.StructureSetTime = self.v.day, "103000"
        image = Dataset()
        image.ReferencedSOPClassUID = ct.SOPClassUID
        image.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        series = Dataset()
        series.SeriesInstanceUID = ct.SeriesInstanceUID
        series.ContourImageSequence = Sequence([image])
        study = Dataset()
        study.ReferencedSOPClassUID = _DETACHED_STUDY
        study.ReferencedSOPInstanceUID = ct.StudyInstanceUID
        study.RTReferencedSeriesSequence = Sequence([series])
        frame = Dataset()
        frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
        frame.RTReferencedStudySequence = Sequence([study])
        ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = 1, ct.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = "BODY", "MANUAL"
        ds.StructureSetROISequence = Sequence([roi])
        contour_image = Dataset()
        contour_image.ReferencedSOPClassUID = ct.SOPClassUID
        contour_image.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        contour = Dataset()
        contour.ContourImageSequence = Sequence([contour_image])
        contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", 4
        z = float(ct.ImagePositionPatient[2])
        contour.ContourData = [-50, -50, z, 50, -50, z, 50, 50, z, -50, 50, z]
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = 1, [255, 0, 0]
        roi_contour.ContourSequence = Sequence([contour])
        ds.ROIContourSequence = Sequence([roi_contour])
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = 1
        observation.RTROIInterpretedType = "EXTERNAL"
        observation.ROIInterpreter = self.v.person("operators", "RI")
        ds.RTROIObservationsSequence = Sequence([observation])
        return ds

    def sr(self, ct: Dataset) -> Dataset:
        v = self.v
        ds = Dataset()
        _plant_common(ds, v, self.studies[0], "CT chest")
        _finish(ds, ComprehensiveSRStorage, self.uid("sr"), self.uid("sr series"), "SR")
        ds.SeriesNumber = 3
        ds.ContentTime = "104500"
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
        ds.ConceptNameCodeSequence = _code("11528-7", "LN", "Radiology Report")
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "VERIFIED"
        verifier = Dataset()
        verifier.VerifyingObserverName = v.person("SR text and observers", "VO")
        verifier.VerifyingOrganization = f"{v.token('SR text and observers', 'VOR')} Clinic"
        verifier.VerificationDateTime = f"{v.day}110000"
        ds.VerifyingObserverSequence = Sequence([verifier])
        ds.ReferencedPerformedProcedureStepSequence = Sequence()
        ds.PerformedProcedureCodeSequence = Sequence()

        def item(relation: str, value_type: str, code: Sequence) -> Dataset:
            out = Dataset()
            out.RelationshipType, out.ValueType, out.ConceptNameCodeSequence = (
                relation,
                value_type,
                code,
            )
            return out

        observer = item("HAS OBS CONTEXT", "PNAME", _code("121008", "DCM", "Person Observer Name"))
        observer.PersonName = v.person("SR text and observers", "SO")
        finding = item("CONTAINS", "TEXT", _code("121071", "DCM", "Finding"))
        patient = v.person("SR text and observers", "SR").split("^")
        finding.TextValue = f"{patient[1]} {patient[0]} reports chest pain since Monday."
        comment = item("CONTAINS", "TEXT", _code("121106", "DCM", "Comment"))
        # no dates here: a date found must say which attribute kept it
        comment.TextValue = f"Discussed with {v.token('SR text and observers', 'SRW')} (wife)."
        image = item("CONTAINS", "IMAGE", _code("121080", "DCM", "Best illustration of finding"))
        reference = Dataset()
        reference.ReferencedSOPClassUID = ct.SOPClassUID
        reference.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        image.ReferencedSOPSequence = Sequence([reference])
        ds.ContentSequence = Sequence([observer, finding, comment, image])
        series = Dataset()
        series.SeriesInstanceUID = ct.SeriesInstanceUID
        series.ReferencedSOPSequence = Sequence([reference])
        evidence = Dataset()
        evidence.StudyInstanceUID = ct.StudyInstanceUID
        evidence.ReferencedSeriesSequence = Sequence([series])
        ds.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
        return ds

    def capture(self) -> Dataset:
        """A secondary capture with the name and ID drawn in (no BurnedInAnnotation)."""
        v = self.v
        ds = Dataset()
        _plant_common(ds, v, self.studies[0], "CT chest")
        _finish(ds, SecondaryCaptureImageStorage, self.uid("sc"), self.uid("sc series"), "OT")
        ds.SeriesNumber, ds.ConversionType = 4, "WSD"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        key = ("SC", v.key)
        if key not in self.sources:
            pixels = _text_pixels(BURNED_IN_SHAPES[0], [v.name, v.planted_id()], rgb=False)
            self.sources[key] = pixels.tobytes()
        _pixel_module(ds, np.frombuffer(self.sources[key], np.uint8).reshape(BURNED_IN_SHAPES[0]))
        return ds

    def ultrasound(self) -> Dataset:
        """An RGB ultrasound-like image with a banner of name, ID and birth date."""
        v = self.v
        ds = Dataset()
        _plant_common(ds, v, self.studies[1], "US abdomen")
        _finish(ds, UltrasoundImageStorage, self.uid("us"), self.uid("us series"), "US")
        ds.SeriesNumber, ds.BurnedInAnnotation = 2, "YES"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        key = ("US", v.key)
        shape = (*BURNED_IN_SHAPES[1], 3)
        if key not in self.sources:
            lines = [v.name, f"{v.planted_id()}  DOB {v.born}"]
            self.sources[key] = _text_pixels(BURNED_IN_SHAPES[1], lines, rgb=True).tobytes()
        _pixel_module(ds, np.frombuffer(self.sources[key], np.uint8).reshape(shape))
        return ds


def write_planted_archive(folder: Path, *, copies: int = 1) -> Planted:
    """Write the planted archive under ``folder``; ``copies`` repeats it with new UIDs.

    Each copy holds 18 files: for each of 3 patients a CT, RTSTRUCT, SR and secondary
    capture (study 1) and an MR and ultrasound image (study 2).
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources: dict = {n: sample_file(n).read_bytes() for n in ("CT_small.dcm", "MR_small.dcm")}
    files: list[Path] = []
    burned: list[Path] = []
    uids: set[str] = set()
    categories: dict[str, str] = {}
    by_patient: dict[str, tuple[_Values, list[Path], list[str]]] = {}
    for copy in range(copies):
        for spec in _PATIENTS:
            values = _Values(*spec)
            writer = _Writer(values, copy, folder, sources)
            writer.write()
            files += writer.files
            burned += writer.burned_in
            uids |= writer.uids
            categories.update(values.planted)
            entry = by_patient.setdefault(values.key, (values, [], []))
            entry[1].extend(writer.files)
            entry[2].extend(writer.studies)
    patients = [
        PlantedPatient(
            key,
            values.name,
            values.planted_id(),
            values.born,
            tuple(paths),
            tuple(studies),
        )
        for key, (values, paths, studies) in by_patient.items()
    ]
    return Planted(
        folder=folder,
        strings=list(categories),
        categories=categories,
        files=files,
        patients=patients,
        burned_in=burned,
        uids=frozenset(uids),
    )


# --- checking ---------------------------------------------------------------------


def leaks(path_or_bytes: Path | bytes | str, planted: Planted) -> list[str]:
    """The planted strings found, in any letter case, as UTF-8 or Latin-1.

    A ``Path`` is searched in its bytes and in its whole path string (keep outputs out
    of the planted folder); a ``str`` is searched as text (a file name, say). The PN
    components are planted strings of their own, so a name split at ``^`` is found.
    """
    if isinstance(path_or_bytes, Path):
        data = path_or_bytes.read_bytes() + b"\0" + str(path_or_bytes).encode("utf-8")
    elif isinstance(path_or_bytes, str):
        data = path_or_bytes.encode("utf-8")
    else:
        data = path_or_bytes
    haystack = data.upper()
    return [text for text, needles in planted.needles if any(n in haystack for n in needles)]


def _datasets(files: Iterable[Path]) -> Iterator[tuple[Path, Dataset]]:
    for path in files:
        try:
            yield path, pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:
            continue


_REFERENCING = ("ReferencedSOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_REFERENCING += ("FrameOfReferenceUID", "ReferencedFrameOfReferenceUID")


def _nested_references(ds: Dataset) -> Iterator[tuple[str, str]]:
    for element in ds:
        if element.VR != "SQ":
            continue
        for item in element.value:
            for keyword in _REFERENCING:
                value = item.get(keyword)
                if value:
                    yield keyword, str(value)
            yield from _nested_references(item)


def references(files: Iterable[Path]) -> tuple[int, list[str]]:
    """How many UID references inside sequences resolve among ``files``, and the rest.

    A reference resolves when some file's own SOP Instance, Study, Series or Frame of
    Reference UID is the UID referenced; the planted archive has no other references.
    """
    own: set[str] = set()
    nested: list[tuple[Path, str, str]] = []
    for path, ds in _datasets(files):
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            if keyword in ds:
                own.add(str(ds[keyword].value))
        if "FrameOfReferenceUID" in ds:
            own.add(str(ds.FrameOfReferenceUID))
        nested += [(path, k, uid) for k, uid in _nested_references(ds)]
    dangling = [f"{p.name}: {k} {uid}" for p, k, uid in nested if uid not in own]
    return len(nested) - len(dangling), dangling


def uids_in(files: Iterable[Path]) -> set[str]:
    """Every UI value in ``files`` (sequences included), to compare with ``Planted.uids``."""
    found: set[str] = set()

    def visit(ds: Dataset, element: pydicom.DataElement) -> None:
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.update(str(v) for v in values)

    for _, ds in _datasets(files):
        ds.walk(visit)
    return found


def pseudonyms(files: Iterable[Path], planted: Planted) -> list[str]:
    """What breaks "one pseudonym per patient" in de-identified ``files``; [] if nothing.

    No output is mapped to its input: each study must carry one (PatientID,
    PatientName) pair, there must be as many pairs as planted patients, and each pair
    as many studies as its patient had.
    """
    per_study: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for _, ds in _datasets(files):
        who = (str(ds.get("PatientID", "")), str(ds.get("PatientName", "")))
        per_study[str(ds.get("StudyInstanceUID", ""))].add(who)
    problems = [
        f"study {study or '(no UID)'} holds {len(pairs)} patients"
        for study, pairs in per_study.items()
        if len(pairs) > 1
    ]
    studies: dict[tuple[str, str], int] = defaultdict(int)
    for pairs in per_study.values():
        for pair in pairs:
            studies[pair] += 1
    if len(studies) != len(planted.patients):
        count = len(studies)
        problems.append(
            f"{len(planted.patients)} patients became {count} pseudonym{'s' * (count != 1)}"
        )
    expected = sorted(len(p.study_uids) for p in planted.patients)
    if not problems and sorted(studies.values()) != expected:
        problems.append(f"studies per pseudonym {sorted(studies.values())}, not {expected}")
    return problems


def burned_in_text(path: Path) -> bool | None:
    """Whether the drawn text is still in the pixels; None for images without any."""
    try:
        ds = pydicom.dcmread(path, force=True)
        if "PixelData" not in ds or (ds.Rows, ds.Columns) not in BURNED_IN_SHAPES:
            return None
        pixels = ds.pixel_array
    except Exception:
        return None
    band = pixels[:TEXT_ROWS]
    bright = band.min(axis=-1) >= 250 if band.ndim == 3 else band >= 250
    return int(bright.sum()) > 30
