"""DICOMweb, ours against Orthanc's: the same files, the same queries, the same answers.

A small corpus of real files (pydicom's test files, and copies edited into six
studies of five patients with distinct IDs, mixed-case names with ``^`` components,
dates over ten years, times, modalities, accession numbers and series descriptions)
is ingested into a lake served by ``dicomlake serve`` and uploaded to Orthanc 1.10
with its DICOMweb plugin 1.7 (Debian's packages, :mod:`helpers.orthanc`). Then:

- QIDO-RS at every level (``/studies``, ``/series``, ``/instances`` and the ones
  under a study or series) returns the same set of matched UIDs on both, for a
  battery of queries: exact, wildcard (``*``, ``?``, percent-encoded ``%2A``),
  fuzzy, date and time ranges, UID lists, modalities, combined keys, tags by number;
- the attributes both return by default, and those asked for with ``includefield``,
  have equal values;
- ``limit``/``offset`` pages are disjoint and add up to the whole answer;
- WADO-RS ``/metadata`` of every series is value-equal, instance by instance
  (matched by SOPInstanceUID), ``/frames/1`` gives the same bytes, and an instance
  retrieved by WADO-RS or WADO-URI is the same data set;
- dicomweb-client walking the archive finds the same on both.

Where Orthanc deviates from the standard the case asserts the standard's answer for
ours and leaves Orthanc's unchecked. The deviations of this Orthanc (1.10.1 with
DICOMweb 1.7), each found with the queries below:

1. Query values are not percent-decoded (RFC 3986 says an encoded octet is the same
   character): ``PatientName=Doe%2A`` looks for the literal ``Doe%2A`` and matches
   nothing, as do ``P%2DALPHA`` and ``Doe%5EJohn*``.
2. Matching ignores case for every VR (PS3.4 C.2.2.2.1 and C.2.2.2.4: case-sensitive
   except PN): ``PatientID=P-BETA`` finds ``p-beta``, ``PatientID=P-*`` finds it too,
   ``AccessionNumber=acc-1001``, ``ModalitiesInStudy=mr``, ``Modality=ct`` and
   ``SeriesDescription=chest*`` all match. (For PN either way conforms, so the
   PatientName cases accept both answers.)
3. A range matches entities without a value: ``StudyDate=-20120101`` returns the
   study whose StudyDate is empty (it compares the empty string as text). An empty
   value matches a key only under ``emptyvaluematching=true`` (PS3.18 8.3.4.5).
4. ``offset`` is dropped or misapplied when ``ModalitiesInStudy`` filters:
   ``offset=1`` alone returns every match, ``limit=2&offset=2`` returns none.
5. ``fuzzymatching=true`` is ignored silently; PS3.18 8.3.4.2 asks a server without
   fuzzy matching to answer with ``Warning: 299 ... The fuzzymatching parameter is
   not supported. Only literal matching has been performed.``
6. ``includefield=all`` is ignored (only the default attributes come back).
7. Invalid parameter values: ``limit=-1`` and ``offset=-3`` are 500s, and
   ``StudyDate=abc`` or ``StudyDate=2012-13-45`` (neither a date nor a range) are
   empty 200s; PS3.18 8.3 asks for a 400 for an invalid value of a supported
   parameter. (``limit=abc`` is a 400, as it should be.)

Also seen, not asserted: Orthanc answers dicomweb-client's default Accept for frames
(``multipart/related; type="*/*"``) with a 400, so the client walk below names
``application/octet-stream``.

What the comparisons ignore, and why:

- ``RetrieveURL`` (0008,1190) and every ``BulkDataURI``: URLs of each server's own.
- The values of ``BulkDataURI`` and ``InlineBinary`` attributes: a server chooses
  per attribute whether to send bytes inline or by reference, so only the presence
  of the attribute on both sides is compared, not its bytes (``/frames`` compares
  the pixel bytes).
- Attributes only one side sends: PS3.18 lets a server add attributes to a QIDO
  answer beyond the required ones (Orthanc adds e.g. TimezoneOffsetFromUTC at study
  level), and Orthanc's ``/metadata`` adds the data set trailing padding
  (FFFC,FFFC) as bulk data. Ours must still return every attribute PS3.18 requires
  at each level (checked separately).
- SpecificCharacterSet (0008,0005): DICOM JSON is always UTF-8, so the value is
  informational; Orthanc reports its own default (ISO_IR 100) for studies whose
  files have none.
- The order of results and of ModalitiesInStudy's values (PS3.18 fixes neither).
"""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

import dicomlake
from dicomlake.sample import sample_file
from helpers.orthanc import OrthancServer
from helpers.servers import LiveServer

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

#: pydicom test files served as they are (their own patients and studies).
ORIGINALS = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_J2KR.dcm", "rtstruct.dcm")


