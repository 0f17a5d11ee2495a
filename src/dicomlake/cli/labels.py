"""``dicomlake labels``: SEG and RTSTRUCT masks placed on their volumes, as a table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import (
    AnonOption,
    LakeOption,
    QuietOption,
    StorageOptionOption,
    fail,
    storage_config,
)
from dicomlake.cli.render import live_progress
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.jobs.labels import SegmentsSummary


def _progress_line(summary: SegmentsSummary) -> str:
    """The live line: segmentations read, segments placed, not placed."""
    return (
        f"{summary.segmentations} segmentations · {summary.ok} segments placed · "
        f"{summary.empty} empty · {sum(summary.errors.values())} not placed"
    )


def labels_command(
    lake: LakeOption,
    where: Annotated[
        str | None,
        typer.Option(
            "--where",
            help="SQL expression over instances picking segmentations, e.g. "
            "\"StudyDate >= '2024-01-01'\".",
        ),
    ] = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Place each SEG and RTSTRUCT on its series' volume and write the segments table."""
    from dicomlake.jobs.labels import build_segments

    storage = storage_config(anon, storage_option)
    try:
        with live_progress("reading segmentations…", _progress_line, quiet) as progress:
            summary = build_segments(
                lake,
                where,
                storage_options=storage,
                progress=progress,
            )
    except (DicomLakeError, ImportError) as exc:  # ImportError: highdicom is missing
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; committed rows are kept, re-run to go on", 130) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s")
