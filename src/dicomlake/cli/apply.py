"""``dicomlake apply``: your own function over frames, instances or series, into a table."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import (
    AnonOption,
    LakeOption,
    QuietOption,
    StorageOptionOption,
    WorkersOption,
    fail,
    storage_config,
)
from dicomlake.cli.render import live_progress
from dicomlake.errors import DicomLakeError
from dicomlake.kernels.base import UNIT_TIMEOUT

if TYPE_CHECKING:
    from dicomlake.jobs.apply import ApplySummary


class UnitOption(enum.StrEnum):
    """What one call of the function gets."""

    frame = "frame"
    instance = "instance"
    series = "series"


def _progress_line(summary: ApplySummary) -> str:
    """The live line: units run, their rate, errors, unchanged."""
    return (
        f"{summary.units}/{summary.selected - summary.skipped} {summary.unit}s · "
        f"{summary.units_per_second:.1f}/s · {sum(summary.errors.values())} errors · "
        f"{summary.skipped} unchanged"
    )


def apply_command(
    lake: LakeOption,
    function: Annotated[
        str,
        typer.Option(
            "--function",
            "-f",
            help="The function, as package.module:name (importable where you run this).",
        ),
    ],
    table: Annotated[
        str, typer.Option("--table", "-t", help="Output table (a SQL view afterwards).")
    ],
    where: Annotated[
        str,
        typer.Option(
            "--where",
            help="SQL expression over instances (\"Modality = 'CT'\"), or a whole "
            "query returning path (frame, instance) or SeriesInstanceUID (series).",
        ),
    ] = "",
    unit: Annotated[UnitOption, typer.Option("--unit", help="What fn gets.")] = UnitOption.frame,
    workers: WorkersOption = None,
    version: Annotated[
        str, typer.Option("--version", help="Label of the function: a new one runs all again.")
    ] = "1",
    unit_timeout: Annotated[
        float,
        typer.Option(
            "--unit-timeout", min=0.001, help="Seconds a unit may take, then it is an error row."
        ),
    ] = UNIT_TIMEOUT,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Run your function over the units --where picks; one row per unit in --table."""
    from dicomlake.jobs.apply import apply

    storage = storage_config(anon, storage_option)
    try:
        with live_progress("selecting…", _progress_line, quiet) as progress:
            summary = apply(
                lake,
                where,
                function,
                table=table,
                unit=unit.value,
                workers=workers,
                version=version,
                unit_timeout=unit_timeout,
                progress=progress,
                storage_options=storage,
            )
    except (DicomLakeError, ValueError, ImportError, AttributeError, TypeError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; committed rows are kept, re-run to go on", 130) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s ({summary.units_per_second:.1f}/s)")
