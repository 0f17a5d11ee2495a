"""``dicomlake deid``: a de-identified copy of a lake's instances, and ``deid keygen``.

The summary and the progress line hold counts, reasons and error classes only: never a
value of a file and never the key (its fingerprint names it).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import (
    AnonOption,
    QuietOption,
    StorageOptionOption,
    WorkersOption,
    fail,
    storage_config,
)
from dicomlake.cli.render import live_progress
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.jobs.deid import DeidSummary

app = typer.Typer(
    name="deid",
    help="Write a de-identified copy (DICOM PS3.15 Basic Profile) of the lake's instances "
    "to DEST/<study>/<series>/<instance>.dcm, recorded in the lake's deid table.",
    add_completion=False,
    invoke_without_command=True,
)


def _progress_line(summary: DeidSummary) -> str:
    """A de-identification's live line: instances handled, written, skipped, failed."""
    left = summary.selected - summary.unchanged
    return (
        f"{summary.done}/{left} de-identified · {summary.ok} written · "
        f"{sum(summary.skipped.values())} skipped · {sum(summary.errors.values())} errors"
    )


@app.callback()
def deid_command(
    ctx: typer.Context,
    lake: Annotated[
        str | None,
        typer.Option("--lake", "-l", help="The source lake (its deid table records the run)."),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Destination folder or URL (s3://bucket/prefix)."),
    ] = None,
    key_file: Annotated[
        Path | None,
        typer.Option("--key-file", "-k", help="The key file (make one with `deid keygen KEY`)."),
    ] = None,
    where: Annotated[
        str | None,
        typer.Option("--where", help="SQL expression over instances, e.g. \"Modality = 'CT'\"."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            help="A PS3.15 option, repeatable: clean-pixel-data, retain-uids, "
            "retain-longitudinal-modified-dates, ... (an unknown name is refused).",
        ),
    ] = None,
    regions: Annotated[
        Path | None,
        typer.Option("--regions", help="Region rules for clean-pixel-data (a file)."),
    ] = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """De-identify the lake's ok instances into DEST (re-runs skip what is done)."""
    if ctx.invoked_subcommand is not None:
        if any(v is not None for v in (lake, out, key_file, where, option, regions)):
            raise fail(f"`deid {ctx.invoked_subcommand}` takes none of the options of `deid`")
        return
    missing = [
        flag
        for flag, value in (("--lake", lake), ("--out", out), ("--key-file", key_file))
        if value is None
    ]
    if missing:
        raise fail(f"deid needs {', '.join(missing)} (see `dicomlake deid --help`)")
    assert lake is not None and out is not None and key_file is not None
    from dicomlake.deidentify.options import parse_options
    from dicomlake.jobs.deid import deid

    try:
        chosen = parse_options(option or ())
    except ValueError as exc:
        raise fail(str(exc)) from None
    storage = storage_config(anon, storage_option)
    try:
        with live_progress("selecting…", _progress_line, quiet) as progress:
            summary = deid(
                lake,
                out,
                key=key_file,
                where=where,
                options=chosen,
                workers=workers,
                regions=regions,
                storage_options=storage,
                progress=progress,
            )
    except (DicomLakeError, ValueError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; recorded files are kept, re-run to resume", 130) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s")
        for reason, count in summary.skipped.most_common(5):
            typer.echo(f"  skipped {count}: {reason}")


@app.command("keygen")
def keygen_command(
    key: Annotated[Path, typer.Argument(help="Where to write the new key (never overwritten).")],
) -> None:
    """Write a new random de-identification key (32 bytes, mode 0600); keep it secret."""
    from dicomlake.deidentify.keys import keygen

    try:
        made = keygen(key)
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"key written to {key} (fingerprint {made.fingerprint()}); keep it secret")
