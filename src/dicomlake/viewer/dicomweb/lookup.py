"""Which files make up a study, series or instance: the WADO side of the index.

A viewer retrieves a series piece by piece (its metadata, then each frame of each
instance), so the instances of recently asked-for series are kept in memory, each with
a map by SOP Instance UID: once a series was asked for whole, finding a frame's file
costs no query at all; before that, one point lookup on an indexed column. The cache
belongs to one version of the lake and is bounded by the number of instances it holds.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from dicomlake.search.connection import Cursor
from dicomlake.search.index import ensure_index
from dicomlake.viewer.dicomweb.media import EXPLICIT_LE
from dicomlake.viewer.dicomweb.service import HTTPProblem

#: Instances the series cache of one lake version holds at most, over all series.
MAX_CACHED_INSTANCES = 200_000

_COLUMNS = f"""row_id, path, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
    coalesce("TransferSyntaxUID", '{EXPLICIT_LE}'),
    CASE WHEN has_pixel_data THEN coalesce("NumberOfFrames", 1) ELSE 0 END, size"""
_SELECT = f"""
SELECT {_COLUMNS} FROM dw_instances WHERE {{column}} = ?
ORDER BY "SeriesNumber" NULLS LAST, "SeriesInstanceUID", "InstanceNumber" NULLS LAST,
    "SOPInstanceUID"
"""
# One instance: a point lookup on the index of SOP Instance UIDs, nothing to sort.
_SELECT_ONE = f'SELECT {_COLUMNS} FROM dw_instances WHERE "SOPInstanceUID" = ?'


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance to serve: where its bytes are and what they are."""

    row_id: int
    path: str
    study: str
    series: str
    sop: str
    syntax: str
    frames: int
    size: int | None


class _Series:
    """A series' instances in order, and by SOP Instance UID."""

    __slots__ = ("by_sop", "ordered")

    def __init__(self, ordered: list[Instance]) -> None:
        self.ordered = ordered
        self.by_sop = {i.sop: i for i in ordered}


class SeriesCache:
    """The least recently used series' instances, up to :data:`MAX_CACHED_INSTANCES`."""

    def __init__(self, limit: int = MAX_CACHED_INSTANCES) -> None:
        self.limit = limit
        self._series: OrderedDict[str, _Series] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, uid: str) -> _Series | None:
        """The series, if cached (it becomes the most recently used)."""
        with self._lock:
            found = self._series.get(uid)
            if found is not None:
                self._series.move_to_end(uid)
            return found

    def put(self, uid: str, series: _Series) -> None:
        """Keep ``series``; forget the least recently used beyond the limit."""
        with self._lock:
            if uid in self._series:
                return
            self._series[uid] = series
            self._held += len(series.ordered)
            while self._held > self.limit and len(self._series) > 1:
                _, dropped = self._series.popitem(last=False)
                self._held -= len(dropped.ordered)


def _instances(cur: Cursor, column: str | None, uid: str) -> list[Instance]:
    """The instances whose ``column`` is ``uid``; None: the one of that SOP Instance UID."""
    sql = _SELECT_ONE if column is None else _SELECT.format(column=f'"{column}"')
    rows = cur.fetch(sql, [uid])
    return [
        Instance(
            row_id=int(r[0]),
            path=r[1],
            study=r[2],
            series=r[3],
            sop=r[4],
            syntax=r[5],
            frames=int(r[6]),
            size=r[7],
        )
        for r in rows
    ]


def instances_of(cur: Cursor, wanted: dict[str, str]) -> list[Instance]:
    """The instances of a study, series or one instance, in series and number order.

    Args:
        cur: A cursor of the lake version to serve.
        wanted: ``study``, and optionally ``series`` and ``instance``, UIDs.

    Raises:
        HTTPProblem: None match (404).
    """
    ensure_index(cur)
    what = "instance" if "instance" in wanted else "series" if "series" in wanted else "study"
    if "series" not in wanted:
        found = _instances(cur, "StudyInstanceUID", wanted["study"])
    else:
        cache: SeriesCache = cur.gen.built.setdefault("dicomweb_series", SeriesCache())
        series = cache.get(wanted["series"])
        if "instance" in wanted:
            if series is not None:
                one = series.by_sop.get(wanted["instance"])
                found = [one] if one is not None else []
            else:  # a series not asked for whole yet: look up just this instance
                found = _instances(cur, None, wanted["instance"])
        else:
            if series is None:
                series = _Series(_instances(cur, "SeriesInstanceUID", wanted["series"]))
                cache.put(wanted["series"], series)
            found = series.ordered
        found = [i for i in found if (i.study, i.series) == (wanted["study"], wanted["series"])]
    if not found:
        raise HTTPProblem(404, f"no such {what} in the lake")
    return found
