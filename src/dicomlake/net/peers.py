"""Peer addresses, AE titles and TLS contexts shared by the DIMSE commands.

A peer is written ``AET@HOST:PORT`` (``PACS@10.0.0.5:104``, ``ORTHANC@[::1]:4242``);
:func:`parse_peer` checks each part and says what is wrong. AE titles follow PS3.5
§6.2 (AE VR): 1 to 16 characters of the default repertoire, no backslash, no control
characters, not only spaces (leading and trailing spaces are not significant).

TLS (PS3.15 annex B): :func:`server_tls` and :func:`client_tls` build the
:class:`ssl.SSLContext` that pynetdicom takes (``ssl_context=`` of ``start_server``,
``tls_args=`` of ``associate``) from the ``--tls-cert``, ``--tls-key`` and
``--tls-ca`` files.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pynetdicom.events import Event

__all__ = [
    "DEFAULT_AET",
    "MAX_AE_TITLE",
    "Peer",
    "TlsFiles",
    "check_ae_title",
    "client_tls",
    "no_delay",
    "parse_peer",
    "server_tls",
]

#: The AE title dicomlake uses when none is given.
DEFAULT_AET: Final = "DICOMLAKE"
#: Longest AE title (PS3.5 table 6.2-1, AE).
MAX_AE_TITLE: Final = 16


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote application entity: its AE title, host and TCP port."""

    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.aet}@{host}:{self.port}"


def check_ae_title(title: str, *, what: str = "AE title") -> str:
    """``title`` without its leading and trailing spaces, checked against PS3.5.

    Args:
        title: The AE title as given.
        what: How the message names it (``"calling AE title"``, ...).

    Returns:
        The title, stripped of spaces at both ends.

    Raises:
        ValueError: Empty or only spaces, longer than 16 characters, or holding a
            backslash, a control character or a character outside ASCII.

    Example:
        >>> check_ae_title(" PACS ")
        'PACS'
    """
    if not isinstance(title, str):
        raise ValueError(f"{what} must be text, got {type(title).__name__}")
    stripped = title.strip(" ")
    if not stripped:
        raise ValueError(f"{what} is empty (or only spaces): give 1 to 16 characters")
    if len(stripped) > MAX_AE_TITLE:
        raise ValueError(
            f"{what} {stripped!r} has {len(stripped)} characters; at most {MAX_AE_TITLE}"
        )
    if "\\" in stripped:
        raise ValueError(f"{what} {stripped!r} holds a backslash, which is not allowed")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in stripped):
        raise ValueError(f"{what} holds a control character, which is not allowed")
    if not stripped.isascii():
        raise ValueError(f"{what} {stripped!r} holds characters outside ASCII")
    return stripped


def parse_peer(text: str) -> Peer:
    """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets: ``AET@[::1]:104``).

    Raises:
        ValueError: A part is missing or wrong; the message names it.

    Example:
        >>> parse_peer("ORTHANC@127.0.0.1:4242")
        Peer(aet='ORTHANC', host='127.0.0.1', port=4242)
    """
    form = "give the peer as AET@HOST:PORT, e.g. PACS@10.0.0.5:104"
    aet, at, address = text.rpartition("@")
    if not at:
        raise ValueError(f"peer {text!r} has no '@': {form}")
    if not aet:
        raise ValueError(f"peer {text!r} has no AE title before '@': {form}")
    aet = check_ae_title(aet, what=f"AE title of peer {text!r}")
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"peer {text!r}: an IPv6 host is written [HOST]:PORT")
        port_text = rest[1:]
    else:
        host, colon, port_text = address.rpartition(":")
        if not colon:
            raise ValueError(f"peer {text!r} has no ':PORT' after the host: {form}")
        if ":" in host:
            raise ValueError(f"peer {text!r}: write an IPv6 host in brackets, [HOST]:PORT")
    if not host:
        raise ValueError(f"peer {text!r} has no host between '@' and ':': {form}")
    if any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"peer {text!r}: the host {host!r} is not a host name or address")
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(f"peer {text!r}: the port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"peer {text!r}: the port {port} is not between 1 and 65535")
    return Peer(aet, host, port)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The files of ``--tls-cert``, ``--tls-key`` and ``--tls-ca`` (PEM).

    Attributes:
        cert: This side's certificate (chain); a server needs one, a client only when
            the server asks for one.
        key: The certificate's private key (None: it is in ``cert``).
        ca: Certificates to verify the peer against. On a server, given a CA, every
            client must present a certificate it signed; on a client, the server's
            certificate is verified against it (without it, against the system's).
    """

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        """Whether any TLS file was given (so the connection uses TLS)."""
        return bool(self.cert or self.key or self.ca)


def _load_chain(context: ssl.SSLContext, files: TlsFiles) -> None:
    if files.key and not files.cert:
        raise ValueError("--tls-key needs --tls-cert (the certificate the key belongs to)")
    if files.cert:
        try:
            context.load_cert_chain(files.cert, files.key)
        except FileNotFoundError as exc:
            raise ValueError(f"TLS certificate or key not found: {exc.filename}") from exc
        except ssl.SSLError as exc:
            raise ValueError(
                f"TLS certificate {files.cert} or its key cannot be used: {exc.reason or exc}"
            ) from exc


def _load_ca(context: ssl.SSLContext, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError as exc:
        raise ValueError(f"TLS CA file not found: {ca}") from exc
    except ssl.SSLError as exc:
        raise ValueError(f"TLS CA file {ca} cannot be used: {exc.reason or exc}") from exc


def server_tls(files: TlsFiles) -> ssl.SSLContext | None:
    """The SSL context of an SCP (None when no TLS file is given).

    TLS 1.2 at least. With ``files.ca`` every client must present a certificate that
    CA signed (mutual TLS, as PS3.15 B.1 expects); without it any client may connect.

    Raises:
        ValueError: TLS asked for without ``--tls-cert``, or a file missing or unusable.
    """
    if not files.enabled:
        return None
    if not files.cert:
        raise ValueError("a TLS server needs --tls-cert (and --tls-key unless the key is in it)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, files)
    if files.ca:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls(files: TlsFiles, host: str) -> tuple[ssl.SSLContext, str] | None:
    """The ``tls_args`` of an SCU (pynetdicom's ``associate``): context and server name.

    The server's certificate is verified against ``files.ca`` (or the system's CAs)
    and must name ``host``; ``files.cert`` is presented when the server asks.

    Returns:
        ``(context, host)``, or None when no TLS file is given.

    Raises:
        ValueError: A file missing or unusable.
    """
    if not files.enabled:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if files.ca:
        _load_ca(context, files.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load_chain(context, files)
    return context, host


def no_delay(event: Event) -> None:
    """Turn Nagle's algorithm off on an association's socket (``EVT_CONN_OPEN``).

    A small PDU sent while an earlier one is not yet acknowledged would otherwise wait
    for the peer's delayed ACK (40 ms on Linux). The peer's own sends are its
    business: dcmtk as Debian builds it keeps Nagle on unless ``TCP_NODELAY=1`` is
    in its environment, which caps a ``storescu`` session near 20 instances a second
    against any receiver (the benchmark sets it for both receivers it compares).
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # not TCP (a test double), or already closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