@dataclass(frozen=True)
class Study:
    """An edited study: its patient and study attributes, and its series."""

    key: str
    patient_id: str
    patient_name: str
    date: str
    time: str
    accession: str
    description: str
    #: (Modality, SeriesDescription, source file, instances)
    series: tuple[tuple[str, str, str, int], ...]
    #: the patient's birth date and sex, the study's ID and referring physician
    patient: tuple[str, str] = ("", "O")
    referring: str = ""


STUDIES = (
    Study(
        "alpha-2010", "P-ALPHA", "Doe^John^Q^Dr^Jr", "20100101", "083000", "ACC-1001", "Chest",
        (("CT", "Chest CT axial", "CT_small.dcm", 3), ("CT", "Scout", "CT_small.dcm", 1)),
        ("19600229", "M"), "Welby^Marcus",
    ),
    Study(
        "alpha-2012", "P-ALPHA", "Doe^John^Q^Dr^Jr", "20120101", "141500", "ACC-1002", "Brain",
        (("MR", "Brain T1", "MR_small.dcm", 2),), ("19600229", "M"), "House^Gregory",
    ),
    Study(
        "beta-2015", "p-beta", "doe^jane", "20151231", "235959", "ACC-2001", "Abdomen",
        (("CT", "Abdomen CT", "CT_small.dcm", 1), ("MR", "Liver MR", "emri_small.dcm", 1)),
        ("19851110", "F"),
    ),
    Study(
        "gamma-2018", "P-GAMMA", "McDonald^Ann Marie", "20180704", "101010", "ACC-3001", "Echo",
        (("US", "Cardiac echo", "US1_J2KR.dcm", 1),), ("19721003", "F"), "Welby^Marcus",
    ),
    Study(
        "delta-2009", "P-DELTA", "MCDONALD^ANNE", "20091231", "000000", "ACC-4001", "Knee",
        (("MR", "Knee PD", "MR_small.dcm", 1),), ("19991231", "F"),
    ),
    Study(
        "eps-2011", "P-EPS", "Smith^Bob", "20111231", "120000", "ACC-5001", "Plan",
        (("RTSTRUCT", "Structures", "rtstruct.dcm", 1),), ("19450508", "M"),
    ),
)  # fmt: skip


def _uid(*parts: object) -> str:
    """A UID that is the same on every run, so failures are reproducible."""
    return str(generate_uid(entropy_srcs=["dicomlake-orthanc-differential", *map(str, parts)]))


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _compressed(ds: pydicom.Dataset) -> bool:
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    return syntax is not None and pydicom.uid.UID(syntax).is_compressed


@dataclass
class Corpus:
    """The files, and names for their UIDs: ``<key>`` a study, ``<key/n>`` its n-th
    series, ``<key/n/i>`` that series' i-th instance (originals by file stem)."""

    paths: list[Path] = field(default_factory=list)
    uids: dict[str, str] = field(default_factory=dict)
    #: SOPInstanceUIDs of the instances in a compressed transfer syntax
    compressed: set[str] = field(default_factory=set)

    def fill(self, text: str) -> str:
        """Replace the ``<name>`` placeholders of a query by UIDs."""
        return re.sub(r"<([^<>]+)>", lambda m: self.uids[m.group(1)], text)

    def study_uids(self, *keys: str) -> frozenset[str]:
        return frozenset(self.uids[k] for k in keys)


def build_corpus(folder: Path) -> Corpus:
    """The originals, and the edited studies (new UIDs, new patient and study values)."""
    folder.mkdir(parents=True)
    corpus = Corpus()
    for name in ORIGINALS:
        path = Path(shutil.copyfile(sample_file(name), folder / name))
        ds = _read(path)
        stem = path.stem
        corpus.uids[stem] = ds.StudyInstanceUID
        corpus.uids[f"{stem}/1"] = ds.SeriesInstanceUID
        corpus.uids[f"{stem}/1/1"] = ds.SOPInstanceUID
        corpus.paths.append(path)
        if _compressed(ds):
            corpus.compressed.add(ds.SOPInstanceUID)
    for study in STUDIES:
        corpus.uids[study.key] = _uid(study.key)
        for s, (modality, description, source, count) in enumerate(study.series, 1):
            corpus.uids[f"{study.key}/{s}"] = _uid(study.key, s)
            for i in range(1, count + 1):
                ds = _read(sample_file(source))
                if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                    ds.file_meta = FileMetaDataset()  # rtstruct.dcm has no meta header
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                ds.PatientID, ds.PatientName = study.patient_id, study.patient_name
                ds.StudyDate, ds.StudyTime = study.date, study.time
                ds.AccessionNumber, ds.StudyDescription = study.accession, study.description
                # one value per patient and per study, whatever the source file had
                ds.PatientBirthDate, ds.PatientSex = study.patient
                ds.StudyID, ds.ReferringPhysicianName = study.key[:16], study.referring
                ds.TimezoneOffsetFromUTC = "+0100"
                for keyword in ("PatientAge", "PatientWeight", "PatientSize"):
                    if keyword in ds:
                        delattr(ds, keyword)
                ds.StudyInstanceUID = corpus.uids[study.key]
                ds.SeriesInstanceUID = corpus.uids[f"{study.key}/{s}"]
                ds.SOPInstanceUID = _uid(study.key, s, i)
                corpus.uids[f"{study.key}/{s}/{i}"] = ds.SOPInstanceUID
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
                ds.Modality, ds.SeriesDescription = modality, description
                ds.SeriesNumber, ds.InstanceNumber = s, i
                path = folder / f"{study.key}-{s}-{i}.dcm"
                ds.save_as(path, enforce_file_format=True)
                corpus.paths.append(path)
                if _compressed(ds):
                    corpus.compressed.add(ds.SOPInstanceUID)
    return corpus


