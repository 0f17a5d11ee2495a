"""De-identification by DICOM PS3.15 (Annex E): the Basic Profile and its options.

(Being built: see the module docstrings of ``profile``, ``keys``, ``rules``, ``pixels``
and ``dicomlake.jobs.deid``.)
"""
