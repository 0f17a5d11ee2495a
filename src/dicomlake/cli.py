"""The ``dicomlake`` command line: a thin layer over the Python API.

Each command parses its options, calls the public API, and turns a
:class:`~dicomlake.errors.DicomLakeError` into one line on stderr and exit code 2.
"""

from __future__ import annotations

import enum
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.lake.maintenance import TableState
    from dicomlake.pipeline import IngestSummary

app = typer.Typer(
    name="dicomlake",
    help="Turn folders, zips and buckets of DICOM files into a Delta Lake you query with SQL.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold patient data
    add_completion=False,
)

LakeOption = Annotated[
    str, typer.Option("--lake", "-l", help="Lake folder or URI (s3://bucket/prefix).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No summary line.")]
AnonOption = Annotated[
    bool,
    typer.Option("--anon", help="Object storage: unsigned requests (public buckets)."),
]
StorageOptionOption = Annotated[
    list[str] | None,
    typer.Option(
        "--storage-option",
        metavar="KEY=VALUE",
        help="Object storage setting, repeatable (AWS_REGION=eu-west-1, "
        "AWS_ENDPOINT_URL=http://127.0.0.1:9000); credentials default to the AWS "
        "environment variables and profile.",
    ),
]


class FrameOption(enum.StrEnum):
    """Which frames of a multi-frame image get a thumbnail."""

    first = "first"
    middle = "middle"
    all = "all"


class ParserOption(enum.StrEnum):
    """Which header parser ``ingest`` uses."""

    auto = "auto"
    native = "native"
    pydicom = "pydicom"


class OutputFormat(enum.StrEnum):
    """Output formats of ``dicomlake sql``."""

    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"dicomlake: error: {message}", err=True)
    return typer.Exit(code)