@dataclass
class Peers:
    """Both servers' DICOMweb roots over the same corpus."""

    corpus: Corpus
    ours: httpx.Client
    orthanc: httpx.Client
    #: Orthanc's HTTP root (its WADO-URI is at ``/wado``, beside ``/dicom-web``)
    orthanc_root: httpx.Client

    def client(self, side: httpx.Client) -> Any:
        """A dicomweb-client ``DICOMwebClient`` on one side's DICOMweb root."""
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(str(side.base_url).rstrip("/"))


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peers]:
    """Orthanc first (the module skips without it), then our lake and server."""
    tmp = tmp_path_factory.mktemp("dicomweb-orthanc")
    with OrthancServer(tmp / "orthanc") as orthanc:
        corpus = build_corpus(tmp / "corpus")
        orthanc.upload(corpus.paths)
        lake = str(tmp / "lake")
        summary = dicomlake.ingest([str(tmp / "corpus")], lake, workers=0)
        assert summary.ok == len(corpus.paths), summary
        with (
            LiveServer(lake) as live,
            httpx.Client(base_url=live.url + "/dicomweb", timeout=30) as ours,
            httpx.Client(base_url=orthanc.dicomweb_url, timeout=30) as theirs,
            httpx.Client(base_url=orthanc.url, timeout=30) as root,
        ):
            yield Peers(corpus, ours, theirs, root)


# --- QIDO-RS ---------------------------------------------------------------------------

#: The unique key of each level's results.
LEVEL_KEY = {"study": "0020000D", "series": "0020000E", "instance": "00080018"}
RETRIEVE_URL = "00081190"
CHARSET = "00080005"


def level_of(path: str) -> str:
    """Which level a QIDO path searches (its last segment)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return {"studies": "study", "series": "series", "instances": "instance"}[last]


def search(client: httpx.Client, path: str, query: str = "") -> httpx.Response:
    """GET a QIDO path with the query string exactly as written (no re-encoding)."""
    return client.get(path + ("?" + query if query else ""))


def results(response: httpx.Response) -> list[dict[str, Any]]:
    """A QIDO answer's result list: 204 (or an empty 200) is no match."""
    if response.status_code == 204:
        return []
    assert response.status_code == 200, f"{response.url}: {response.status_code} {response.text}"
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json() if response.content.strip() else []
    assert isinstance(body, list), body
    return body


def uids_of(body: list[dict[str, Any]], level: str) -> set[str]:
    """The unique keys of the results (each result must carry its own)."""
    tag = LEVEL_KEY[level]
    found = [r[tag]["Value"][0] for r in body]
    assert len(found) == len(set(found)), f"duplicate results: {found}"
    return set(found)


@dataclass(frozen=True)
class Case:
    """One QIDO query. ``standard`` lists the acceptable answers (study/series/instance
    names of the corpus) where Orthanc's answer is not the reference: for a deviation
    of Orthanc's (``deviation`` says which), or where PS3.4 allows either answer (PN
    case). Otherwise ours must equal Orthanc's."""

    path: str
    query: str
    standard: tuple[frozenset[str], ...] = ()
    deviation: int | None = None


def names(*keys: str) -> frozenset[str]:
    return frozenset(keys)


EVERY_ORIGINAL = ("CT_small", "MR_small", "emri_small", "US1_J2KR", "rtstruct")
ALPHA = ("alpha-2010", "alpha-2012")

