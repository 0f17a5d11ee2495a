"""OHIF, the web viewer of the DICOM world, installed from npm and served at ``/ohif/``.

:mod:`~dicomlake.viewer.ohif.install` fetches, checks and unpacks it into the user's
cache; :mod:`~dicomlake.viewer.ohif.site` serves it over ``/dicomweb``.
"""

from __future__ import annotations

from dicomlake.viewer.ohif.install import (
    DEFAULT_VERSION,
    PACKAGE,
    InstallSummary,
    cache_dir,
    find_installed,
    install,
    installed_versions,
)
from dicomlake.viewer.ohif.site import routes

__all__ = [
    "DEFAULT_VERSION",
    "PACKAGE",
    "InstallSummary",
    "cache_dir",
    "find_installed",
    "install",
    "installed_versions",
    "routes",
]
