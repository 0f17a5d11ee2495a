"""The search index: the lake's studies, series and instances in memory, once per version.

A search (QIDO-RS, C-FIND) must answer in milliseconds, and the ``instances`` view
reads Parquet files on every query. So the first search after the lake changed copies
the typed columns of the ``ok`` rows into three in-memory DuckDB tables
(``dw_instances``, ``dw_series``, ``dw_studies``) and, for each study and series, the
default return attributes of one representative file's header (their ``elements``
column). A 100,000-instance lake takes about a second to index; every search after
that runs on memory.

Two files with the same SOP Instance UID (a copy in two folders, a file ingested
again from a zip) are one instance here: :data:`DUPLICATE_RULE` picks which.
"""

from __future__ import annotations

import logging
import time

from dicomlake.search.attributes import SERIES_DEFAULTS, STUDY_DEFAULTS
from dicomlake.search.connection import Cursor

log = logging.getLogger(__name__)

#: Which of several rows with one SOP Instance UID answers for it: the one ingested
#: last (the newest copy the lake has seen), then the smallest path.
DUPLICATE_RULE = "ingested_at DESC NULLS LAST, path"

_STUDY_COLUMNS = (
    '"PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", '
    'study_time, "AccessionNumber", "StudyDescription"'
)
_SERIES_COLUMNS = '"Modality", "SeriesDescription", "SeriesNumber", "BodyPartExamined"'

# StudyTime is text (HHMMSS.FFFFFF, or HH:MM:SS from old files); study_time is the
# same as a TIME for range matching.
_TIME = """TRY_CAST(
    substr(t, 1, 2) || ':' || coalesce(nullif(substr(t, 3, 2), ''), '00') || ':'
    || coalesce(nullif(substr(t, 5), ''), '00') AS TIME)"""

_INSTANCES_SQL = f"""
CREATE OR REPLACE TABLE dw_instances AS
SELECT row_id, path, size, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    "SOPClassUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
    "StudyDate", "StudyTime",
    (SELECT {_TIME} FROM (SELECT replace("StudyTime", ':', '') AS t)) AS study_time,
    "AccessionNumber", "StudyDescription", "Modality", "SeriesDescription",
    "SeriesNumber", "BodyPartExamined", "InstanceNumber", "Rows", "Columns",
    "NumberOfFrames", "BitsAllocated", "TransferSyntaxUID", has_pixel_data
FROM instances
WHERE status = 'ok' AND "SOPInstanceUID" IS NOT NULL
    AND "StudyInstanceUID" IS NOT NULL AND "SeriesInstanceUID" IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY "SOPInstanceUID" ORDER BY {DUPLICATE_RULE}) = 1
"""

# Retrieval finds an instance, series or study by its UID: point lookups.
_LOOKUP_SQL = tuple(
    f'CREATE INDEX dw_instances_{name} ON dw_instances("{column}")'
    for name, column in (
        ("study", "StudyInstanceUID"),
        ("series", "SeriesInstanceUID"),
        ("sop", "SOPInstanceUID"),
    )
)

_SERIES_SQL = f"""
CREATE OR REPLACE TABLE dw_series AS
WITH ranked AS (
    SELECT *,
        row_number() OVER (
            PARTITION BY "SeriesInstanceUID"
            ORDER BY "InstanceNumber" NULLS LAST, "SOPInstanceUID"
        ) AS rn,
        count(*) OVER (PARTITION BY "SeriesInstanceUID") AS n
    FROM dw_instances
)
SELECT "SeriesInstanceUID", "StudyInstanceUID", {_SERIES_COLUMNS}, {_STUDY_COLUMNS},
    n AS n_instances, row_id AS rep_row_id
FROM ranked WHERE rn = 1
"""

_STUDIES_SQL = f"""
CREATE OR REPLACE TABLE dw_studies AS
WITH ranked AS (
    SELECT *,
        row_number() OVER (
            PARTITION BY "StudyInstanceUID"
            ORDER BY "SeriesNumber" NULLS LAST, "SeriesInstanceUID",
                "InstanceNumber" NULLS LAST, "SOPInstanceUID"
        ) AS rn
    FROM dw_instances
), counts AS (
    SELECT "StudyInstanceUID", count(DISTINCT "SeriesInstanceUID") AS n_series,
        count(*) AS n_instances,
        list_sort(list_distinct(list("Modality") FILTER (WHERE "Modality" IS NOT NULL)))
            AS modalities
    FROM dw_instances GROUP BY "StudyInstanceUID"
)
SELECT "StudyInstanceUID", {_STUDY_COLUMNS}, n_series, n_instances, modalities,
    row_id AS rep_row_id
FROM ranked JOIN counts USING ("StudyInstanceUID") WHERE rn = 1
"""

_ELEMENT_TAGS = tuple(dict.fromkeys((*STUDY_DEFAULTS, *SERIES_DEFAULTS)))
# One JSON object per file, {tag: element or null}: a single parse per search result.
_OBJECT = ", ".join(f"'{tag}', json_extract(meta, '$.\"{tag}\"')" for tag in _ELEMENT_TAGS)
# The representative files' default attributes go onto their study and series rows,
# so that a search is one query.
_ELEMENTS_SQL = (
    f"""
CREATE OR REPLACE TEMP TABLE dw_elements AS
SELECT row_id, json_object({_OBJECT})::VARCHAR AS elements
FROM instances
WHERE status = 'ok' AND row_id IN (
    SELECT rep_row_id FROM dw_studies UNION SELECT rep_row_id FROM dw_series
)
""",
    """
CREATE OR REPLACE TABLE dw_studies AS
SELECT s.*, e.elements FROM dw_studies AS s LEFT JOIN dw_elements AS e ON e.row_id = s.rep_row_id
""",
    """
CREATE OR REPLACE TABLE dw_series AS
SELECT s.*, e.elements FROM dw_series AS s LEFT JOIN dw_elements AS e ON e.row_id = s.rep_row_id
""",
    "DROP TABLE dw_elements",
)

#: The tags whose elements the ``elements`` column of studies and series holds, in order.
ELEMENT_TAGS = _ELEMENT_TAGS


def ensure_index(cur: Cursor) -> None:
    """Build the search index for the lake version ``cur`` reads, once.

    Raises:
        QueryTimeout: Building took longer than the query time limit.
        duckdb.Error: The lake could not be read.
    """
    gen = cur.gen
    if gen.built.get("search_index"):
        return
    with gen.build_lock:
        if gen.built.get("search_index"):
            return
        started = time.perf_counter()
        for sql in (_INSTANCES_SQL, *_LOOKUP_SQL, _SERIES_SQL, _STUDIES_SQL, *_ELEMENTS_SQL):
            cur.fetch(sql)
        counts = cur.fetch(
            "SELECT (SELECT count(*) FROM dw_instances), (SELECT count(*) FROM dw_series), "
            "(SELECT count(*) FROM dw_studies)"
        )[0]
        gen.built["search_index"] = True
        log.info(
            "search index of %d instances, %d series, %d studies built in %.2f s",
            *counts,
            time.perf_counter() - started,
        )
