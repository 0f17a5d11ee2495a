"""Debian's Chromium, headless, driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: WebGL in software, for pages that draw with it (OHIF's viewports).
WEBGL_ARGS = ["--enable-unsafe-swiftshader", "--use-angle=swiftshader"]


@contextmanager
def chromium(*, webgl: bool = False) -> Iterator[Any]:
    """A Chromium browser; each launch gets a fresh, throw-away user data dir.

    Skips (a failure under ``DICOMLAKE_REQUIRE=all``) when Chromium is not installed.
    """
    if not Path(CHROMIUM).exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    args = CHROMIUM_ARGS + (WEBGL_ARGS if webgl else [])
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield instance
        finally:
            instance.close()
