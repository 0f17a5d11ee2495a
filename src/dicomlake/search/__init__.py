"""Searching the lake by DICOM attributes: the query service under the faces.

The DICOMweb routes of the viewer (QIDO-RS, WADO-RS) and the DIMSE query/retrieve SCP
(C-FIND, C-GET, C-MOVE) ask the same questions of a lake, so they share this package:

- :mod:`~dicomlake.search.connection`: one locked-down, read-only DuckDB database
  of the lake's views, refreshed when the lake changes, with cursors that run each
  query under a time limit (:class:`~dicomlake.search.connection.QueryTimeout`).
- :mod:`~dicomlake.search.attributes`: levels, unique keys, default return
  attributes and which attributes the index holds.
- :mod:`~dicomlake.search.index`: the lake's studies, series and instances copied
  into memory once per version of the lake.
- :mod:`~dicomlake.search.query`: a search read into conditions (matching of PS3.4
  C.2.2.2 and PS3.18 §8.3.4) and run on the index, each match as DICOM JSON.

It uses the lake, dicom and storage layers only; nothing here knows HTTP or DIMSE.
"""
