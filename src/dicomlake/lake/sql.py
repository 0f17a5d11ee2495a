"""SQL over a lake: one in-memory DuckDB connection with the lake's views.

``deltalake`` resolves which Parquet files make up the table version, and DuckDB reads
exactly those files with its built-in Parquet reader, pushing projections and filters
into the scan. No DuckDB extension is needed (the ``delta`` extension would be a
download). The connection reads the table version that was current when it was made:
later commits neither change nor break its answers (until a vacuum deletes files).

Why not ``DeltaTable.to_pyarrow_dataset()`` registered in DuckDB: delta-rs 1.6.6 writes
the files of a MERGE or DELETE with ``string_view`` columns, and pyarrow 26 has no
comparison kernels for them, so any pushed-down filter on a string column (``WHERE
status = 'ok'``) fails once a file was replaced or a row deleted (pyarrow evaluates the
filter on the file's own types, before casting to the dataset's schema).

Object-store lakes (``s3://``) are read the same way: the fsspec file system of the
lake's protocol (s3fs, with the :class:`~dicomlake.storage.StorageConfig`'s fsspec
options) is registered in DuckDB, whose Parquet reader then reads the table's files
through it, so no ``httpfs`` download is needed. Only a protocol fsspec does not know
falls back to the Arrow dataset (and to its string filter limitation).

Views: ``instances`` (the table), ``series`` and ``studies`` (aggregates of the
``status = 'ok'`` rows), and ``thumbnails``, ``volumes`` (series geometry),
``patches``, ``segments`` (segmentation labels) and ``acquisition`` when the lake has
those tables; with ``acquisition``, the per-series views ``ct_series``, ``mr_series``,
``pt_series``, ``sm_series`` and ``contrast``; and one view per user table
(``dicomlake apply --table NAME``, found as :mod:`dicomlake.lake.user_tables` says).
Helpers: the macro ``tag(meta, key)`` and the table ``dicom_keywords(keyword, tag)``.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any, Final

import duckdb

from dicomlake._types import StorageOptions
from dicomlake.dicom.keywords import keyword_table
from dicomlake.errors import LakeError
from dicomlake.lake.location import (
    ACQUISITION_TABLE,
    INSTANCES_TABLE,
    OPTIONAL_TABLES,
    open_table,
    table_exists,
)
from dicomlake.lake.user_tables import user_tables
from dicomlake.storage.locations import url_local_path
from dicomlake.storage.settings import fsspec_options

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

_SERIES_SQL = """
CREATE VIEW series AS
SELECT
    "SeriesInstanceUID",
    min("StudyInstanceUID") AS "StudyInstanceUID",
    min("PatientID") AS "PatientID",
    min("PatientName") AS "PatientName",
    min("Modality") AS "Modality",
    min("SeriesDescription") AS "SeriesDescription",
    min("SeriesNumber") AS "SeriesNumber",
    min("BodyPartExamined") AS "BodyPartExamined",
    min("Manufacturer") AS "Manufacturer",
    min("ManufacturerModelName") AS "ManufacturerModelName",
    count(*) AS n_instances,
    coalesce(sum(CASE WHEN has_pixel_data THEN coalesce("NumberOfFrames", 1) ELSE 0 END), 0)
        ::BIGINT AS n_frames,
    list_sort(list_distinct(list("Modality"))) AS modalities,
    min("StudyDate") AS first_date,
    max("StudyDate") AS last_date,
    sum(size)::BIGINT AS total_size,
    CASE WHEN min("Rows") = max("Rows") THEN min("Rows") END AS "Rows",
    CASE WHEN min("Columns") = max("Columns") THEN min("Columns") END AS "Columns",
    min("SliceThickness") AS min_slice_thickness,
    max("SliceThickness") AS max_slice_thickness,
    min("InstanceNumber") AS min_instance_number,
    max("InstanceNumber") AS max_instance_number,
    list_sort(list_distinct(list("SOPClassUID"))) AS sop_class_uids,
    list_sort(list_distinct(list("TransferSyntaxUID"))) AS transfer_syntaxes,
    max(ingested_at) AS ingested_at
