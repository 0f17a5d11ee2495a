"""DICOM itself: headers, their JSON and typed tags, pixels and how to display them.

- :mod:`~dicomlake.dicom.header`: a file's header as DICOM JSON, through pydicom;
- :mod:`~dicomlake.dicom.native`: the same, through the native parser (C);
- :mod:`~dicomlake.dicom.json`: raw elements to DICOM JSON (PS3.18 Annex F);
- :mod:`~dicomlake.dicom.tags`: promoted tags as typed column values;
- :mod:`~dicomlake.dicom.pixels`: frames decoded and put through the display pipeline;
- :mod:`~dicomlake.dicom.drawing`: a display frame scaled and encoded as PNG;
- :mod:`~dicomlake.dicom.frames`: frames in physical units, windowed on request;
- :mod:`~dicomlake.dicom.geometry`: slice geometry of a series (volumes).

Nothing is imported here, so a module that needs only one of these loads only it.
"""
