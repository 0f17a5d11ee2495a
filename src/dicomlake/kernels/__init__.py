"""Kernels: file references in, one Arrow RecordBatch per table out (see ``base``).

- :mod:`~dicomlake.kernels.instances`: headers -> ``instances`` rows;
- :mod:`~dicomlake.kernels.thumbnails`: frames drawn -> ``thumbnails`` rows;
- :mod:`~dicomlake.kernels.patches`: frames tiled -> ``patches`` rows.
"""