CASES = {
    # --- studies: patient ID (LO, case-sensitive), exact and wildcards
    "study-patient-id": Case("/studies", "PatientID=P-ALPHA"),
    "study-patient-id-lower": Case("/studies", "PatientID=p-beta"),
    "study-patient-id-case": Case("/studies", "PatientID=P-BETA", (names(),), deviation=2),
    "study-patient-id-star": Case(
        "/studies", "PatientID=P-*",
        (names(*ALPHA, "gamma-2018", "delta-2009", "eps-2011"),), deviation=2,
    ),
    "study-patient-id-question": Case("/studies", "PatientID=P-?LPHA"),
    "study-patient-id-tag": Case("/studies", "00100020=P-ALPHA"),
    "study-patient-id-encoded": Case(
        "/studies", "PatientID=P%2DALPHA", (names(*ALPHA),), deviation=1
    ),
    # --- studies: patient name (PN: case-insensitive matching is allowed, not required)
    "study-name-exact": Case("/studies", "PatientName=Doe^John^Q^Dr^Jr"),
    "study-name-prefix": Case(
        "/studies", "PatientName=Doe*", (names(*ALPHA), names(*ALPHA, "beta-2015"))
    ),
    "study-name-question": Case(
        "/studies", "PatientName=D?e*", (names(*ALPHA), names(*ALPHA, "beta-2015"))
    ),
    "study-name-components": Case("/studies", "PatientName=Doe^John*"),
    "study-name-suffix": Case("/studies", "PatientName=*Marie"),
    "study-name-inner": Case(
        "/studies", "PatientName=*Ann*", (names("gamma-2018"), names("gamma-2018", "delta-2009"))
    ),
    "study-name-lower": Case(
        "/studies", "PatientName=mcdonald*", (names(), names("gamma-2018", "delta-2009"))
    ),
    "study-name-encoded-star": Case(
        "/studies", "PatientName=Doe%2A",
        (names(*ALPHA), names(*ALPHA, "beta-2015")), deviation=1,
    ),
    "study-name-encoded-caret": Case(
        "/studies", "PatientName=Doe%5EJohn%2A", (names(*ALPHA),), deviation=1
    ),
    # an empty value, and "*" alone, are universal matching: entities without a
    # PatientName match too (PS3.4 C.2.2.2.3 and C.2.2.2.4)
    "study-name-empty-is-universal": Case("/studies", "PatientName="),
    "study-name-star-is-universal": Case("/studies", "PatientName=*"),
    # --- studies: dates and times
    "study-date-range": Case("/studies", "StudyDate=20100101-20151231"),
    "study-date-until": Case(
        "/studies", "StudyDate=-20120101",
        (names(*ALPHA, "delta-2009", "eps-2011", *(n for n in EVERY_ORIGINAL if n != "rtstruct")),),
        deviation=3,
    ),
    "study-date-from": Case("/studies", "StudyDate=20120101-"),
    "study-date-exact": Case("/studies", "StudyDate=20120101"),
    "study-time-range": Case("/studies", "StudyTime=080000-120000"),
    "study-date-and-patient": Case("/studies", "PatientID=P-ALPHA&StudyDate=20110101-"),
    # --- studies: UIDs, modalities, accession
    "study-uid": Case("/studies", "StudyInstanceUID=<gamma-2018>"),
    "study-uid-list": Case("/studies", "StudyInstanceUID=<alpha-2010>,<gamma-2018>,<rtstruct>"),
    "study-modality-mr": Case("/studies", "ModalitiesInStudy=MR"),
    "study-modality-ct": Case("/studies", "ModalitiesInStudy=CT"),
    "study-modality-case": Case("/studies", "ModalitiesInStudy=mr", (names(),), deviation=2),
    "study-modality-and-patient": Case("/studies", "ModalitiesInStudy=CT&PatientID=P-ALPHA"),
    "study-accession": Case("/studies", "AccessionNumber=ACC-1001"),
    "study-accession-case": Case("/studies", "AccessionNumber=acc-1001", (names(),), deviation=2),
    # "The origin server shall ignore any unsupported Query Parameters" (PS3.18 8.3)
    "study-unknown-parameter-ignored": Case("/studies", "NoSuchParameter=1"),
    # --- series
    "series-all": Case("/series", ""),
    "series-modality": Case("/series", "Modality=CT"),
    "series-modality-mr": Case("/series", "Modality=MR"),
    "series-modality-case": Case("/series", "Modality=ct", (names(),), deviation=2),
    "series-uid": Case("/series", "SeriesInstanceUID=<alpha-2010/2>"),
    "series-uid-list": Case("/series", "SeriesInstanceUID=<alpha-2010/2>,<beta-2015/1>"),
    "series-description": Case("/series", "SeriesDescription=Chest*"),
    "series-description-case": Case(
        "/series", "SeriesDescription=chest*", (names(),), deviation=2
    ),
    "series-number": Case("/series", "SeriesNumber=2"),
    "series-by-patient": Case("/series", "PatientID=P-ALPHA"),
    "series-by-study-date": Case("/series", "StudyDate=20100101-20151231"),
    "series-modality-and-date": Case("/series", "Modality=MR&StudyDate=20120101-"),
    "series-of-study": Case("/studies/<beta-2015>/series", ""),
    "series-of-study-modality": Case("/studies/<beta-2015>/series", "Modality=MR"),
    "series-of-study-number": Case("/studies/<alpha-2010>/series", "SeriesNumber=1"),
    # --- instances
    "instance-uid": Case("/instances", "SOPInstanceUID=<alpha-2010/1/2>"),
    "instance-uid-list": Case("/instances", "SOPInstanceUID=<alpha-2010/1/2>,<CT_small/1/1>"),
    "instance-sop-class": Case("/instances", "SOPClassUID=1.2.840.10008.5.1.4.1.1.4"),
    "instance-modality": Case("/instances", "Modality=CT"),
    "instance-by-patient": Case("/instances", "PatientID=P-ALPHA"),
    "instance-by-series-uid": Case("/instances", "SeriesInstanceUID=<alpha-2010/1>"),
    "instance-number": Case("/instances", "InstanceNumber=2"),
    "instance-by-date": Case("/instances", "StudyDate=20120101-"),
    "instances-of-study": Case("/studies/<alpha-2010>/instances", ""),
    "instances-of-study-number": Case("/studies/<alpha-2010>/instances", "InstanceNumber=1"),
    "instances-of-series": Case("/studies/<alpha-2010>/series/<alpha-2010/1>/instances", ""),
    "instances-of-series-number": Case(
        "/studies/<alpha-2010>/series/<alpha-2010/1>/instances", "InstanceNumber=3"
    ),
}  # fmt: skip


