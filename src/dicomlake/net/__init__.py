"""DICOM networking (DIMSE) over the lake: a face beside the CLI and the viewer.

- :mod:`~dicomlake.net.peers`: peer addresses (``AET@HOST:PORT``), AE titles, and the
  TLS contexts of ``--tls-cert/--tls-key/--tls-ca``;
- :mod:`~dicomlake.net.receive`: a C-ECHO and C-STORE SCP writing into a store folder
  and the lake (``dicomlake receive``);
- :mod:`~dicomlake.net.pull`: C-FIND, then C-GET or C-MOVE from a PACS into the same
  store and lake (``dicomlake pull``);
- :mod:`~dicomlake.net.qr`: query/retrieve SCP answering from the lake
  (``dicomlake serve --dimse-port``).

pynetdicom is imported only by these modules, never at ``import dicomlake``.
"""
