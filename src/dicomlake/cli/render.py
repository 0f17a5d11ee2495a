"""How results look: the ingest summary, live progress, query results, lake info.

Kept apart from the commands, which only parse options and call the API.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self, TypeVar

import typer

from dicomlake.cli.options import OutputFormat, interactive

if TYPE_CHECKING:
    import pyarrow as pa

    from dicomlake.jobs.ingest import IngestSummary
    from dicomlake.lake.maintenance import TableState


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


def print_summary_table(summary: IngestSummary) -> None:
    """The closing table of an interactive ingest, on stderr."""
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


class LiveLine:
    """A live line on stderr (spinner, text, time), redrawn as a long job goes on."""

    def __init__(self, first: str = "listing…") -> None:
        self._first = first

    def __enter__(self) -> Self:
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
        self._task = self._progress.add_task(self._first, total=None)
        return self

    def show(self, text: str) -> None:
        """Replace the line's text, and draw it now.

        A short job's last update would otherwise fall between two of rich's timed
        refreshes and never show.
        """
        self._progress.update(self._task, description=text, refresh=True)

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(None, None, None)


_Summary = TypeVar("_Summary")


@contextmanager
def live_progress(
    first: str, line: Callable[[_Summary], str], quiet: bool
) -> Iterator[Callable[[_Summary], None] | None]:
    """A job's ``progress`` callback that redraws a live line with ``line(summary)``.

    The line starts as ``first``. None (no callback) when quiet or stderr is no terminal.
    """
    if not interactive(quiet):
        yield None
        return
    with LiveLine(first) as display:
        yield lambda summary: display.show(line(summary))


class Progress(LiveLine):
    """An ingest's live line: files done, files/s, errors so far."""

    def update(self, summary: IngestSummary) -> None:
        """Redraw with the running summary."""
        self.show(
            f"{summary.done} extracted · {summary.files_per_second:.0f} files/s · "
            f"{summary.error_count} errors · {summary.not_dicom} not DICOM · "
            f"{summary.skipped_unchanged} unchanged"
        )


class Rows(NamedTuple):
    """A query's result as Python values: what the table and JSON formats print.

    Fetched without Arrow, so a query printed to the terminal never imports pyarrow
    (a sixth of a short ``dicomlake sql``).
    """

    columns: list[str]
    values: list[tuple[Any, ...]]


def write_result(result: pa.Table | Rows, output_format: OutputFormat, output: Path | None) -> None:
    """A query's result in ``output_format``, to ``output`` or stdout.

    ``result`` is an Arrow table for the csv and parquet formats, :class:`Rows` else.
    """
    if isinstance(result, Rows):
        if output_format is OutputFormat.json:
            _write_json(
                [dict(zip(result.columns, row, strict=True)) for row in result.values], output
            )
        else:
            _print_table(result, output)
        return
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    if output_format is OutputFormat.parquet:
        pq.write_table(result, output)
    elif output is not None:
        pa_csv.write_csv(result, output)
    else:
        pa_csv.write_csv(result, _StdoutBytes())


def _write_json(records: list[dict[str, Any]], output: Path | None) -> None:
    import orjson

    text = orjson.dumps(
        records, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    ).decode()
    if output is not None:
        output.write_text(text + "\n")
    else:
        typer.echo(text)


class _StdoutBytes:
    """A binary sink for pyarrow writers that goes to stdout."""

    closed = False

    def write(self, data: bytes) -> int:
        sys.stdout.buffer.write(data)
        return len(data)

    def flush(self) -> None:
        sys.stdout.buffer.flush()


def _print_table(result: Rows, output: Path | None, limit: int = 1000) -> None:
    from rich.console import Console
    from rich.table import Table

    view = Table(show_lines=False)
    for name in result.columns:
        view.add_column(name, overflow="fold")
    for row in result.values[:limit]:
        view.add_row(*("" if v is None else str(v) for v in row))
    if output is not None:
        with output.open("w") as handle:
            Console(file=handle, width=200).print(view)
        return
    # piped output is not squeezed to 80 columns: the reader is a file or a pager
    console = Console() if sys.stdout.isatty() else Console(width=240)
    console.print(view)
    if len(result.values) > limit:
        console.print(f"({len(result.values)} rows, first {limit} shown; use --format csv for all)")


def state_rows(state: TableState) -> dict[str, Any]:
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


def print_info(lake: str, summary: dict[str, Any]) -> None:
    """The table of ``dicomlake info``: counts, then nested counts indented."""
    from rich.console import Console
    from rich.table import Table

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