FROM instances
WHERE status = 'ok' AND "SeriesInstanceUID" IS NOT NULL
GROUP BY "SeriesInstanceUID"
"""

_STUDIES_SQL = """
CREATE VIEW studies AS
SELECT
    "StudyInstanceUID",
    min("PatientID") AS "PatientID",
    min("PatientName") AS "PatientName",
    min("PatientSex") AS "PatientSex",
    min("PatientAge") AS "PatientAge",
    min("StudyDate") AS "StudyDate",
    min("StudyTime") AS "StudyTime",
    min("StudyDescription") AS "StudyDescription",
    min("AccessionNumber") AS "AccessionNumber",
    count(DISTINCT "SeriesInstanceUID") AS n_series,
    count(*) AS n_instances,
    coalesce(sum(CASE WHEN has_pixel_data THEN coalesce("NumberOfFrames", 1) ELSE 0 END), 0)
        ::BIGINT AS n_frames,
    list_sort(list_distinct(list("Modality"))) AS modalities,
    min("StudyDate") AS first_date,
    max("StudyDate") AS last_date,
    sum(size)::BIGINT AS total_size,
    max(ingested_at) AS ingested_at
FROM instances
WHERE status = 'ok' AND "StudyInstanceUID" IS NOT NULL
GROUP BY "StudyInstanceUID"
"""

# ``tag(meta, key)``: the key becomes "GGGGEEEE" (a keyword looked up in the table
# ``dicom_keywords``: once per query for a constant key; a map of all 5,000 built at
# every connection cost more than the rest of its views); one json_extract pulls that
# tag's small element out of ``meta``, the only parse of the whole header; the lambda
# binds the element so that a WHERE clause does not extract it three times. The key may
# be a column, not only a constant. An unknown keyword raises instead of quietly giving
# NULL on every row.
_TAG_SQL = """
CREATE MACRO _dicom_tag_key(key) AS
    CASE
        WHEN regexp_full_match(key, '[0-9A-Fa-f]{8}') THEN upper(key)
        ELSE coalesce(
            (SELECT k.tag FROM main.dicom_keywords k WHERE k.keyword = key),
            error('tag(): ' || key || ' is neither a DICOM keyword (case-sensitive, as in '
                || 'PatientAge) nor 8 hex digits (as in 00101010)'))
    END;
CREATE MACRO tag(meta, key) AS
    list_transform(
        [json_extract(meta, '$."' || _dicom_tag_key(key) || '"')],
        lambda e: nullif(
            CASE WHEN json_extract_string(e, '$.vr') = 'PN'
                THEN json_extract_string(e, '$.Value[0].Alphabetic')
                ELSE json_extract_string(e, '$.Value[0]')
            END, '')
    )[1];
"""


#: DuckDB schema for helper tables that users need not see in SHOW TABLES.
_PRIVATE = "dicomlake_internal"
#: The ``acquisition`` table's stored rows, in a connection of :func:`connect`.
ACQUISITION_ROWS: Final = f'{_PRIVATE}."{ACQUISITION_TABLE}"'
#: The ``acquisition`` view: the table's rows of the instances as they are now. Ingest
#: commits a batch's acquisition rows just before its instance rows, so a crash in
#: between leaves rows of instances never committed, or a second row for an instance
#: extracted again; those are not the instance row's (``row_id``, ``ingested_at``).
#: ``dicomlake optimize`` removes them; it reads the stored rows, all of them, as
#: :data:`ACQUISITION_ROWS`.
_ACQUISITION_SQL = f"""
CREATE VIEW {ACQUISITION_TABLE} AS
SELECT a.* FROM {ACQUISITION_ROWS} a
SEMI JOIN (SELECT row_id, ingested_at FROM instances WHERE status = 'ok') i
    ON a.row_id = i.row_id AND a.ingested_at = i.ingested_at
