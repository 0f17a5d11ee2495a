"""The web viewer: ``dicomlake serve`` shows a lake's series as a thumbnail grid.

A read-only local web app (Starlette and uvicorn, from the ``web`` extra) with plain
HTML, CSS and JavaScript shipped in this package: no CDN, no front-end framework.
Nothing here is imported by ``import dicomlake``; starlette and uvicorn load only when
:func:`create_app` or :func:`serve` is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["LOOPBACK", "create_app", "serve"]

_EXTRA_HINT = "the viewer needs the web extra: pip install 'dicomlake[web]'"

#: Addresses that only this machine can reach.
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _require_web() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{_EXTRA_HINT} ({exc})") from exc


def create_app(
    lake: str,
    *,
    check_every: float = 2.0,
    host: str | None = None,
    **options: Any,
) -> Starlette:
    """Build the viewer's ASGI app for ``lake``.

    Args:
        lake: Lake folder or URI.
        check_every: Seconds between checks for a new version of the lake.
        host: The address the server binds; a loopback address makes the app answer
            only to loopback host names (a guard against DNS rebinding).
        **options: ``token``, ``cors_origins``, ``allow_store``, ``store_dir`` and
            ``ohif_dir`` of :func:`dicomlake.viewer.app.create_app`.

    Returns:
        The Starlette application.

    Raises:
        ImportError: starlette or uvicorn is not installed.
        TableNotFound: Nothing was ingested into ``lake`` yet.
        LakeError: The lake cannot be read.
    """
    _require_web()
    from dicomlake.viewer.app import LOOPBACK_HOSTS
    from dicomlake.viewer.app import create_app as _create_app

    allowed = LOOPBACK_HOSTS if host in LOOPBACK else None
    return _create_app(lake, check_every=check_every, allowed_hosts=allowed, **options)


def serve(
    lake: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve the viewer for ``lake`` until interrupted.

    Args:
        lake: Lake folder or URI.
        host: Address to bind; keep the default unless others must reach it.
        port: TCP port.
        log_level: uvicorn's log level.
        **options: Passed to :func:`create_app` (``token``, ``cors_origins``, ...).

    Raises:
        ImportError: starlette or uvicorn is not installed.
        TableNotFound: Nothing was ingested into ``lake`` yet.
        LakeError: The lake cannot be read.
    """
    app = create_app(lake, host=host, **options)
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
