"""What the commands share: the app, common options, and how a command fails."""

from __future__ import annotations

import enum
import sys
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from dicomlake.storage.settings import StorageConfig

app = typer.Typer(
    name="dicomlake",
    help="Turn folders, zips and buckets of DICOM files into a Delta Lake you query with SQL.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold patient data
    add_completion=False,
)

#: Whether the process is the command's own (the ``dicomlake`` script, set by
#: :func:`dicomlake.cli.main`), not a caller's that runs ``app`` in-process (a test's
#: CliRunner, a notebook): only then may a command change process-wide settings.
own_process = False

LakeOption = Annotated[
    str, typer.Option("--lake", "-l", help="Lake folder or URI (s3://bucket/prefix).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No summary line.")]
WorkersOption = Annotated[
    int | None,
    typer.Option("--workers", "-w", min=0, help="Worker processes (default: all cores)."),
]
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


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``message`` as one error line on stderr; return the exit to raise."""
    typer.echo(f"dicomlake: error: {message}", err=True)
    return typer.Exit(code)


def interactive(quiet: bool) -> bool:
    """Whether to draw live progress: not asked to be quiet, and stderr is a terminal."""
    return not quiet and sys.stderr.isatty()


def storage_config(anon: bool, options: list[str] | None) -> StorageConfig | None:
    """The StorageConfig of ``--anon`` and ``--storage-option``; None when neither."""
    if not anon and not options:
        return None
    from dicomlake.storage.settings import StorageConfig, parse_storage_option

    try:
        pairs = dict(parse_storage_option(text) for text in options or ())
        if anon:
            pairs["anon"] = "true"
        return StorageConfig.from_options(pairs)
    except ValueError as exc:
        raise fail(str(exc)) from None