"""


def _constant(name: str) -> str:
    # an attribute the same in every instance of a series: the smallest, to be stable
    return f'min("{name}") AS "{name}"'


def _min_max(name: str) -> str:
    # a list per instance (one value per frame), dose-modulated across the series
    return f'min(list_min("{name}")) AS "{name}_min", max(list_max("{name}")) AS "{name}_max"'


def _distinct(name: str) -> str:
    # every distinct value of the series, sorted (echo times, b-values)
    return (
        f'list_sort(list_distinct(flatten(list("{name}") FILTER (WHERE "{name}" IS NOT NULL)))) '
        f'AS "{name}"'
    )


_PIXEL_COLUMNS = [
    _constant(name)
    for name in ("PixelSpacing_row_mm", "PixelSpacing_col_mm", "Rows", "Columns", "SliceThickness")
]


_VOLUME = "list_contains(\"ImageType\", 'VOLUME')"


def _series_view(name: str, where: str, columns: list[str], having: str = "") -> str:
    listing = ",\n    ".join(columns)
    return f"""
CREATE VIEW {name} AS
SELECT
    "SeriesInstanceUID",
    min("Modality") AS "Modality",
    count(*) AS n_instances,
    {listing}
FROM acquisition
WHERE "SeriesInstanceUID" IS NOT NULL AND ({where})
GROUP BY "SeriesInstanceUID"
{having}
"""


#: Per-modality series views over the ``acquisition`` table (see the README).
_ACQUISITION_VIEWS = (
    _series_view(
        "ct_series",
        "\"Modality\" = 'CT'",
        [
            _constant("ImageType"),
            *_PIXEL_COLUMNS,
            *map(_constant, ("KVP", "ScanOptions", "ConvolutionKernel", "GantryDetectorTilt")),
            _min_max("XRayTubeCurrent"),
            _constant("FilterType"),
            _min_max("Exposure"),
            _min_max("ExposureTime"),
            *map(
                _constant,
                ("DataCollectionDiameter", "ReconstructionDiameter", "SpiralPitchFactor"),
            ),
        ],
    ),
    _series_view(
        "mr_series",
        "\"Modality\" = 'MR'",
        [
            _constant("ImageType"),
            *map(
                _constant,
                (
                    "MagneticFieldStrength",
                    "ScanningSequence",
                    "SequenceVariant",
                    "MRAcquisitionType",
                ),
            ),
            _distinct("EchoTime"),
            *map(
                _constant,
                (
                    "RepetitionTime",
                    "EchoTrainLength",
                    "FlipAngle",
                    "PixelBandwidth",
                    "ImagingFrequency",
                    "ImagedNucleus",
                ),
            ),
            *_PIXEL_COLUMNS,
            *map(_constant, ("InversionTime", "ReceiveCoilName", "SequenceName")),
            _distinct("DiffusionBValue"),
            _constant("NumberOfTemporalPositions"),
        ],
    ),
    _series_view(
        "pt_series",
        "\"Modality\" = 'PT'",
        [
            *map(
                _constant,
                (
                    "SeriesType",
                    "Units",
                    "DecayCorrection",
                    "CorrectedImage",
                    "RandomsCorrectionMethod",
                    "ReconstructionMethod",
                ),
            ),
            _distinct("ActualFrameDuration"),
            *map(
                _constant,
                (
                    "ScatterCorrectionMethod",
                    "AttenuationCorrectionMethod",
                    "RadionuclideCodeMeaning",
                    "RadionuclideTotalDose",
                    "RadiopharmaceuticalStartTime",
                    "Radiopharmaceutical",
                ),
            ),
            *_PIXEL_COLUMNS,
            *map(_constant, ("NumberOfSlices", "NumberOfTimeSlices")),
        ],
    ),
    _series_view(
        "sm_series",
        "\"Modality\" = 'SM'",
        [
            # the pyramid's levels are its VOLUME instances; the base level is the largest
            *(
                f'coalesce(max("{name}") FILTER (WHERE {_VOLUME}), max("{name}")) AS "{name}"'
                for name in ("TotalPixelMatrixColumns", "TotalPixelMatrixRows")
            ),
            f'count(DISTINCT "TotalPixelMatrixColumns") FILTER (WHERE {_VOLUME}) AS levels',
            'min("PixelSpacing_row_mm") AS "min_PixelSpacing_row_mm"',
            'min("PixelSpacing_col_mm") AS "min_PixelSpacing_col_mm"',
            'max("TotalPixelMatrixFocalPlanes") AS "TotalPixelMatrixFocalPlanes"',
            'list_sort(list_distinct(list("OpticalPathIdentifier"))) AS "OpticalPathIdentifier"',
            _constant("ObjectiveLensPower"),
            _constant("ContainerIdentifier"),
        ],
    ),
    _series_view(
        "contrast",
        "TRUE",
        [
            _constant(name)
            for name in ("ContrastBolusAgent", "ContrastBolusIngredient", "ContrastBolusRoute")
        ],
        having='HAVING count("ContrastBolusAgent") + count("ContrastBolusIngredient") > 0',
    ),
)

#: Delta reader features that neither DuckDB's Parquet reader nor pyarrow applies.
_UNSUPPORTED_READER_FEATURES = frozenset({"deletionVectors", "columnMapping"})


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _plain_path(uri: str) -> str:
    """A data file's local path: file_uris() percent-encodes ("a b" -> "a%20b")."""
    if uri.startswith("file://"):
        return url_local_path(uri) or uri
    return urllib.parse.unquote(uri)


