"""DICOM parsing: headers as DICOM JSON, and promoted tags as typed values."""

from dicomlake.dicom.header import Header, NotDicom, read_header
from dicomlake.dicom.tags import promoted_values

__all__ = ["Header", "NotDicom", "promoted_values", "read_header"]
