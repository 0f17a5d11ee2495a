"""``dicomlake receive`` and ``dicomlake pull``: DICOM networking into the lake."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import LakeOption, fail
from dicomlake.cli.render import live_progress
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.net.peers import TlsFiles
    from dicomlake.net.pull import PullSummary
    from dicomlake.net.receive import Receiver, ReceiveSummary

StoreOption = Annotated[
    str,
    typer.Option(
        "--store", help="Folder the received files are kept in: <study>/<series>/<sop>.dcm."
    ),
]
AetOption = Annotated[str, typer.Option("--aet", help="Our AE title.")]
TlsCertOption = Annotated[
    str | None, typer.Option("--tls-cert", help="TLS: our certificate (PEM); turns TLS on.")
]
TlsKeyOption = Annotated[
    str | None, typer.Option("--tls-key", help="TLS: the certificate's private key (PEM).")
]
TlsCaOption = Annotated[
    str | None,
    typer.Option(
        "--tls-ca",
        help="TLS: CA certificates (PEM) the peer's certificate must be signed by "
        "(receive: clients must then present one).",
    ),
]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No live progress; only the summary line.")
]


def _tls(cert: str | None, key: str | None, ca: str | None) -> TlsFiles:
    from dicomlake.net.peers import TlsFiles

    return TlsFiles(cert=cert, key=key, ca=ca)


class _StopOnSignal:
    """Ctrl-C and SIGTERM stop a listening receiver cleanly, whenever they come.

    Installed before the receiver starts, so a signal that arrives while the port is
    being bound, or just after, still stops it cleanly once started. While earlier
    runs' files are caught up (an ingest that resumes), and for a second signal, it
    interrupts as Ctrl-C always does.
    """

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.stop = threading.Event()

    def __enter__(self) -> _StopOnSignal:
        self._previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self.receiver.catching_up or self.stop.is_set():  # a second Ctrl-C forces
            raise KeyboardInterrupt
        self.stop.set()

    def wait(self) -> None:
        """Block until a signal asks to stop."""
        while not self.stop.wait(0.5):
            pass


def receive_line(summary: ReceiveSummary) -> str:
    """One line: instances received, ok, failed, bytes, rate."""
    failures = ", ".join(f"{k} {v}" for k, v in summary.failures.most_common())
    parts = [
        f"{summary.received} instances",
        f"{summary.ok} stored",
        f"{summary.failed} failed" + (f" ({failures})" if failures else ""),
        f"{summary.bytes / 1e6:.1f} MB",
        f"{summary.associations} associations",
    ]
    if summary.rejected:
        parts.append(f"{summary.rejected} rejected")
    if summary.replaced:
        parts.append(f"{summary.replaced} replaced")
    if summary.caught_up:
        parts.append(f"{summary.caught_up} files of earlier runs ingested")
    return (
        "received: "
        + ", ".join(parts)
        + f" in {summary.seconds:.1f} s ({summary.per_second:.0f} instances/s)"
    )


def receive(
    lake: LakeOption,
    store: StoreOption,
    aet: AetOption = "DICOMLAKE",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP port.")] = 11112,
    allow_aet: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-aet",
            help="Only these calling AE titles may connect (repeatable); others are rejected.",
        ),
    ] = None,
    commit_seconds: Annotated[
        float, typer.Option(min=0.1, help="Commit received rows to the lake every S seconds.")
    ] = 2.0,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    quiet: QuietOption = False,
) -> None:
    """Receive instances (C-STORE SCP, and C-ECHO) into the store folder and the lake.

    Runs until Ctrl-C or SIGTERM; rows still buffered are committed before it exits.
    """
    from dicomlake.net.receive import Receiver

    try:
        receiver = Receiver(
            lake,
            store,
            aet=aet,
            host=host,
            port=port,
            allow_aets=allow_aet or (),
            tls=_tls(tls_cert, tls_key, tls_ca),
            commit_seconds=commit_seconds,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    with _StopOnSignal(receiver) as signals:
        try:
            receiver.start()
        except KeyboardInterrupt:
            raise fail("interrupted while catching up; re-run to go on", 130) from None
        except DicomLakeError as exc:
            raise fail(str(exc)) from None
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        if not quiet:
            typer.echo(
                f"dicomlake: receiving as {receiver.aet} on {host}:{receiver.port} "
                f"({'TLS' if receiver.ssl_context else 'no TLS'}); Ctrl-C to stop",
                err=True,
            )
        try:
            with live_progress("waiting for associations…", _receive_progress, quiet) as progress:
                receiver.progress = progress
                signals.wait()
        finally:
            receiver.progress = None  # the live line is gone
            try:
                summary = receiver.stop()
            except DicomLakeError as exc:
                raise fail(
                    f"{exc}; the files are in {store}: the next receive (or an ingest of it) "
                    "brings them into the lake"
                ) from None
    typer.echo(receive_line(summary))


def _receive_progress(summary: ReceiveSummary) -> str:
    """A receiver's live line."""
    return (
        f"{summary.received} received · {summary.per_second:.0f}/s · "
        f"{summary.failed} failed · {summary.associations} associations"
    )