def _register_fsspec(
    con: duckdb.DuckDBPyConnection, uri: str, storage_options: StorageOptions
) -> bool:
    """Let DuckDB read ``uri``'s protocol through fsspec; False if fsspec cannot.

    Raises:
        LakeError: If the options are invalid.
    """
    import fsspec.core

    try:
        fs, _ = fsspec.core.url_to_fs(uri, **fsspec_options(storage_options))
    except ImportError:
        return False  # the protocol's fsspec backend (s3fs, ...) is not installed
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            return False
        raise LakeError(f"cannot read lake at {uri}: {exc}", lake=uri) from exc
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if not protocols & set(con.list_filesystems()):  # listed by protocol name
        con.register_filesystem(fs)
    return True


def _register_table(
    con: duckdb.DuckDBPyConnection,
    name: str,
    dt: DeltaTable,
    lake: str,
    storage_options: StorageOptions = None,
    *,
    private: bool = False,
) -> None:
    """Create the view ``name`` over the files of ``dt``'s loaded version.

    The view is an empty table with the Delta schema UNION ALL BY NAME the Parquet
    files, so its columns and types are the table's even when the table has no files
    or older files lack a column added later. An object-store table's files are read
    through its fsspec file system (see the module docstring). A ``private`` view is
    ``dicomlake_internal.<name>``, out of the user's sight, for a public view over it.
    """
    features = set(dt.protocol().reader_features or ())
    unsupported = sorted(features & _UNSUPPORTED_READER_FEATURES)
    if unsupported:
        raise LakeError(
            f"cannot read table {name} in lake {lake}: it uses the Delta reader features "
            f"{unsupported}, which dicomlake cannot read; rewrite the table without them",
            lake=lake,
        )
    local = url_local_path(dt.table_uri)
    if local is None and not _register_fsspec(con, dt.table_uri, storage_options):
        # DuckDB cannot reach this store: read through delta-rs (module docstring).
        from dicomlake.lake.tables import arrow_dataset

        if not private:
            con.register(name, arrow_dataset(dt))
            return
        con.register(f"_dicomlake_{name}", arrow_dataset(dt))
        con.execute(f'CREATE VIEW {_PRIVATE}."{name}" AS SELECT * FROM "_dicomlake_{name}"')
        return
    empty = f'{_PRIVATE}."{name}_schema"'
    fields = json.loads(dt.schema().to_json())["fields"]
    columns = [(field["name"], _sql_type(field["type"])) for field in fields]
    if all(sql_type is not None for _, sql_type in columns):
        listing = ", ".join(f"{_sql_identifier(n)} {t}" for n, t in columns)
        con.execute(f"CREATE TABLE {empty} ({listing})")
    else:  # a type without a plain SQL name: let DuckDB read the Arrow schema
        import pyarrow as pa

        con.register("_dicomlake_arrow_schema", pa.schema(dt.schema().to_arrow()).empty_table())
        con.execute(f"CREATE TABLE {empty} AS SELECT * FROM _dicomlake_arrow_schema")
        con.unregister("_dicomlake_arrow_schema")
    files = [_plain_path(uri) for uri in dt.file_uris()]
    view = f'{_PRIVATE}."{name}"' if private else _sql_identifier(name)
    sql = f"CREATE VIEW {view} AS SELECT * FROM {empty}"
    if files:
        listing = ", ".join(_sql_string(f) for f in files)
        sql += f" UNION ALL BY NAME SELECT * FROM read_parquet([{listing}], union_by_name = true)"
    con.execute(sql)


