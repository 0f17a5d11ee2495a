"""Shared fixtures: real DICOM files from pydicom's test data, written to tmp folders."""

from __future__ import annotations

import shutil
from pathlib import Path

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
