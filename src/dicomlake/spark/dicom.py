"""pixels' transformers (``from dbx.pixels.dicom import *``), on dicomlake's kernels.

Each transformer has ``transform(df) -> DataFrame`` and checks its input columns first.
:class:`DicomMetaExtractor` runs the same kernel as ``dicomlake ingest``
(:class:`~dicomlake.kernels.instances.InstancesKernel`) inside ``mapInArrow``, so a Spark run and
a local run give the same rows.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dicomlake.errors import DicomLakeError
from dicomlake.kernels.base import UNIT_TIMEOUT
from dicomlake.spark._compat import require_pyspark, to_arrow, to_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from dicomlake._types import FrameChoice, StorageOptions
    from dicomlake.deidentify.keys import Key
    from dicomlake.deidentify.pixels import RegionRules
    from dicomlake.dicom.frames import Window
    from dicomlake.kernels.apply import Function, Unit
    from dicomlake.kernels.deid import DeidKernel
    from dicomlake.kernels.patches import PatchOptions
    from dicomlake.spark.catalog import Catalog

__all__ = [
    "DicomApply",
    "DicomDeidentifier",
    "DicomMetaExtractor",
    "DicomPatcher",
    "DicomPillowThumbnailExtractor",
    "DicomThumbnailExtractor",
    "PathExtractor",
    "TagExtractor",
]

_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")


class MissingColumn(DicomLakeError, ValueError):
    """A transformer's input lacks a column it needs (``.column`` names it)."""

    def __init__(self, message: str, *, column: str) -> None:
        super().__init__(message)
        self.column = column


