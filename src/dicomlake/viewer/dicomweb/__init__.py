"""DICOMweb (PS3.18) answered from the lake: QIDO-RS, WADO-RS, WADO-URI, STOW-RS.

Mounted at ``/dicomweb`` of ``dicomlake serve``. Searches run on the lake's views
with bound parameters; retrievals stream the stored bytes of files and zip members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # starlette loads only when the routes are built
    from starlette.routing import BaseRoute

    from dicomlake.search.connection import LakeConnection

__all__ = ["routes"]


def routes(
    db: LakeConnection, *, allow_store: bool = False, store_dir: str | None = None
) -> list[BaseRoute]:
    """The routes under ``/dicomweb``."""
    from dicomlake.viewer.dicomweb.service import build_routes

    return build_routes(db, allow_store=allow_store, store_dir=store_dir)