def expected_uids(peers: Peers, names_: frozenset[str], level: str) -> set[str]:
    """UIDs of corpus names at ``level``: a study name stands for its series/instances."""
    uids = peers.corpus.uids
    found = set()
    for name in names_:
        depth = name.count("/")
        target = {"study": 0, "series": 1, "instance": 2}[level]
        for key, uid in uids.items():
            if key.count("/") == target and (key == name or key.startswith(name + "/")):
                found.add(uid)
        assert depth <= target, f"{name} is below {level} level"
    return found


def name_of(peers: Peers, uids: set[str]) -> list[str]:
    """Corpus names of UIDs, for readable failure messages."""
    back = {uid: key for key, uid in peers.corpus.uids.items()}
    return sorted(back.get(u, u) for u in uids)


@pytest.mark.parametrize("name", list(CASES))
def test_qido_matches(peers: Peers, name: str) -> None:
    """Ours matches what Orthanc matches, or the standard's answer where they differ."""
    case = CASES[name]
    path, query = peers.corpus.fill(case.path), peers.corpus.fill(case.query)
    level = level_of(path)
    ours = uids_of(results(search(peers.ours, path, query)), level)
    if case.standard:
        acceptable = [expected_uids(peers, s, level) for s in case.standard]
        assert ours in acceptable, (
            f"{path}?{query}: ours {name_of(peers, ours)}, the standard's "
            f"{' or '.join(str(name_of(peers, a)) for a in acceptable)}"
        )
        if case.deviation is None:  # Orthanc is within the standard here
            theirs = uids_of(results(search(peers.orthanc, path, query)), level)
            assert theirs in acceptable, f"Orthanc {name_of(peers, theirs)}"
        return
    theirs = uids_of(results(search(peers.orthanc, path, query)), level)
    assert ours == theirs, (
        f"{path}?{query}: ours {name_of(peers, ours)}, Orthanc {name_of(peers, theirs)}"
    )
    # the query tells the corpus apart (it is not everything or nothing), unless meant to
    total = uids_of(results(search(peers.orthanc, path)), level)
    if "=" in query and not any(k in name for k in ("universal", "ignored")):
        assert 0 < len(ours) < len(total), f"{path}?{query} does not discriminate: {ours}"


@pytest.mark.parametrize(
    "query",
    ["PatientName=doe", "PatientName=mcdonald*", "PatientName=Doe^John^Q^Dr^Jr"],
)
def test_qido_fuzzy_matching(peers: Peers, query: str) -> None:
    """``fuzzymatching=true``: either fuzzy matching (a superset of the literal match)
    or literal matching with the Warning header of PS3.18 8.3.4.2 (Orthanc's answer is
    literal, without the header: deviation 5)."""
    literal = uids_of(results(search(peers.ours, "/studies", query)), "study")
    response = search(peers.ours, "/studies", query + "&fuzzymatching=true")
    fuzzy = uids_of(results(response), "study")
    warning = response.headers.get("warning", "")
    if "fuzzymatching" in warning:
        assert warning.startswith("299 "), warning
        assert "Only literal matching has been performed" in warning, warning
        assert fuzzy == literal
    else:
        assert fuzzy >= literal, f"fuzzy {name_of(peers, fuzzy)} < {name_of(peers, literal)}"
    theirs = uids_of(
        results(search(peers.orthanc, "/studies", query + "&fuzzymatching=true")), "study"
    )
    assert theirs == uids_of(results(search(peers.orthanc, "/studies", query)), "study")