class _Transformer:
    """What every transformer shares: an input check, then ``transform``."""

    #: (column, what produces it) pairs the input must have.
    requires: tuple[tuple[str, str], ...] = (("path", "Catalog.catalog()"),)

    def _check(self, df: DataFrame) -> None:
        require_pyspark()
        have = set(df.columns)
        for column, producer in self.requires:
            if column not in have:
                raise MissingColumn(
                    f"{type(self).__name__} needs a '{column}' column, which {producer} "
                    f"produces; the DataFrame has {sorted(have)}",
                    column=column,
                )

    def transform(self, df: DataFrame) -> DataFrame:
        """Return ``df`` with this transformer's columns added."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DicomMetaExtractor(_Transformer):
    """Add ``meta`` (the header as DICOM JSON), the typed tag columns and ``status``/``error``.

    Args:
        catalog: The :class:`~dicomlake.spark.Catalog`; its ``storage_options`` are used
            to read object storage.
        bulk_threshold: Binary values longer than this many bytes become BulkDataURIs.
    """

    def __init__(self, catalog: Catalog | None = None, *, bulk_threshold: int = 1024) -> None:
        self.catalog = catalog
        self.bulk_threshold = bulk_threshold

    def transform(self, df: DataFrame) -> DataFrame:
        """Parse every file of ``df`` with the instances kernel.

        Args:
            df: A catalog DataFrame (``path``, and ``relative_path``, ``size`` or
                ``length``, ``modification_time`` or ``modificationTime`` if present).

        Returns:
            ``df`` with the columns of the lake's ``instances`` table added (columns of
            the same name, such as ``extension``, replaced by the kernel's).

        Raises:
            MissingColumn: ``df`` has no ``path`` column.
        """
        self._check(df)
        from dicomlake.engine.spark import INSTANCES_SCHEMA, chain, instances_mapper, merge_schema
        from dicomlake.kernels.instances import InstancesKernel

        out = merge_schema(to_arrow(df.schema), INSTANCES_SCHEMA)
        kernel = InstancesKernel(
            bulk_threshold=self.bulk_threshold,
            storage_options=self.catalog.storage_options if self.catalog else None,
        )
        return chain(df, instances_mapper(kernel, out), out)


class DicomThumbnailExtractor(_Transformer):
    """Add ``thumbnail``: a Spark image struct drawn through dicomlake's display pipeline.

    ``thumbnail`` is struct<origin, height, width, nChannels, mode, data> as in
    ``pyspark.ml.image.ImageSchema``: ``data`` holds raw 8-bit pixels, row-major, BGR
    for colour; ``mode`` is 0 (CV_8UC1, grey) or 16 (CV_8UC3, colour); ``origin`` is
    the path. Null for rows without pixel data or that cannot be drawn.

    Args:
        size: Longest side in pixels.
        frame: Which frame of a multi-frame object: 'first', 'middle' or an index.
        storage_options: Object-storage settings; by default those of the last
            :class:`Catalog` made, as the pixels program gives the extractor none.
    """

    requires = (
        ("path", "Catalog.catalog()"),
        ("has_pixel_data", "DicomMetaExtractor"),
    )

    def __init__(
        self,
        size: int = 256,
        frame: FrameChoice = "middle",
        *,
        storage_options: StorageOptions = None,
    ) -> None:
        from dicomlake.kernels.thumbnails import ThumbnailOptions

        if frame == "all":
            raise ValueError(
                "a thumbnail column holds one frame: use 'first', 'middle' or an index"
            )
        self.options = ThumbnailOptions(size=size, frame=frame)
        if storage_options is None:
            from dicomlake.spark.catalog import active_storage_options

            storage_options = active_storage_options()
        self.storage_options = storage_options

    def transform(self, df: DataFrame) -> DataFrame:
        """Draw one thumbnail per row with pixel data.

        Args:
            df: The output of :class:`DicomMetaExtractor`.

        Returns:
            ``df`` with ``thumbnail`` added.

        Raises:
            MissingColumn: ``df`` lacks ``path`` or ``has_pixel_data``.
        """
        self._check(df)
        from dicomlake.engine.spark import THUMBNAIL_TYPE, chain, merge_schema, thumbnails_mapper

        out = merge_schema(to_arrow(df.schema), pa.schema([("thumbnail", THUMBNAIL_TYPE)]))
        mapper = thumbnails_mapper(self.options, out, storage_options=self.storage_options)
        return chain(df, mapper, out)


class DicomPillowThumbnailExtractor(DicomThumbnailExtractor):
    """pixels' Pillow variant; dicomlake draws with Pillow already, so it is the same."""


def split_path(path: str) -> tuple[str, str]:
    """``(dirname, basename)`` of a path or URI; a zip member's folder stays a zip URI.

    Example:
        >>> split_path("zip://series/CT.dcm::file:///data/a.zip")
        ('zip://series::file:///data/a.zip', 'CT.dcm')
    """
    if path.startswith("zip://") and "::" in path:
        member, archive = path[len("zip://") :].split("::", 1)
        folder, name = posixpath.split(member)
        return f"zip://{folder}::{archive}", name
    folder, name = posixpath.split(path)
    return folder, name


