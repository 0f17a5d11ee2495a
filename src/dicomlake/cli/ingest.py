"""``dicomlake ingest``: files into the lake, with live progress on a terminal."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli import options
from dicomlake.cli.options import (
    AnonOption,
    FrameOption,
    LakeOption,
    ParserOption,
    StorageOptionOption,
    WorkersOption,
    fail,
    interactive,
    storage_config,
)
from dicomlake.cli.render import Progress, print_summary_table, summary_line
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.kernels.thumbnails import ThumbnailOptions


def ingest(
    sources: Annotated[
        list[str],
        typer.Argument(help="Folders, files, zip archives or fsspec URLs to ingest."),
    ],
    lake: LakeOption,
    workers: WorkersOption = None,
    sync: Annotated[
        bool, typer.Option("--sync", help="Remove rows of files that no longer exist.")
    ] = False,
    file_timeout: Annotated[
        float,
        typer.Option(min=1.0, help="Seconds one file may take before it becomes an error row."),
    ] = 120.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the summary line.")
    ] = False,
    commit_rows: Annotated[
        int, typer.Option(min=1, help="Commit to the lake at least every N rows...")
    ] = 5000,
    commit_seconds: Annotated[
        float, typer.Option(min=0.1, help="...or every S seconds, whichever comes first.")
    ] = 5.0,
    thumbnails: Annotated[
        bool, typer.Option("--thumbnails", help="Also draw thumbnails (same read of each file).")
    ] = False,
    thumbnail_size: Annotated[
        int, typer.Option(min=16, max=4096, help="Longest side of a thumbnail, in pixels.")
    ] = 256,
    frame: Annotated[
        FrameOption, typer.Option(help="Frames of multi-frame images to draw.")
    ] = FrameOption.middle,
    parser: Annotated[
        ParserOption,
        typer.Option(
            help="Header parser: the native fast path where it can (auto), or pydicom always."
        ),
    ] = ParserOption.auto,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Extract the DICOM header of every file under SOURCES into the lake."""
    from dicomlake.dicom import native
    from dicomlake.engine.local import skip_pandas_probe
    from dicomlake.jobs.ingest import CommitPolicy
    from dicomlake.jobs.ingest import ingest as run_ingest

    storage = storage_config(anon, storage_option)
    if parser is ParserOption.native and not native.available():
        raise fail(
            "--parser native: the native header parser is not built (it compiles at "
            "install when a C compiler is present); use --parser auto"
        )
    if parser is ParserOption.auto and not native.available() and not quiet:
        typer.echo(
            "dicomlake: warning: the native header parser is not built (it compiles at "
            "install when a C compiler is present); headers go through pydicom, "
            f"{native.SPEEDUP} slower",
            err=True,
        )
    drawing: bool | ThumbnailOptions = False
    if thumbnails:  # the drawing code imports pydicom and the codecs: only when asked
        from dicomlake.kernels.thumbnails import ThumbnailOptions

        drawing = ThumbnailOptions(thumbnail_size, frame.value)
    if options.own_process:  # it never hands pyarrow a pandas object: skip pyarrow's
        skip_pandas_probe()  # import of pandas, 0.15-0.3 s of a short ingest (as workers do)
    display = Progress() if interactive(quiet) else None
    try:
        with display or nullcontext():
            summary = run_ingest(
                sources,
                lake,
                workers=workers,
                sync=sync,
                file_timeout=file_timeout,
                commits=CommitPolicy(rows=commit_rows, seconds=commit_seconds),
                thumbnails=drawing,
                storage_options=storage,
                progress=display.update if display else None,
                parser=parser.value,
            )
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted; committed rows are kept, re-run to resume", 130) from None
    if display:
        print_summary_table(summary)
    else:
        typer.echo(summary_line(summary))
