"""Jobs: which rows (SQL over the lake), which kernel, which writer.

- :mod:`~dicomlake.jobs.ingest`: files -> ``instances`` (and ``thumbnails``);
- :mod:`~dicomlake.jobs.thumbnails`: instances without a thumbnail -> ``thumbnails``;
- :mod:`~dicomlake.jobs.patches`: instances picked by SQL -> ``patches``;
- :mod:`~dicomlake.jobs.volumes`: series geometry from SQL alone -> ``volumes``.

:func:`~dicomlake.jobs.runner.run_kernel` is what the file jobs share: it runs a
kernel over chosen files on the local engine and hands each task's rows to the
table's writer.
"""
