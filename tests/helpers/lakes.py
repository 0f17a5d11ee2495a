"""Lakes built the way a user builds them, checked before a test relies on them."""

from __future__ import annotations

import shutil
from pathlib import Path

import dicomlake
from dicomlake.sample import sample_file


def build_lake(sources: list[str], lake: str) -> None:
    """Ingest with thumbnails, drawn by dicomlake itself: every frame (the frame slider
    needs them all) of every instance with pixel data, or the test fails here."""
    every_frame = dicomlake.ThumbnailOptions(frame="all")
    summary = dicomlake.ingest(sources, lake, workers=0, thumbnails=every_frame)
    con = dicomlake.connect(lake)
    try:
        views = {name for (name,) in con.sql("SELECT view_name FROM duckdb_views()").fetchall()}
        assert "thumbnails" in views, "dicomlake drew no thumbnails"
        wanted, drawn, missing = con.sql(
            """
            WITH wanted AS (
                SELECT row_id, coalesce("NumberOfFrames", 1) AS frames FROM instances
                WHERE status = 'ok' AND has_pixel_data
            ), drawn AS (
                SELECT row_id, count(DISTINCT frame) AS frames FROM thumbnails
                WHERE status = 'ok' AND data IS NOT NULL GROUP BY row_id
            )
            SELECT (SELECT sum(frames) FROM wanted), (SELECT sum(frames) FROM drawn),
                (SELECT count(*) FROM wanted FULL JOIN drawn USING (row_id)
                 WHERE wanted.frames IS DISTINCT FROM drawn.frames)
            """
        ).fetchall()[0]
    finally:
        con.close()
    assert wanted and drawn == wanted == summary.thumbnails and missing == 0, (
        f"{wanted} frames to draw, {drawn} drawn ({summary.thumbnails} by the run), "
        f"{missing} instances without all of theirs: {dict(summary.thumbnail_errors)}"
    )


def small_runs(folder: Path, lake: Path, rounds: int = 6) -> None:
    """A lake built by ``rounds`` runs without optimize: a small data file (at least) per
    run, two real files (CT and MR) in each."""
    for i in range(rounds):
        sub = folder / f"r{i}"
        sub.mkdir(parents=True)
        shutil.copyfile(sample_file("CT_small.dcm"), sub / "ct.dcm")
        shutil.copyfile(sample_file("MR_small.dcm"), sub / "mr.dcm")
        dicomlake.ingest([str(folder)], str(lake), workers=0, optimize=False)