#: DuckDB's names of the Delta types the lake's tables use. Creating the typed empty
#: table from SQL, not from a registered Arrow table, keeps pyarrow and pandas (which
#: DuckDB imports to scan Arrow) out of a connection's start-up.
_SQL_TYPES: Final[dict[str, str]] = {
    "boolean": "BOOLEAN",
    "byte": "TINYINT",
    "short": "SMALLINT",
    "integer": "INTEGER",
    "long": "BIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "binary": "BLOB",
    "date": "DATE",
    "timestamp": "TIMESTAMPTZ",
    "timestamp_ntz": "TIMESTAMP",
}


def _sql_type(delta: str | dict[str, Any]) -> str | None:
    """The DuckDB type of a Delta schema type (lists of them too), else None."""
    if isinstance(delta, dict):
        if delta.get("type") != "array":
            return None  # a struct, map or decimal: the Arrow path names it
        inner = _sql_type(delta["elementType"])
        return None if inner is None else f"{inner}[]"
    return _SQL_TYPES.get(delta)


def _sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _keywords() -> tuple[list[str], list[str]]:
    """DICOM keywords and their tags ("GGGGEEEE"), from pydicom's dictionary.

    Read from the package (:mod:`dicomlake.dicom.keywords`), not from pydicom itself:
    importing pydicom, and pandas for a registered table, was most of a
    ``dicomlake sql``'s start-up.
    """
    table = keyword_table()
    return [keyword for keyword, _ in table], [tag for _, tag in table]


def _register_tag_helpers(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        "CREATE TABLE dicom_keywords AS "
        "SELECT unnest($keywords::VARCHAR[]) AS keyword, unnest($tags::VARCHAR[]) AS tag",
        dict(zip(("keywords", "tags"), _keywords(), strict=True)),
    )
    con.execute(_TAG_SQL)