# --- attributes of QIDO results --------------------------------------------------------


def by_uid(body: list[dict[str, Any]], level: str) -> dict[str, dict[str, Any]]:
    return {r[LEVEL_KEY[level]]["Value"][0]: r for r in body}


def normal(tag: str, element: dict[str, Any]) -> Any:
    """An element's comparable value: binary as a marker, numbers as floats, the
    values of ModalitiesInStudy as a set, sequences item by item."""
    if "BulkDataURI" in element or "InlineBinary" in element:
        return ("binary", element.get("vr"))
    values = element.get("Value", [])
    vr = element.get("vr")
    if vr == "SQ":
        return (vr, [normal_dataset(item) for item in values])
    if vr in {"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"}:
        return (vr, [None if v is None else _Number(float(v)) for v in values])
    if tag == "00080061":
        return (vr, sorted(values))
    return (vr, values)


@dataclass(frozen=True)
class _Number:
    """A number equal to another within float rounding (DS in decimal, FL as float32)."""

    value: float

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Number) and math.isclose(
            self.value, other.value, rel_tol=1e-6, abs_tol=1e-9
        )

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return repr(self.value)


#: Never compared: each server's own URLs, and the informational character set.
NOT_COMPARED = frozenset({RETRIEVE_URL, CHARSET})


