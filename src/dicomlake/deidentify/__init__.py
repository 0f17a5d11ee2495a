"""De-identification by DICOM PS3.15 (Annex E): the Basic Profile and its options.

- :mod:`~dicomlake.deidentify.profile`: Table E.1-1, generated from the standard's table
  (``scripts/gen_deid_profile.py``);
- :mod:`~dicomlake.deidentify.options`: the option names and their CID 7050 codes;
- :mod:`~dicomlake.deidentify.keys`: the secret key and the keyed pseudonyms (UIDs,
  patient IDs and names, date shifts);
- :mod:`~dicomlake.deidentify.rules`: :func:`deidentify`, one dataset by the profile;
- :mod:`~dicomlake.deidentify.pixels`: burned-in text found and blanked (OCR, regions).

The job over a lake is :func:`dicomlake.deid` (:mod:`dicomlake.jobs.deid`).
"""

from __future__ import annotations

from dicomlake.deidentify.keys import Key, keygen
from dicomlake.deidentify.options import OPTIONS, method_codes, parse_options
from dicomlake.deidentify.pixels import RegionRules, burned_in_risk, clean_pixels
from dicomlake.deidentify.rules import deidentify, effective_action

__all__ = [
    "OPTIONS",
    "Key",
    "RegionRules",
    "burned_in_risk",
    "clean_pixels",
    "deidentify",
    "effective_action",
    "keygen",
    "method_codes",
    "parse_options",
]