def connect(
    lake: str,
    *,
    storage_options: StorageOptions = None,
    version: int | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open an in-memory DuckDB connection with the lake's views.

    Args:
        lake: Lake folder or object-store URI prefix.
        storage_options: Options for the storage backend: a
            :class:`~dicomlake.storage.StorageConfig` or a dict, given to
            :mod:`deltalake` and to fsspec in the form each takes.
        version: Version of the ``instances`` table to read; None for the latest.

    Returns:
        A connection with views ``instances``, ``series``, ``studies`` (and
        ``thumbnails``, ``volumes``, ``patches`` when the lake has them, and each
        user table of :func:`~dicomlake.lake.user_tables.user_tables`), the macro
        ``tag(meta, key)`` and the table ``dicom_keywords``. The variables ``dicomlake_lake`` and
        ``dicomlake_version`` say what it reads.

    Raises:
        TableNotFound: If the lake has no ``instances`` table.
        LakeError: If the table cannot be read.

    Example:
        >>> con = connect("demo-lake")  # doctest: +SKIP
        >>> con.sql("SELECT Modality, count(*) FROM instances GROUP BY 1").fetchall()
    """
    dt = open_table(lake, INSTANCES_TABLE, version=version, storage_options=storage_options)
    con = duckdb.connect(":memory:")
    try:
        # Delta's data files never change, so their Parquet footers can be kept: each
        # view over ``instances`` binds its files again, and every query reads them.
        con.execute("SET parquet_metadata_cache = true")
        con.execute(f"CREATE SCHEMA {_PRIVATE}")
        _register_table(con, INSTANCES_TABLE, dt, lake, storage_options)
        con.execute(_SERIES_SQL)
        con.execute(_STUDIES_SQL)
        for name in OPTIONAL_TABLES:
            if table_exists(lake, name, storage_options=storage_options):
                table = open_table(lake, name, storage_options=storage_options)
                if name == ACQUISITION_TABLE:
                    _register_table(con, name, table, lake, storage_options, private=True)
                    con.execute(_ACQUISITION_SQL)
                    for view in _ACQUISITION_VIEWS:
                        con.execute(view)
                else:
                    _register_table(con, name, table, lake, storage_options)
        for name in user_tables(lake, storage_options=storage_options):
            table = open_table(lake, name, storage_options=storage_options)
            _register_table(con, name, table, lake, storage_options)
        _register_tag_helpers(con)
        con.execute("SET VARIABLE dicomlake_lake = ?", [lake])
        con.execute("SET VARIABLE dicomlake_version = ?::BIGINT", [dt.version()])
    except BaseException:
        con.close()
        raise
    log.debug("connected to %s at version %d", lake, dt.version())
    return con


def lake_summary(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Counts that ``dicomlake info`` prints.

    Args:
        con: A connection from :func:`connect`.

    Returns:
        A dict with ``lake``, ``version``, ``files``, ``ok``, ``not_dicom``,
        ``error`` (row counts by status), ``errors_by_class`` (error rows by the
        text before the first ``:`` of ``error``, most frequent first),
        ``patients``, ``studies``, ``series``, ``modalities`` (``ok`` instances per
        Modality, most frequent first, ``None`` for rows without one) and
        ``total_bytes``, and ``duplicate_instances``: ``ok`` files whose SOP Instance
        UID another ``ok`` file has too (beyond the first of each; DICOMweb serves one
        of them, see :data:`dicomlake.search.index.DUPLICATE_RULE`).

    Raises:
        duckdb.Error: If ``con`` was not made by :func:`connect`.
    """
    # fetchall() everywhere: in duckdb 2.0 a result left half-fetched (fetchone) makes
    # the next con.sql() on the connection fail with "unfinished result".
    row = con.execute(
        """
        SELECT
            count(*),
            count(*) FILTER (WHERE status = 'ok'),
            count(*) FILTER (WHERE status = 'not_dicom'),
            count(*) FILTER (WHERE status = 'error'),
            count(DISTINCT "PatientID") FILTER (WHERE status = 'ok'),
            count(DISTINCT "StudyInstanceUID") FILTER (WHERE status = 'ok'),
            count(DISTINCT "SeriesInstanceUID") FILTER (WHERE status = 'ok'),
            coalesce(sum(size), 0)::BIGINT,
            count(DISTINCT "SOPInstanceUID") FILTER (WHERE status = 'ok'),
            count("SOPInstanceUID") FILTER (WHERE status = 'ok')
        FROM instances
        """
    ).fetchall()[0]
    files, ok, not_dicom, error, patients, studies, series, total_bytes, sops, with_sop = row
    errors = con.execute(
        """
        SELECT trim(split_part(coalesce(error, ''), ':', 1)) AS cls, count(*) AS n
        FROM instances WHERE status = 'error'
        GROUP BY cls ORDER BY n DESC, cls
        """
    ).fetchall()
    modalities = con.execute(
        """
        SELECT "Modality", count(*) AS n FROM instances WHERE status = 'ok'
        GROUP BY "Modality" ORDER BY n DESC, "Modality" NULLS LAST
        """
    ).fetchall()
    lake, version = con.execute(
        "SELECT getvariable('dicomlake_lake'), getvariable('dicomlake_version')"
    ).fetchall()[0]
    return {
        "lake": lake,
        "version": version,
        "files": files,
        "ok": ok,
        "not_dicom": not_dicom,
        "error": error,
        "errors_by_class": {cls or "(no message)": n for cls, n in errors},
        "patients": patients,
        "studies": studies,
        "series": series,
        "modalities": dict(modalities),
        "total_bytes": total_bytes,
        "duplicate_instances": with_sop - sops,
    }