def _interactive(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _storage(anon: bool, options: list[str] | None) -> Any:
    """The StorageConfig of ``--anon`` and ``--storage-option``; None when neither."""
    if not anon and not options:
        return None
    from dicomlake.storage import StorageConfig, parse_storage_option

    try:
        pairs = dict(parse_storage_option(text) for text in options or ())
        if anon:
            pairs["anon"] = "true"
        return StorageConfig.from_options(pairs)
    except ValueError as exc:
        raise _fail(str(exc)) from None


@app.command()
def ingest(
    sources: Annotated[
        list[str],
        typer.Argument(help="Folders, files, zip archives or fsspec URLs to ingest."),
    ],
    lake: LakeOption,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=0, help="Worker processes (default: all cores)."),
    ] = None,
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
    from dicomlake.pipeline import ingest as run_ingest

    storage = _storage(anon, storage_option)
    if parser is ParserOption.native and not native.available():
        raise _fail(
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
    display = _Progress() if _interactive(quiet) else None
    try:
        with display or nullcontext():
            summary = run_ingest(
                sources,
                lake,
                workers=workers,
                sync=sync,
                file_timeout=file_timeout,
                commit_rows=commit_rows,
                commit_seconds=commit_seconds,
                thumbnails=thumbnails,
                thumbnail_size=thumbnail_size,
                thumbnail_frame=frame.value,
                storage_options=storage,
                progress=display.update if display else None,
                parser=parser.value,
            )
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; committed rows are kept, re-run to resume", 130) from None
    if display:
        _print_summary_table(summary)
    else:
        typer.echo(summary_line(summary))


def summary_line(summary: IngestSummary) -> str:
    """Return the one-line summary printed by quiet runs."""
    errors = ", ".join(f"{k} {v}" for k, v in summary.errors.most_common())
    parts = [
        f"{summary.listed} files",
        f"{summary.ok} ok",
        f"{summary.not_dicom} not_dicom",
        f"{summary.error_count} errors" + (f" ({errors})" if errors else ""),
        f"{summary.skipped_unchanged} skipped unchanged",
    ]
    if summary.deleted:
        parts.append(f"{summary.deleted} deleted")
    if summary.parsers:
        parsers = ", ".join(f"{k} {v}" for k, v in sorted(summary.parsers.items()))
        parts.append(f"headers by {parsers}")
    if summary.compacted:
        parts.append(f"{summary.compacted} small files compacted")
    if summary.taken:
        parts.append(f"{summary.taken} committed first by another ingest")
    if summary.thumbnails or summary.thumbnail_errors:
        failed = sum(summary.thumbnail_errors.values())
        parts.append(f"{summary.thumbnails} thumbnails ({failed} not drawn)")
    rate = summary.files_per_second
    return "ingested: " + ", ".join(parts) + f" in {summary.seconds:.1f} s ({rate:.0f} files/s)"


def _print_summary_table(summary: IngestSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dicomlake ingest", show_header=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("files", str(summary.listed))
    table.add_row("ok", str(summary.ok))
    table.add_row("not_dicom", str(summary.not_dicom))
    table.add_row("errors", str(summary.error_count))
    for name, count in summary.errors.most_common():
        table.add_row(f"  {name}", str(count))
    table.add_row("skipped unchanged", str(summary.skipped_unchanged))
    if summary.changed:
        table.add_row("re-extracted (changed)", str(summary.changed))
    if summary.deleted:
        table.add_row("deleted (--sync)", str(summary.deleted))
    if summary.taken:
        table.add_row("committed first by another ingest", str(summary.taken))
    if summary.thumbnails or summary.thumbnail_errors:
        table.add_row("thumbnails", str(summary.thumbnails))
        for name, count in summary.thumbnail_errors.most_common():
            table.add_row(f"  not drawn: {name}", str(count))
    for name, count in sorted(summary.parsers.items()):
        table.add_row(f"headers read by {name}", str(count))
    table.add_row("seconds", f"{summary.seconds:.1f}")
    table.add_row("files/s", f"{summary.files_per_second:.0f}")
    Console(stderr=True).print(table)


class _Progress:
    """A live progress line on stderr: files done, files/s, errors so far."""

    def __enter__(self) -> _Progress:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._progress.__enter__()
        self._task = self._progress.add_task("listing…", total=None)
        return self

    def update(self, summary: IngestSummary) -> None:
        """Redraw with the running summary."""
        text = (
            f"{summary.done} extracted · {summary.files_per_second:.0f} files/s · "
            f"{summary.error_count} errors · {summary.not_dicom} not DICOM · "
            f"{summary.skipped_unchanged} unchanged"
        )
        self._progress.update(self._task, description=text)

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)


@app.command("thumbnails")
def thumbnails_command(
    lake: LakeOption,
    size: Annotated[
        int, typer.Option("--size", min=16, max=4096, help="Longest side, in pixels.")
    ] = 256,
    frame: Annotated[FrameOption, typer.Option(help="Frames to draw.")] = FrameOption.middle,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=0, help="Worker processes (default: all cores)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Draw thumbnails for instances of the lake that have pixel data and none yet."""
    from dicomlake.thumbnails import build_thumbnails

    try:
        summary = build_thumbnails(lake, size=size, frame=frame.value, workers=workers)
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None
    failed = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors.items()))
    typer.echo(
        f"thumbnails: {summary.instances} instances, {summary.ok} drawn, "
        f"{sum(summary.errors.values())} not drawn"
        + (f" ({failed})" if failed else "")
        + f" in {summary.seconds:.1f} s ({summary.thumbnails_per_second:.0f}/s)"
    )