def _path_columns(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    from dicomlake.catalog import extension, path_tags

    for batch in batches:
        paths = batch.column(batch.schema.get_field_index("path")).to_pylist()
        index = batch.schema.get_field_index("relative_path")
        relative = batch.column(index).to_pylist() if index >= 0 else [None] * len(paths)
        parts = [split_path(p) for p in paths]
        columns = {
            "extension": pa.array(
                [extension(r or p) for p, r in zip(paths, relative, strict=True)]
            ),
            "path_tags": pa.array(
                [
                    path_tags(r if r is not None else split_path(p)[1])
                    for p, r in zip(paths, relative, strict=True)
                ],
                pa.list_(pa.string()),
            ),
            "basename": pa.array([name for _, name in parts], pa.string()),
            "dirname": pa.array([folder for folder, _ in parts], pa.string()),
        }
        names = [n for n in batch.schema.names if n not in columns] + list(columns)
        arrays = [columns[n] if n in columns else batch.column(n) for n in names]
        yield pa.RecordBatch.from_arrays(arrays, names=names)


class PathExtractor(_Transformer):
    """Add columns derived from the path: ``extension``, ``path_tags``, ``basename``, ``dirname``.

    ``extension`` and ``path_tags`` are computed as :meth:`Catalog.catalog` computes
    them (from ``relative_path`` when the DataFrame has it).
    """

    def transform(self, df: DataFrame) -> DataFrame:
        """Return ``df`` with the path columns added (or replaced).

        Raises:
            MissingColumn: ``df`` has no ``path`` column.
        """
        self._check(df)
        from dicomlake.engine.spark import chain, nullable

        schema = to_arrow(df.schema)
        added = [
            pa.field("extension", pa.string()),
            pa.field("path_tags", pa.list_(pa.string())),
            pa.field("basename", pa.string()),
            pa.field("dirname", pa.string()),
        ]
        names = {f.name for f in added}
        out = nullable(pa.schema([f for f in schema if f.name not in names] + added))
        return chain(df, _path_columns, out)


def tag_key(key: str) -> str:
    """The ``GGGGEEEE`` key of a DICOM keyword or 8-hex-digit tag.

    Raises:
        ValueError: ``key`` is neither a known keyword nor 8 hex digits.

    Example:
        >>> tag_key("PatientAge"), tag_key("0010101a")
        ('00101010', '0010101A')
    """
    if _HEX_TAG.fullmatch(key):
        return key.upper()
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(key)
    if tag is None:
        raise ValueError(
            f"{key!r} is neither a DICOM keyword (case-sensitive, as in 'PatientAge') nor "
            "8 hex digits (as in '00101010')"
        )
    return f"{tag:08X}"


class TagExtractor(_Transformer):
    """Lift chosen tags out of ``meta`` into string columns (first value, as SQL ``tag()``).

    A person name gives its alphabetic form; an empty value gives null. Columns are
    named as the tags were given (``'PatientAge'`` or ``'00101010'``).

    Args:
        tags: Keywords or ``GGGGEEEE`` tags.

    Raises:
        ValueError: A tag is neither a DICOM keyword nor 8 hex digits.
    """

    requires = (("meta", "DicomMetaExtractor"),)

    def __init__(self, tags: Sequence[str]) -> None:
        if isinstance(tags, str):
            tags = [tags]
        self.tags = {name: tag_key(name) for name in tags}

    def transform(self, df: DataFrame) -> DataFrame:
        """Return ``df`` with one string column per tag.

        Raises:
            MissingColumn: ``df`` has no ``meta`` column.
        """
        self._check(df)
        from pyspark.sql import functions as F

        columns = {}
        for name, key in self.tags.items():
            element = f"$.{key}"
            value = F.when(
                F.get_json_object("meta", f"{element}.vr") == F.lit("PN"),
                F.get_json_object("meta", f"{element}.Value[0].Alphabetic"),
            ).otherwise(F.get_json_object("meta", f"{element}.Value[0]"))
            columns[name] = F.when(value == F.lit(""), F.lit(None)).otherwise(value)
        return df.withColumns(columns)

    def __repr__(self) -> str:
        return f"TagExtractor(tags={list(self.tags)!r})"


def _patches_mapper(
    options: PatchOptions, storage_options: StorageOptions
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: each input row's file tiled by the patches kernel.

    Rows whose ``status`` is not 'ok' or whose ``has_pixel_data`` is false (when the
    DataFrame has those columns) give no patches; without ``NumberOfFrames`` the
    kernel reads each header first, and skips files that are not DICOM or have no
    pixel data.
    """
    import datetime as dt

    from dicomlake.engine.spark import refs_from_batch
    from dicomlake.kernels.patches import PatchSource, patch_instance, patches_batch

    def column(batch: pa.RecordBatch, name: str) -> list[Any] | None:
        index = batch.schema.get_field_index(name)
        return batch.column(index).to_pylist() if index >= 0 else None

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import warnings

        warnings.simplefilter("ignore")  # pydicom warns on odd values; rows say it
        created_at = dt.datetime.now(dt.UTC)
        for batch in batches:
            n = batch.num_rows
            flags = column(batch, "has_pixel_data") or [True] * n
            statuses = column(batch, "status") or ["ok"] * n
            frames = column(batch, "NumberOfFrames")
            uids = column(batch, "SOPInstanceUID") or [None] * n
            rows: list[dict[str, Any]] = []
            for i, ref in enumerate(refs_from_batch(batch)):
                if not flags[i] or statuses[i] != "ok":
                    continue
                count = None if frames is None else max(int(frames[i] or 1), 1)
                source = PatchSource(ref.path, uids[i], count, ref.size, ref.mtime)
                rows.extend(patch_instance(source, options, storage_options=storage_options).rows)
            if rows:
                yield patches_batch(rows, created_at)

    return run


class DicomPatcher(_Transformer):
    """Tile frames into patches: one output row per patch, as in the lake's ``patches`` table.

    Runs the same kernel as :class:`dicomlake.ml.DicomPatcher` (the local patcher that
    writes ``<lake>/patches``), so both give the same rows; save them as the lake's
    table with ``Catalog(spark, table="patches", lake=LAKE).save(df)``.

    Args:
        size: Side of a patch in pixels.
        stride: Step between patches (default ``size``; at most ``size``).
        min_tissue: Patches whose ``tissue_fraction`` is below this are dropped.
        store_pixels: Fill ``pixels`` with each patch's float32 values.
        frames: 'all', 'first', 'middle' or a 0-based index.
        inputCol: The column holding the file paths (pixels' name for it).
        outputCol: Accepted for pixels' signature and ignored: the output has one row
            per patch, not a column.
        storage_options: Object-storage settings; by default those of the last
            :class:`Catalog` made.

    Raises:
        ValueError: An option is out of range.
    """

    def __init__(
        self,
        size: int = 256,
        stride: int | None = None,
        min_tissue: float = 0.0,
        store_pixels: bool = False,
        frames: FrameChoice = "all",
        *,
        inputCol: str = "path",
        outputCol: str | None = None,
        storage_options: StorageOptions = None,
    ) -> None:
        from dicomlake.kernels.patches import PatchOptions

        self.options = PatchOptions(
            size=size,
            stride=stride,
            min_tissue=min_tissue,
            store_pixels=store_pixels,
            frames=frames,
        )
        self.input_col = inputCol
        self.requires = ((inputCol, "Catalog.catalog()"),)
        if storage_options is None:
            from dicomlake.spark.catalog import active_storage_options

            storage_options = active_storage_options()
        self.storage_options = storage_options

    def transform(self, df: DataFrame) -> DataFrame:
        """Tile the file of every row of ``df``.

        Args:
            df: A catalog DataFrame (``path``; ``size``/``length`` and
                ``modification_time``/``modificationTime`` are copied when present), or
                the output of :class:`DicomMetaExtractor` (then its ``status``,
                ``has_pixel_data``, ``NumberOfFrames`` and ``SOPInstanceUID`` are used).

        Returns:
            A DataFrame in the ``patches`` table's schema (``row_id``, ``path``,
            ``SOPInstanceUID``, ``frame``, ``x``, ``y``, ``width``, ``height``,
            ``tissue_fraction``, ``status``, ``error``, ``pixels``, ...): one row per
            patch kept, one error row per frame (or file) that cannot be decoded.

        Raises:
            MissingColumn: ``df`` has no ``path`` (or ``inputCol``) column.
        """
        self._check(df)
        from dicomlake.engine.spark import nullable
        from dicomlake.schema import PATCHES_SCHEMA

        if self.input_col != "path":
            df = df.withColumn("path", df[self.input_col])
        df = df.where(df["path"].isNotNull())  # a zip member has no local_path
        mapper = _patches_mapper(self.options, self.storage_options)
        return df.mapInArrow(mapper, to_spark(nullable(PATCHES_SCHEMA)))

    def __repr__(self) -> str:
        o = self.options
        return (
            f"DicomPatcher(size={o.size}, stride={o.step}, min_tissue={o.min_tissue}, "
            f"store_pixels={o.store_pixels}, frames={o.frames!r})"
        )


def _deid_mapper(
    kernel: DeidKernel,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: each input row's file de-identified by the kernel.

    Rows whose ``status`` is not 'ok' (when the DataFrame has that column) are left out.
    """
    from dicomlake.engine.spark import refs_from_batch
    from dicomlake.kernels.deid import TABLE

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import warnings

        warnings.simplefilter("ignore")  # pydicom warns on odd values; rows say it
        for batch in batches:
            index = batch.schema.get_field_index("status")
            statuses = batch.column(index).to_pylist() if index >= 0 else None
            refs = refs_from_batch(batch)
            rows = [
                kernel.row(ref)
                for i, ref in enumerate(refs)
                if statuses is None or statuses[i] == "ok"
            ]
            if rows:
                yield kernel.batch(rows)[TABLE]

    return run


class DicomDeidentifier(_Transformer):
    """De-identify each row's file into ``out``: one output row per file, as in ``deid``.

    Runs the kernel of ``dicomlake deid`` (:class:`~dicomlake.kernels.deid.DeidKernel`),
    so for the same file, key and options both write the same bytes to the same
    ``<out>/<study>/<series>/<instance>.dcm``; save the rows as the lake's table with
    ``Catalog(spark, table="deid", lake=LAKE).save(df)``.

    Args:
        out: Destination folder (local, on every executor) or URL (``s3://b/prefix``).
        key: The pseudonym key: a :class:`~dicomlake.deidentify.keys.Key`, its raw bytes, or
            the path of a key file (read here, on the driver).
        options: PS3.15 option names (:mod:`dicomlake.deidentify.options`).
        regions: Region rules for ``clean-pixel-data`` (a file or loaded rules).
        inputCol: The column holding the file paths.
        storage_options: Object-storage settings; by default those of the last
            :class:`Catalog` made.

    Raises:
        DeidKeyError: The key is missing or short.
        ValueError: An unknown option name, or unreadable region rules.
    """

    def __init__(
        self,
        out: str,
        key: Key | bytes | str,
        options: Sequence[str] = (),
        *,
        regions: str | RegionRules | None = None,
        inputCol: str = "path",
        storage_options: StorageOptions = None,
    ) -> None:
        from dicomlake.deidentify.options import parse_options
        from dicomlake.jobs.deid import load_key, load_regions
        from dicomlake.kernels.deid import DeidKernel

        if storage_options is None:
            from dicomlake.spark.catalog import active_storage_options

            storage_options = active_storage_options()
        self.input_col = inputCol
        self.requires = ((inputCol, "Catalog.catalog()"),)
        self.kernel = DeidKernel(
            load_key(key),
            parse_options(options),
            out,
            regions=load_regions(regions),
            storage_options=storage_options,
        )

    def transform(self, df: DataFrame) -> DataFrame:
        """De-identify the file of every row of ``df``.

        Args:
            df: A catalog DataFrame (``path``; ``size``/``length`` and
                ``modification_time``/``modificationTime`` are copied when present) or
                the output of :class:`DicomMetaExtractor` (rows not 'ok' are left out).

        Returns:
            A DataFrame in the ``deid`` table's schema: ``row_id``, ``path``,
            ``destination``, ``output``, ``status``, ``reason``, ``options``,
            ``key_fingerprint``, the new ``SOPInstanceUID``, ...

        Raises:
            MissingColumn: ``df`` has no ``path`` (or ``inputCol``) column.
        """
        self._check(df)
        from dicomlake.engine.spark import nullable
        from dicomlake.schema import DEID_SCHEMA

        if self.input_col != "path":
            df = df.withColumn("path", df[self.input_col])
        df = df.where(df["path"].isNotNull())
        return df.mapInArrow(_deid_mapper(self.kernel), to_spark(nullable(DEID_SCHEMA)))

    def __repr__(self) -> str:
        k = self.kernel
        return (
            f"DicomDeidentifier(out={k.destination!r}, key_fingerprint={k.fingerprint!r}, "
            f"options={k.option_list!r})"
        )


class DicomApply(_Transformer):
    """Run your own function over frames, instances or series: the rows of ``dicomlake.apply``.

    Runs the kernel of ``dicomlake apply`` (:class:`~dicomlake.kernels.apply.ApplyKernel`),
    so for the same files, function and version both give the same rows: the unit's
    keys (``row_id``, ``path``, ``SOPInstanceUID`` and ``frame``, or
    ``SeriesInstanceUID``), ``status``, ``error``, ``version``, ``size``,
    ``modification_time``, ``created_at``, then one typed column per key the function
    returns. A function that raises, a frame that does not decode, a series that is
    not one regular volume, each is an error row. Save the rows as the lake's table
    with ``Catalog(spark, table=NAME, lake=LAKE).save(df)``: it is a view of that name
    in SQL afterwards. A save appends (or, with ``mode="overwrite"``, replaces the whole
    table). Save a re-run with ``mode="replace"``: in the same one commit, every
    earlier row of each saved unit's ``row_id`` gives way to its new rows, and units
    not in this run keep theirs, so the table holds one generation of rows per unit,
    as ``dicomlake.apply`` leaves (it needs the default ``delta-rs`` writer).

    A DataFrame's schema is fixed before its rows are made, so the function's columns
    are declared with ``columns``, or inferred here, on the driver, by running the
    function on the first ``sample`` units (which makes :meth:`transform` run a small
    Spark job; for series, one that reads the whole meta DataFrame to find every slice
    of the sampled series: declare ``columns`` or cache ``meta_df`` on large inputs). A
    later row whose values do not fit them is an error row.

    Args:
        fn: ``"package.module:name"`` (imported on each executor) or a picklable
            callable; it takes one item (see :mod:`dicomlake.kernels.apply`) and
            returns a dict of numbers, strings, bytes or lists of them.
        unit: ``'frame'``, ``'instance'`` or ``'series'``.
        version: Your label of ``fn``, in every row (``dicomlake apply`` re-runs
            units whose rows carry another).
        window: None (physical values), ``(center, width)`` or ``'dicom'``.
        size: Resize frames to ``size`` x ``size`` or (height, width) (frame and
            instance units).
        columns: The function's columns: a pyarrow schema, or names to Arrow types or
            type names (``{"mean": "double", "label": "string"}``); None infers them.
        sample: Most units to try on the driver when inferring ``columns``.
        unit_timeout: Seconds one unit may take (a frame unit: all frames of its
            file) before it becomes an error row (``Timeout: ...``), as with
            ``dicomlake.apply``; None: no limit. The executor interrupts Python code
            with a timer signal: a call stuck inside C code ends when it returns.
        inputCol: The column holding the file paths.
        storage_options: Object-storage settings; by default those of the last
            :class:`Catalog` made.

    Raises:
        ValueError: An unknown unit, an invalid window, size, column type, function
            name or ``unit_timeout``, or ``size`` with series units.
        ImportError: The function's module cannot be imported on the driver.
        AttributeError: The module has no such function.
        TypeError: ``fn`` is not callable.

    Example:
        >>> hu = DicomApply("mypkg.features:hu_stats", unit="series")  # doctest: +SKIP
        >>> Catalog(spark, table="hu", lake="lake").save(hu.transform(meta_df))  # doctest: +SKIP

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        fn: Function,
        unit: Unit = "frame",
        version: str = "1",
        *,
        window: Window = None,
        size: int | tuple[int, int] | None = None,
        columns: pa.Schema | Mapping[str, pa.DataType | str] | None = None,
        sample: int = 16,
        unit_timeout: float | None = UNIT_TIMEOUT,
        inputCol: str = "path",
        storage_options: StorageOptions = None,
    ) -> None:
        from dicomlake.dicom.frames import check_window
        from dicomlake.engine.spark_apply import declared_columns
        from dicomlake.kernels.apply import ApplyOptions, resolve_function
        from dicomlake.ml.frame_dataset import check_size

        self.options = ApplyOptions(fn, unit, str(version), check_window(window), check_size(size))
        resolve_function(fn)  # a bad name fails here, not in every task
        self.columns = None if columns is None else declared_columns(columns)
        if sample < 1:
            raise ValueError(f"sample must be at least 1, got {sample}")
        if unit_timeout is not None and not unit_timeout > 0:
            raise ValueError(
                f"unit_timeout must be a positive number of seconds or None, got {unit_timeout}"
            )
        self.sample = sample
        self.unit_timeout = unit_timeout
        self.input_col = inputCol
        self.requires = ((inputCol, "Catalog.catalog()"),)
        if unit == "series":
            from dicomlake.engine.spark_apply import SLICE_COLUMNS

            needed = (*SLICE_COLUMNS, "status", "has_pixel_data")
            self.requires += tuple((c, "DicomMetaExtractor") for c in needed if c != "path")
        if storage_options is None:
            from dicomlake.spark.catalog import active_storage_options

            storage_options = active_storage_options()
        self.storage_options = storage_options

    def transform(self, df: DataFrame) -> DataFrame:
        """Run the function over every unit of ``df``'s files.

        Args:
            df: Frame and instance units: a catalog DataFrame (every file is a unit; one
                that is not DICOM or has no pixel data is an error row) or the output of
                :class:`DicomMetaExtractor` (its ``ok`` rows with pixel data are units,
                as in the lake). Series units: the output of
                :class:`DicomMetaExtractor`, whose rows are grouped by series.

        Returns:
            A DataFrame in the apply table's schema: one row per unit.

        Raises:
            MissingColumn: ``df`` has no ``path`` (or ``inputCol``) column, or, for
                series units, lacks a column of :class:`DicomMetaExtractor`'s output
                that geometry needs (``SeriesInstanceUID``, ``ImagePositionPatient``...).
            ValueError: ``columns`` was not given and cannot be inferred.
        """
        self._check(df)
        import datetime as dt

        from dicomlake.engine import spark_apply
        from dicomlake.engine.spark import chain

        if self.input_col != "path":
            df = df.withColumn("path", df[self.input_col])
        created_at = dt.datetime.now(dt.UTC)
        options, storage = self.options, self.storage_options
        if options.unit == "series":
            df = spark_apply.slice_rows(df)
        columns = self.columns
        if columns is None:
            columns = spark_apply.infer_columns(
                df, options, sample=self.sample, storage_options=storage
            )
        out = spark_apply.output_schema(options.unit, columns)
        if options.unit == "series":
            run = spark_apply.series_function(
                options,
                out,
                storage_options=storage,
                created_at=created_at,
                unit_timeout=self.unit_timeout,
            )
            return df.groupBy("SeriesInstanceUID").applyInArrow(run, to_spark(out))
        mapper = spark_apply.units_mapper(
            options,
            out,
            storage_options=storage,
            created_at=created_at,
            unit_timeout=self.unit_timeout,
        )
        return chain(df, mapper, out)

    def __repr__(self) -> str:
        o = self.options
        fn = o.fn if isinstance(o.fn, str) else getattr(o.fn, "__qualname__", repr(o.fn))
        return f"DicomApply(fn={fn!r}, unit={o.unit!r}, version={o.version!r})"
