"""Shared fixtures, and the rule that CI may not skip an area for a missing component.

Fixtures give real DICOM files from pydicom's test data, written to tmp folders.

A test skips when something it drives is missing on the machine (Chromium, dcmtk,
Java, the native build, torch, moto): fine on a laptop, where the run ends with the
list of areas it skipped. With ``DICOMLAKE_REQUIRE=all`` (set by ``.ci/run``, which
installs every component) each such skip is a failure instead, so CI cannot stay green
while an area silently vanishes. A skip that is about the test's own conditions, not a
missing component, says so with a reason starting ``not applicable:``; nothing else is
exempt.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomlake.sample import sample_file, write_sample_corpus


@pytest.fixture(scope="session")
def sample_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus (pydicom test files, zips, bad files); treat as read-only."""
    return write_sample_corpus(tmp_path_factory.mktemp("corpus") / "data")


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    """A folder of a few real, clean DICOM files."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm", "JPEG2000.dcm"):
        shutil.copyfile(sample_file(name), folder / name)
    return folder


#: The prefix of a skip reason that is not about a missing component.
NOT_APPLICABLE = "not applicable:"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where browser tests put screenshots: $DICOMLAKE_TEST_ARTIFACTS, else a temp folder."""
    folder = os.environ.get("DICOMLAKE_TEST_ARTIFACTS")
    if folder:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


def _require_all() -> bool:
    return os.environ.get("DICOMLAKE_REQUIRE", "").strip().lower() == "all"


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _enforce(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip for a missing component into a failure under DICOMLAKE_REQUIRE=all."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason.startswith(NOT_APPLICABLE) or not _require_all():
        return
    report.outcome = "failed"
    report.longrepr = (
        f"DICOMLAKE_REQUIRE=all: skipped for a missing component ({reason}); install it "
        f"(.ci/run does) or, if the skip is not about a component, start its reason with "
        f"{NOT_APPLICABLE!r}"
    )


#: Markers a test gets from the fixtures it uses, so ``-m "not browser"`` needs no list.
_MARKERS_BY_FIXTURE = {"browser": "browser", "spark": "spark", "torch": "torch"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            marker = _MARKERS_BY_FIXTURE.get(fixture)
            if marker is not None:
                item.add_marker(marker)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome = yield
    _enforce(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[Any]:
    outcome = yield
    _enforce(outcome.get_result())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which areas a laptop run skipped, by reason, so none vanishes unnoticed."""
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = Counter(
        _skip_reason(r) for r in skipped if not _skip_reason(r).startswith(NOT_APPLICABLE)
    )
    if not reasons:
        return
    terminalreporter.section("areas skipped for a missing component")
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:5d}  {reason}")
    terminalreporter.write_line("(DICOMLAKE_REQUIRE=all makes each of these a failure)")
