"""The DICOMweb routes (being built)."""

from __future__ import annotations

from starlette.routing import BaseRoute

from dicomlake.viewer.connection import LakeConnection


def build_routes(
    db: LakeConnection, *, allow_store: bool = False, store_dir: str | None = None
) -> list[BaseRoute]:
    """The routes under ``/dicomweb``."""
    return []