def _pull_progress(summary: PullSummary) -> str:
    """A pull's live line."""
    return (
        f"{summary.studies} studies · {summary.fetched} fetched · "
        f"{summary.skipped} skipped · {summary.failed} failed · "
        f"{summary.per_second:.0f}/s"
    )


def pull_line(summary: PullSummary) -> str:
    """One line: studies, series, instances fetched and skipped, bytes, failures."""
    return (
        f"pulled: {summary.studies} studies, {summary.series} series, "
        f"{summary.fetched} instances fetched, {summary.skipped} skipped (in the lake), "
        f"{summary.failed} failed, {summary.bytes / 1e6:.1f} MB in {summary.seconds:.1f} s "
        f"({summary.per_second:.0f} instances/s)"
    )


def pull(
    peer: Annotated[
        str, typer.Option("--from", help="The PACS: AET@HOST:PORT (e.g. PACS@10.0.0.5:104).")
    ],
    lake: LakeOption,
    store: StoreOption,
    aet: AetOption = "DICOMLAKE",
    match: Annotated[
        list[str] | None,
        typer.Option(
            "--match",
            metavar="KEY=VALUE",
            help="Study-level C-FIND key (repeatable): PatientID=123, "
            "ModalitiesInStudy=CT, StudyDate=20240101-20240131, AccessionNumber=A*.",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only studies from this date on (YYYY-MM-DD).")
    ] = None,
    get: Annotated[
        bool,
        typer.Option(
            "--get/--move",
            help="C-GET, our AE storing what the PACS sends on the same association "
            "(default), or C-MOVE to a receiver this command runs on --move-port, named by "
            "--aet (the PACS must know it).",
        ),
    ] = True,
    move_port: Annotated[
        int, typer.Option("--move-port", min=1, max=65535, help="C-MOVE: our receiver's port.")
    ] = 11112,
    move_host: Annotated[
        str,
        typer.Option(
            "--move-host",
            help="C-MOVE: address our receiver listens on (only the PACS's AE title is let in).",
        ),
    ] = "0.0.0.0",
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            min=1,
            max=16,
            help="Associations at once: C-GET, and C-FIND where the PACS counts its answers.",
        ),
    ] = 2,
    acse_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for association answers.")
    ] = 30.0,
    dimse_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds to wait for each query or retrieve answer.")
    ] = 120.0,
    network_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds an association may stay silent.")
    ] = 120.0,
    tls_cert: TlsCertOption = None,
    tls_key: TlsKeyOption = None,
    tls_ca: TlsCaOption = None,
    quiet: QuietOption = False,
) -> None:
    """Pull studies from a PACS: C-FIND, then C-GET (or C-MOVE) what the lake lacks.

    Instances whose SOP Instance UID the lake holds (status ok) are not fetched again,
    so a pull that was stopped goes on where it stopped when run again.
    """
    from dicomlake.net.peers import parse_peer
    from dicomlake.net.pull import Pull, Timeouts, parse_matches

    try:
        remote = parse_peer(peer)
        keys = parse_matches(match or (), since)
        job = Pull(
            remote,
            lake,
            store,
            aet=aet,
            keys=keys,
            move=not get,
            move_host=move_host,
            move_port=move_port,
            timeouts=Timeouts(acse=acse_timeout, dimse=dimse_timeout, network=network_timeout),
            tls=_tls(tls_cert, tls_key, tls_ca),
            parallel=parallel,
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    try:
        with live_progress("querying…", _pull_progress, quiet) as progress:
            job.progress = progress
            summary = job.run()
    except DicomLakeError as exc:
        partial = job.summary
        typer.echo(pull_line(partial), err=True)
        raise fail(f"{exc}; what was fetched is kept: run the same pull again to go on") from None
    except KeyboardInterrupt:
        raise fail("interrupted; what was fetched is kept: run again to go on", 130) from None
    typer.echo(pull_line(summary))
    if summary.failed:
        for reason, count in summary.failures.most_common():
            typer.echo(f"dicomlake: failed: {count} × {reason}", err=True)
        raise typer.Exit(1)
