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
from dicomlake.cli.qr import (
    DimseAetOption,
    DimseAllowOption,
    DimsePeerOption,
    DimsePortOption,
    DimseTlsCaOption,
    DimseTlsCertOption,
    DimseTlsKeyOption,
    NoWebOption,
    dimse_server,
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
    """Refresh the acquisition table, compact small files, checkpoint (and vacuum on request)."""
    from dicomlake.jobs.acquisition import update_acquisition
    from dicomlake.lake.maintenance import optimize

    storage = storage_config(anon, storage_option)
    try:
        # derived tables first, so that an old lake's new ones are compacted too
        acquired = update_acquisition(lake, storage_options=storage)
        summary = optimize(
            lake, vacuum=vacuum, retention_hours=retention_hours, storage_options=storage
        )
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        typer.echo(f"acquisition: {acquired.extracted} rows extracted, {acquired.removed} removed")
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
    dimse_port: DimsePortOption = None,
    dimse_aet: DimseAetOption = "DICOMLAKE",
    dimse_peer: DimsePeerOption = None,
    dimse_allow_aet: DimseAllowOption = None,
    dimse_tls_cert: DimseTlsCertOption = None,
    dimse_tls_key: DimseTlsKeyOption = None,
    dimse_tls_ca: DimseTlsCaOption = None,
    no_web: NoWebOption = False,
) -> None:
    """Browse the lake: the gallery, DICOMweb at /dicomweb and OHIF at /ohif (and DIMSE)."""
    from dicomlake.viewer import LOOPBACK

    dimse_options = dimse_peer or dimse_allow_aet or dimse_tls_cert or dimse_tls_key or dimse_tls_ca
    if dimse_port is None and (no_web or dimse_options):
        raise fail("--no-web and the other --dimse-* options need --dimse-port")
    if not no_web and host not in LOOPBACK and token is None and not no_auth:
        raise fail(
            f"binding {host} lets other machines read the lake: give --token (or "
            "DICOMLAKE_TOKEN), or --no-auth to serve it to anyone who can reach it"
        )
    open_dimse = not dimse_allow_aet and not dimse_tls_ca and not no_auth
    if dimse_port is not None and host not in LOOPBACK and open_dimse:
        raise fail(
            f"binding {host} lets other machines query and retrieve the lake over "
            "DIMSE: give --dimse-allow-aet or --dimse-tls-ca, or --no-auth to serve "
            "it to anyone who can reach it"
        )
    if token is not None and not token.strip():
        raise fail("--token must not be empty")
    if store_dir is not None and not allow_store:
        raise fail("--store-dir is where uploads go: it needs --allow-store")
    scp = None
    try:  # Ctrl-C (SIGINT) stops the servers whenever it comes, and exits 0
        if dimse_port is not None:
            scp = dimse_server(
                lake,
                host=host,
                port=dimse_port,
                aet=dimse_aet,
                peers=dimse_peer,
                allow_aets=dimse_allow_aet,
                tls_cert=dimse_tls_cert,
                tls_key=dimse_tls_key,
                tls_ca=dimse_tls_ca,
            )
            typer.echo(f"DIMSE: {scp.aet} on {host}:{scp.port}", err=True)
        if no_web:
            _wait_for_interrupt()
            return
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
    except KeyboardInterrupt:
        pass
    except ImportError as exc:
        raise fail(str(exc)) from None
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    finally:
        if scp is not None:
            scp.stop()


def _wait_for_interrupt() -> None:
    """Sleep until Ctrl-C (the DIMSE server runs in its own threads)."""
    import time

    while True:
        time.sleep(3600)