@app.command("volumes")
def volumes_command(
    lake: LakeOption,
    where: Annotated[
        str | None,
        typer.Option("--where", help="SQL expression over instances, e.g. \"Modality = 'CT'\"."),
    ] = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Check each series' slice geometry and write the volumes table (no pixels read)."""
    from dicomlake.ml.volumes import build_volumes

    storage = _storage(anon, storage_option)
    try:
        summary = build_volumes(lake, where, storage_options=storage)
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s")


@app.command("patches")
def patches_command(
    lake: LakeOption,
    size: Annotated[int, typer.Option("--size", min=1, help="Patch side, in pixels.")] = 256,
    stride: Annotated[
        int | None,
        typer.Option("--stride", min=1, help="Step between patches (default: --size)."),
    ] = None,
    min_tissue: Annotated[
        float,
        typer.Option(
            "--min-tissue", min=0.0, max=1.0, help="Skip patches with less foreground (0..1)."
        ),
    ] = 0.0,
    pixels: Annotated[
        bool, typer.Option("--pixels", help="Store each patch's float32 values in the table.")
    ] = False,
    where: Annotated[
        str | None,
        typer.Option("--where", help="SQL expression over instances, e.g. \"Modality = 'SM'\"."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", min=0, help="Worker processes (default: all cores)."),
    ] = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Tile frames into patches and write the patches table (replacing their old rows)."""
    from dicomlake.ml.patches import DEFAULT_SQL, DicomPatcher

    storage = _storage(anon, storage_option)
    sql_text = DEFAULT_SQL if where is None else f"{DEFAULT_SQL} WHERE ({where})"
    try:
        patcher = DicomPatcher(size=size, stride=stride, min_tissue=min_tissue, store_pixels=pixels)
        summary = patcher.write(lake, sql_text, workers=workers, storage_options=storage)
    except (DicomLakeError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL over instances, series, studies.")],
    lake: LakeOption,
    output_format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Run a SQL query (DuckDB) against the lake."""
    import duckdb

    from dicomlake.lake.sql import connect

    if output_format is OutputFormat.parquet and output is None:
        raise _fail("--format parquet needs --output FILE")
    storage = _storage(anon, storage_option)
    try:
        con = connect(lake, storage_options=storage)
        relation = con.sql(query)
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None
    except duckdb.Error as exc:
        raise _fail(f"query failed: {str(exc).splitlines()[0]}") from None
    if relation is None:  # a statement with no result set
        return
    try:
        table = relation.to_arrow_table()
    except duckdb.Error as exc:
        raise _fail(f"query failed: {str(exc).splitlines()[0]}") from None
    _write_result(table, output_format, output)


def _write_result(table: Any, output_format: OutputFormat, output: Path | None) -> None:
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if output_format is OutputFormat.parquet:
        pq.write_table(table, output)
        return
    if output_format is OutputFormat.csv:
        if output is not None:
            pa_csv.write_csv(table, output)
        else:
            sink = _StdoutBytes()
            pa_csv.write_csv(table, sink)
        return
    if output_format is OutputFormat.json:
        import orjson

        text = orjson.dumps(
            table.to_pylist(),
            default=str,
            option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
        ).decode()
        if output is not None:
            output.write_text(text + "\n")
        else:
            typer.echo(text)
        return
    _print_table(table, output)


class _StdoutBytes:
    """A binary sink for pyarrow writers that goes to stdout."""

    closed = False

    def write(self, data: bytes) -> int:
        sys.stdout.buffer.write(data)
        return len(data)

    def flush(self) -> None:
        sys.stdout.buffer.flush()


def _print_table(table: Any, output: Path | None, limit: int = 1000) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(show_lines=False)
    for name in table.column_names:
        view.add_column(name, overflow="fold")
    for row in table.slice(0, limit).to_pylist():
        view.add_row(*("" if v is None else str(v) for v in row.values()))
    if output is not None:
        with output.open("w") as handle:
            Console(file=handle, width=200).print(view)
        return
    # piped output is not squeezed to 80 columns: the reader is a file or a pager
    console = Console() if sys.stdout.isatty() else Console(width=240)
    console.print(view)
    if table.num_rows > limit:
        console.print(f"({table.num_rows} rows, first {limit} shown; use --format csv for all)")


@app.command()
def info(
    lake: LakeOption, anon: AnonOption = False, storage_option: StorageOptionOption = None
) -> None:
    """Show what the lake holds: files, statuses, errors, studies, series, modalities."""
    from rich.console import Console
    from rich.table import Table

    from dicomlake.lake.maintenance import table_state
    from dicomlake.lake.sql import connect, lake_summary

    storage = _storage(anon, storage_option)
    try:
        summary = lake_summary(connect(lake, storage_options=storage))
        summary.update(_state_rows(table_state(lake, storage_options=storage)))
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None
    table = Table(title=f"lake {lake}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, dict):
            table.add_row(str(key), "")
            for sub, count in value.items():
                table.add_row(f"  {sub}", str(count))
        else:
            table.add_row(str(key), str(value))
    Console().print(table)


def _state_rows(state: TableState) -> dict[str, Any]:
    """The table-health lines of ``dicomlake info``: version, last commit, leftovers."""
    when = f"{state.committed_at:%Y-%m-%d %H:%M:%S} UTC" if state.committed_at else "-"
    rows: dict[str, Any] = {
        "last commit": f"{when} ({state.operation or '-'})",
        "data files": state.data_files,
        "checkpoint at version": "-" if state.checkpoint is None else state.checkpoint,
    }
    if state.unreferenced_files:
        rows["files not in this version (optimize --vacuum)"] = state.unreferenced_files
    if state.interrupted_commits:
        rows["interrupted commits (ignored)"] = len(state.interrupted_commits)
    return rows


@app.command("optimize")
def optimize_command(
    lake: LakeOption,
    vacuum: Annotated[
        bool,
        typer.Option(
            "--vacuum", help="Also delete files no version within --retention-hours needs."
        ),
    ] = False,
    retention_hours: Annotated[
        int,
        typer.Option(min=0, help="How long replaced files stay for readers of old versions."),
    ] = 168,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Compact the lake's small files and checkpoint its log (and vacuum on request)."""
    from dicomlake.lake.maintenance import optimize

    storage = _storage(anon, storage_option)
    try:
        summary = optimize(
            lake, vacuum=vacuum, retention_hours=retention_hours, storage_options=storage
        )
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None
    if not quiet:
        typer.echo(str(summary))


@app.command()
def demo(
    lake: Annotated[str, typer.Option("--lake", "-l", help="Where to build the lake.")] = (
        "demo-lake"
    ),
    data: Annotated[Path, typer.Option("--data", help="Where to write the sample files.")] = Path(
        "demo-data"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Build sample data (pydicom's test files, a zip, bad files), ingest it, query it."""
    from dicomlake.sample import write_sample_corpus

    corpus = write_sample_corpus(data)
    typer.echo(f"sample data: {corpus}", err=True)
    ingest(
        [str(corpus)],
        lake,
        workers=None,
        sync=True,
        file_timeout=120.0,
        quiet=quiet,
        commit_rows=5000,
        commit_seconds=5.0,
        thumbnails=True,
        thumbnail_size=256,
        frame=FrameOption.middle,
    )
    query = (
        "SELECT Modality, count(*) AS files, count(DISTINCT SeriesInstanceUID) AS series "
        "FROM instances WHERE status = 'ok' GROUP BY ALL ORDER BY files DESC"
    )
    typer.echo(f'\n$ dicomlake sql --lake {lake} "{query}"')
    sql(query, lake, OutputFormat.table, None)
    query = "SELECT status, error, count(*) AS files FROM instances GROUP BY ALL ORDER BY 1, 3 DESC"
    typer.echo(f'\n$ dicomlake sql --lake {lake} "{query}"')
    sql(query, lake, OutputFormat.table, None)
    typer.echo(f"\nbrowse it: dicomlake serve --lake {lake}", err=True)


@app.command()
def serve(
    lake: LakeOption,
    host: Annotated[
        str, typer.Option(help="Address to bind; the default lets only this machine connect.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8765,
) -> None:
    """Browse the lake in a web browser: series thumbnails, filters, tags, downloads."""
    try:
        from dicomlake.viewer import serve as run_server

        run_server(lake, host=host, port=port)
    except ImportError as exc:
        raise _fail(str(exc)) from None
    except DicomLakeError as exc:
        raise _fail(str(exc)) from None


def main() -> None:
    """Entry point of the ``dicomlake`` script."""
    app()


if __name__ == "__main__":
    main()