def normal_dataset(dataset: dict[str, Any]) -> dict[str, Any]:
    return {tag.upper(): normal(tag.upper(), e) for tag, e in dataset.items()}


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The attributes both have, whose values differ (ours, Orthanc's)."""
    a, b = normal_dataset(ours), normal_dataset(theirs)
    return {t: (a[t], b[t]) for t in sorted(a.keys() & b.keys() - NOT_COMPARED) if a[t] != b[t]}


#: What PS3.18 (Tables 10.6.3-3 to -5) has every QIDO result carry by default, of the
#: attributes Orthanc also returns. Checked for ours where the entity has a value.
REQUIRED = {
    "study": {
        "00080020", "00080030", "00080050", "00080061", "00080090", "00100010",
        "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208",
    },
    "series": {"00080060", "0008103E", "0020000E", "00200011", "00201209"},
    "instance": {"00080016", "00080018", "00200013", "00280010", "00280011", "00280100"},
}  # fmt: skip


@pytest.mark.parametrize("path", ["/studies", "/series", "/instances"])
def test_qido_default_attributes(peers: Peers, path: str) -> None:
    """Every result's default attributes equal Orthanc's where both send them, and ours
    carries each attribute PS3.18 requires that Orthanc has a value for."""
    level = level_of(path)
    ours = by_uid(results(search(peers.ours, path)), level)
    theirs = by_uid(results(search(peers.orthanc, path)), level)
    assert ours.keys() == theirs.keys()
    problems = {}
    for uid, result in ours.items():
        diff = differences(result, theirs[uid])
        missing = {
            t for t in REQUIRED[level] - result.keys() if theirs[uid].get(t, {}).get("Value")
        }
        if RETRIEVE_URL not in result:
            missing.add(RETRIEVE_URL)
        if diff or missing:
            problems[name_of(peers, {uid})[0]] = {"differ": diff, "missing": sorted(missing)}
    assert not problems, problems


INCLUDES = {
    "study-description": (
        "/studies", "PatientID=P-ALPHA&includefield=StudyDescription", "00081030"
    ),
    "study-description-tag": (
        "/studies", "ModalitiesInStudy=MR&includefield=00081030", "00081030"
    ),
    "study-two-fields": (
        "/studies", "PatientID=P-ALPHA&includefield=00081030,PatientAge", "00081030,00101010"
    ),
    "series-body-part": ("/series", "Modality=CT&includefield=BodyPartExamined", "00180015"),
    "series-study-description": (
        "/series", "PatientID=P-ALPHA&includefield=StudyDescription", "00081030"
    ),
    "instance-rows": (
        "/instances", "Modality=MR&includefield=Rows&includefield=Columns", "00280010,00280011"
    ),
    "instance-frames": ("/instances", "Modality=MR&includefield=NumberOfFrames", "00280008"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(INCLUDES))
def test_qido_includefield(peers: Peers, name: str) -> None:
    """Attributes asked for with ``includefield`` come back, equal to Orthanc's."""
    path, query, tags = INCLUDES[name]
    level = level_of(path)
    ours = by_uid(results(search(peers.ours, path, query)), level)
    theirs = by_uid(results(search(peers.orthanc, path, query)), level)
    assert ours.keys() == theirs.keys() and ours
    for uid, result in theirs.items():
        for tag in tags.split(","):
            if result.get(tag, {}).get("Value"):
                assert tag in ours[uid], f"{name_of(peers, {uid})}: no {tag} in ours"
                assert normal(tag, ours[uid][tag]) == normal(tag, result[tag]), (uid, tag)


def test_qido_includefield_all(peers: Peers) -> None:
    """``includefield=all`` returns the other available attributes too (Orthanc ignores
    it: deviation 6): here StudyDescription, which is not a default attribute."""
    default = results(search(peers.ours, "/studies", "PatientID=P-EPS"))
    (study,) = results(search(peers.ours, "/studies", "PatientID=P-EPS&includefield=all"))
    assert study["00081030"]["Value"] == ["Plan"]
    assert default[0].keys() <= study.keys()


# --- limit and offset ------------------------------------------------------------------

PAGED = {
    "studies": ("/studies", ""),
    "studies-by-date": ("/studies", "StudyDate=20000101-20151231"),
    "studies-by-modality": ("/studies", "ModalitiesInStudy=MR"),
    "series-by-modality": ("/series", "Modality=CT"),
    "instances-by-patient": ("/instances", "PatientID=P-ALPHA"),
    "instances-of-study": ("/studies/<alpha-2010>/instances", ""),
}

#: Pages Orthanc gets wrong (deviation 4): checked for ours only.
ORTHANC_PAGING_BROKEN = {"studies-by-modality"}


def pages(client: httpx.Client, path: str, query: str, size: int) -> list[set[str]]:
    level = level_of(path)
    found, offset = [], 0
    joiner = "&" if query else ""
    while True:
        page = results(search(client, path, f"{query}{joiner}limit={size}&offset={offset}"))
        if not page:
            return found
        assert len(page) <= size
        found.append(uids_of(page, level))
        offset += size
        assert offset < 1000, "paging does not end"


@pytest.mark.parametrize("name", list(PAGED))
@pytest.mark.parametrize("size", [1, 2, 3])
def test_qido_limit_offset(peers: Peers, name: str, size: int) -> None:
    """Pages of ``limit`` results from ``offset`` are disjoint, full but the last, and
    add up to the answer without paging; ``offset`` past the end is empty."""
    path, query = (peers.corpus.fill(p) for p in PAGED[name])
    level = level_of(path)
    sides = [("ours", peers.ours)]
    if name not in ORTHANC_PAGING_BROKEN:
        sides.append(("Orthanc", peers.orthanc))
    for side, client in sides:
        whole = uids_of(results(search(client, path, query)), level)
        got = pages(client, path, query, size)
        assert sum(len(p) for p in got) == len(whole), (side, got)
        assert set().union(*got) == whole, side
        assert all(len(p) == size for p in got[:-1]), (side, got)
        if side == "ours":
            joiner = "&" if query else ""
            only_offset = search(client, path, f"{query}{joiner}offset={len(whole) - 1}")
            assert len(results(only_offset)) == 1
    ours = uids_of(results(search(peers.ours, path, query)), level)
    assert ours == uids_of(results(search(peers.orthanc, path, query)), level)


def test_qido_orthanc_offset_deviation_is_ours_to_get_right(peers: Peers) -> None:
    """Deviation 4: ``offset`` with ModalitiesInStudy; ours skips exactly ``offset``."""
    whole = results(search(peers.ours, "/studies", "ModalitiesInStudy=MR"))
    assert len(results(search(peers.ours, "/studies", "ModalitiesInStudy=MR&offset=1"))) == (
        len(whole) - 1
    )
    page = results(search(peers.ours, "/studies", "ModalitiesInStudy=MR&limit=2&offset=2"))
    assert len(page) == 2


@pytest.mark.parametrize(
    "query", ["limit=abc", "limit=-1", "offset=-3", "StudyDate=abc", "StudyDate=2012-13-45"]
)
def test_qido_invalid_values_are_bad_requests(peers: Peers, query: str) -> None:
    """An invalid value of a supported parameter is a 400 (PS3.18 8.3); Orthanc answers
    a negative limit or offset with a 500 and a malformed date with an empty 200
    (deviation 7)."""
    assert search(peers.ours, "/studies", query).status_code == 400


# --- WADO-RS ---------------------------------------------------------------------------


def every_series(peers: Peers) -> list[tuple[str, str]]:
    body = results(search(peers.orthanc, "/series"))
    return sorted((r["0020000D"]["Value"][0], r["0020000E"]["Value"][0]) for r in body)


def test_wado_metadata_equals_orthanc(peers: Peers) -> None:
    """Each series' ``/metadata``: the same instances, value-equal attribute by
    attribute where both send the attribute (see the module docstring)."""
    assert len(every_series(peers)) == 5 + sum(len(s.series) for s in STUDIES)
    problems: dict[str, Any] = {}
    for study, series in every_series(peers):
        path = f"/studies/{study}/series/{series}/metadata"
        ours_response = peers.ours.get(path)
        assert ours_response.status_code == 200, (path, ours_response.text)
        assert ours_response.headers["content-type"].startswith("application/dicom+json")
        ours = by_uid(ours_response.json(), "instance")
        theirs = by_uid(results(peers.orthanc.get(path)), "instance")
        assert ours.keys() == theirs.keys(), path
        for uid, dataset in theirs.items():
            diff = differences(ours[uid], dataset)
            # ours leaves nothing out that Orthanc has from the file, bulk data included
            only_theirs = {
                t for t in dataset.keys() - ours[uid].keys() - NOT_COMPARED if t != "FFFCFFFC"
            }
            if diff or only_theirs:
                problems[name_of(peers, {uid})[0]] = {
                    "differ": diff,
                    "only Orthanc": sorted(only_theirs),
                }
    assert not problems, problems


def frame_parts(response: httpx.Response) -> list[bytes]:
    """The bodies of a multipart/related answer."""
    assert response.status_code == 200, (response.url, response.status_code, response.text)
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    assert boundary, content_type
    delimiter = b"--" + boundary.group(1).encode()
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body.removesuffix(b"\r\n"))
    return parts


def test_wado_frames_equal_orthanc(peers: Peers) -> None:
    """``/frames/1`` of every native-syntax instance with pixels: the same bytes."""
    compared = 0
    for study, series in every_series(peers):
        base = f"/studies/{study}/series/{series}/instances"
        for instance in results(peers.orthanc.get(base)):
            uid = instance["00080018"]["Value"][0]
            if "00280010" not in instance or uid in peers.corpus.compressed:
                continue  # no pixel data (RT structure sets), or not native
            accept = {"Accept": 'multipart/related; type="application/octet-stream"'}
            theirs = frame_parts(peers.orthanc.get(f"{base}/{uid}/frames/1", headers=accept))
            ours = frame_parts(peers.ours.get(f"{base}/{uid}/frames/1", headers=accept))
            assert len(ours) == len(theirs) == 1, name_of(peers, {uid})
            assert ours[0] == theirs[0], f"{name_of(peers, {uid})}: frame 1 differs"
            compared += 1
    assert compared >= 10


def every_instance(peers: Peers) -> list[tuple[str, str, str]]:
    body = results(search(peers.orthanc, "/instances"))
    return sorted(
        (r["0020000D"]["Value"][0], r["0020000E"]["Value"][0], r["00080018"]["Value"][0])
        for r in body
    )


def parse(data: bytes) -> pydicom.Dataset:
    from io import BytesIO

    return pydicom.dcmread(BytesIO(data), force=True)


def test_wado_retrieve_instance_equals_orthanc(peers: Peers) -> None:
    """Retrieving each instance as it is stored (``transfer-syntax=*``) gives the same
    data set (file meta aside: a server may add or rewrite it) as Orthanc."""
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    instances = every_instance(peers)
    assert len(instances) == len(peers.corpus.paths)
    for study, series, uid in instances:
        path = f"/studies/{study}/series/{series}/instances/{uid}"
        (ours,) = frame_parts(peers.ours.get(path, headers=accept))
        (theirs,) = frame_parts(peers.orthanc.get(path, headers=accept))
        assert parse(ours) == parse(theirs), name_of(peers, {uid})


def test_wado_uri_equals_orthanc(peers: Peers) -> None:
    """WADO-URI (PS3.18 9) with ``contentType=application/dicom``: the same data set."""
    for study, series, uid in every_instance(peers)[::3]:
        query = (
            f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={uid}"
            "&contentType=application/dicom"
        )
        ours = peers.ours.get("/wado?" + query)
        theirs = peers.orthanc_root.get("/wado?" + query)
        assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
        assert ours.headers["content-type"].startswith("application/dicom")
        assert parse(ours.content) == parse(theirs.content), name_of(peers, {uid})


def test_dicomweb_client_sees_the_same_archive(peers: Peers) -> None:
    """A client library's walk (dicomweb-client: studies of a patient, their series,
    each series' metadata, an instance, a frame) finds the same on both sides."""
    walks = []
    for side in (peers.ours, peers.orthanc):
        client = peers.client(side)
        walk: dict[str, Any] = {}
        studies = client.search_for_studies(search_filters={"PatientID": "P-ALPHA"}, limit=10)
        for study in sorted(s["0020000D"]["Value"][0] for s in studies):
            for series in client.search_for_series(study):
                series_uid = series["0020000E"]["Value"][0]
                metadata = client.retrieve_series_metadata(study, series_uid)
                sops = sorted(m["00080018"]["Value"][0] for m in metadata)
                first = client.retrieve_instance(study, series_uid, sops[0])
                frame = client.retrieve_instance_frames(
                    study, series_uid, sops[0], [1], media_types=("application/octet-stream",)
                )
                walk[series_uid] = (study, sops, first.PatientName, first.PixelData, frame)
        walks.append(walk)
    ours, theirs = walks
    assert ours.keys() == theirs.keys() and len(ours) == 3
    assert ours == theirs
