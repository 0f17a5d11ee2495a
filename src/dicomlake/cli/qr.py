"""``serve``'s DIMSE options: the lake as a query/retrieve SCP beside the web server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import fail
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.net.qr import QueryRetrieveSCP

DimsePortOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=65535,
        help="Also answer DIMSE C-ECHO, C-FIND, C-GET and C-MOVE on this TCP port.",
        rich_help_panel="DIMSE",
    ),
]
DimseAetOption = Annotated[
    str, typer.Option(help="The DIMSE server's AE title.", rich_help_panel="DIMSE")
]
DimsePeerOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="AET=HOST:PORT",
        help="A C-MOVE destination, repeatable; a move to another AE title is refused.",
        rich_help_panel="DIMSE",
    ),
]
DimseAllowOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="AET",
        help="A calling AE title allowed to associate, repeatable (default: any).",
        rich_help_panel="DIMSE",
    ),
]
DimseTlsCertOption = Annotated[
    str | None,
    typer.Option(help="DIMSE over TLS: the server's certificate (PEM).", rich_help_panel="DIMSE"),
]
DimseTlsKeyOption = Annotated[
    str | None,
    typer.Option(
        help="The certificate's private key (PEM), unless in it.", rich_help_panel="DIMSE"
    ),
]
DimseTlsCaOption = Annotated[
    str | None,
    typer.Option(
        help="Clients must present a certificate this CA (PEM) signed.", rich_help_panel="DIMSE"
    ),
]
NoWebOption = Annotated[
    bool,
    typer.Option(
        "--no-web", help="Serve only DIMSE (needs --dimse-port).", rich_help_panel="DIMSE"
    ),
]


def dimse_server(
    lake: str,
    *,
    host: str,
    port: int,
    aet: str,
    peers: list[str] | None,
    allow_aets: list[str] | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_ca: str | None,
) -> QueryRetrieveSCP:
    """The SCP of ``serve``'s DIMSE options, started.

    Raises:
        typer.Exit: A bad option (exit 2), or the lake or the port cannot be used.
    """
    from dicomlake.net.peers import TlsFiles, server_tls
    from dicomlake.net.qr import QueryRetrieveSCP, parse_destination

    try:
        destinations = [parse_destination(text) for text in peers or ()]
        tls = server_tls(TlsFiles(tls_cert, tls_key, tls_ca))
        scp = QueryRetrieveSCP(
            lake,
            aet=aet,
            host=host,
            port=port,
            destinations=destinations,
            allow_aets=allow_aets or (),
            ssl_context=tls,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        return scp.start()
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
