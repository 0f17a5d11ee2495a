"""Running a lake: ``optimize``, ``serve``, and the ``demo`` on built-in sample data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicomlake.cli.ingest import ingest
from dicomlake.cli.options import (
    AnonOption,
    FrameOption,
    LakeOption,
    OutputFormat,
    QuietOption,
    StorageOptionOption,
    fail,
    storage_config,
)
from dicomlake.cli.query import sql
from dicomlake.errors import DicomLakeError


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

    storage = storage_config(anon, storage_option)
    try:
        summary = optimize(
            lake, vacuum=vacuum, retention_hours=retention_hours, storage_options=storage
        )
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        typer.echo(str(summary))


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


def serve(
    lake: LakeOption,
    host: Annotated[
        str, typer.Option(help="Address to bind; the default lets only this machine connect.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="DICOMLAKE_TOKEN",
            help="Bearer token every request must carry; needed to bind beyond loopback.",
        ),
    ] = None,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Bind beyond loopback without a token (anyone may read)."),
    ] = False,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="An origin (https://host:port) whose pages may call this server."),
    ] = None,
    allow_store: Annotated[
        bool,
        typer.Option(
            "--allow-store",
            help="Accept DICOMweb STOW-RS uploads (POST /dicomweb/studies) into the lake.",
        ),
    ] = False,
    store_dir: Annotated[
        str | None,
        typer.Option(
            help="Local folder for uploaded files (default: <lake>/_store; needed for a "
            "lake in object storage)."
        ),
    ] = None,
    ohif_dir: Annotated[
        str | None,
        typer.Option(help="An unpacked OHIF build to serve at /ohif/ instead of the cache's."),
    ] = None,
) -> None:
    """Browse the lake: the gallery, DICOMweb at /dicomweb and OHIF at /ohif."""
    from dicomlake.viewer import LOOPBACK

    if host not in LOOPBACK and token is None and not no_auth:
        raise fail(
            f"binding {host} lets other machines read the lake: give --token (or "
            "DICOMLAKE_TOKEN), or --no-auth to serve it to anyone who can reach it"
        )
    if token is not None and not token.strip():
        raise fail("--token must not be empty")
    if store_dir is not None and not allow_store:
        raise fail("--store-dir is where uploads go: it needs --allow-store")
    try:
        from dicomlake.viewer import serve as run_server

        run_server(
            lake,
            host=host,
            port=port,
            token=token,
            cors_origins=cors_origin or (),
            allow_store=allow_store,
            store_dir=store_dir,
            ohif_dir=ohif_dir,
        )
    except ImportError as exc:
        raise fail(str(exc)) from None
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
