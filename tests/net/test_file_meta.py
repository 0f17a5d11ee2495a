"""The file meta group the C-STORE SCP writes itself equals what pynetdicom has pydicom write.

:func:`dicomlake.net.receive.file_meta` replaces ``event.encoded_dataset(include_meta=
True)``'s pydicom encoding of the group (most of a millisecond a file): byte for byte
the same for every transfer syntax and SOP class, odd and even UID lengths; what it
declines (a value that is not a plain UID) goes through pynetdicom as before.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContextTuple

from dicomlake.net.receive import encoded_file, file_meta
from dicomlake.sample import sample_file

SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEG2000Lossless,
    RLELossless,
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
]
CLASSES = [
    CTImageStorage,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    "1.2.840.10008.5.1.4.1.1.77.1.6",  # VL Whole Slide Microscopy (even length)
]
INSTANCES = ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498." + "1" * 38, "9" * 64]


def _event(sop_class: str, sop: str, syntax: str, data: bytes) -> Event:
    """A C-STORE event as pynetdicom's acceptor hands it to the handler."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop
    request.Priority = 0
    request.DataSet = io.BytesIO(data)
    context = PresentationContextTuple(1, UID(sop_class), UID(syntax))
    return Event(None, evt.EVT_C_STORE, {"request": request, "context": context})  # type: ignore[arg-type]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("sop_class", CLASSES)
def test_the_group_equals_pydicoms_byte_for_byte(sop_class: str, syntax: str) -> None:
    for sop in INSTANCES:
        event = _event(sop_class, sop, syntax, b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100")
        expected = event.encoded_dataset(include_meta=True)
        head = file_meta(sop_class, sop, syntax)
        assert head is not None
        assert head + event.request.DataSet.getvalue() == expected  # type: ignore[union-attr]
        assert encoded_file(event) == expected


@pytest.mark.parametrize(
    "sop", ["", "1.2.3.", "1..2", "01.2 ", "1.2.3\0", "1." + "2" * 63, "1.2.x", "1.2.३"]
)
def test_what_is_not_a_plain_uid_goes_through_pynetdicom(sop: str) -> None:
    assert file_meta(CTImageStorage, sop, ExplicitVRLittleEndian) is None
    assert file_meta(CTImageStorage, "1.2.3", sop) is None
    event = _event(CTImageStorage, "1.2.3", ExplicitVRLittleEndian, b"")
    try:
        event.request.AffectedSOPInstanceUID = sop or None  # type: ignore[union-attr]
    except ValueError:
        return  # pynetdicom's request cannot hold it: no C-STORE brings it
    try:
        expected = event.encoded_dataset(include_meta=True)
    except Exception as exc:  # pydicom refuses an empty value: so does the sink
        with pytest.raises(type(exc)):
            encoded_file(event)
    else:
        assert encoded_file(event) == expected


def test_a_whole_file_reads_back_in_pydicom_and_dcmtk(tmp_path: Path) -> None:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    event = _event(CTImageStorage, str(ds.SOPInstanceUID), ExplicitVRLittleEndian, body.getvalue())
    data = encoded_file(event)
    assert data == event.encoded_dataset(include_meta=True)
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.FileMetaInformationGroupLength == len(data) - 144 - len(body.getvalue())
    assert back.PatientName == ds.PatientName and back.PixelData == ds.PixelData
    if shutil.which("dcmdump") is None:
        pytest.skip("dcmtk not installed (apt-get install dcmtk)")
    dump = subprocess.run(["dcmdump", "-q", "-M", str(path)], capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr, dump.stderr
    assert f"(0002,0003) UI [{ds.SOPInstanceUID}]" in dump.stdout
    assert "(0002,0010) UI =LittleEndianExplicit" in dump.stdout
