"""A pixels-compatible Spark API: the ``dbx.pixels`` programs run with the imports changed.

Example:
    >>> from dicomlake.spark import Catalog  # doctest: +SKIP
    >>> from dicomlake.spark.dicom import *  # doctest: +SKIP
    >>> catalog = Catalog(spark)  # doctest: +SKIP
    >>> catalog_df = catalog.catalog("/data/dicom")  # doctest: +SKIP
    >>> meta_df = DicomMetaExtractor(catalog).transform(catalog_df)  # doctest: +SKIP
    >>> thumbnail_df = DicomThumbnailExtractor().transform(meta_df)  # doctest: +SKIP
    >>> catalog.save(thumbnail_df)  # doctest: +SKIP

pyspark (``pip install 'dicomlake[spark]'``) is imported on first use, never by
``import dicomlake``. Writing needs no Delta jars: executors write Parquet files and the
driver commits them through delta-rs.
"""

from __future__ import annotations

from dicomlake.spark.catalog import Catalog

__all__ = ["Catalog"]
