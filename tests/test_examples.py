"""The examples run as a user runs them: a fresh process, sample data, real output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]

pytest.importorskip("torch")

EXAMPLES = Path(__file__).parent.parent / "examples"


def train(script: str, lake: Path, data: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """Run a training example for two epochs in the foreground (no loader workers)."""
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / script),
            "--lake",
            str(lake),
            "--data",
            str(data),
            "--epochs",
            "2",
            "--workers",
            "0",
            "--cache-dir",
            str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.slow
def test_train_tiny_builds_a_lake_and_trains_two_epochs(tmp_path: Path) -> None:
    lake, cache = tmp_path / "lake", tmp_path / "cache"
    result = train("train_tiny.py", lake, tmp_path / "data", cache)
    assert (lake / "instances" / "_delta_log").is_dir()
    classes = re.search(r"(\d+) frames, classes \{(.*)\}", result.stdout)
    assert classes is not None and int(classes.group(1)) > 100
    assert all(name in classes.group(2) for name in ("'CT'", "'MR'", "'US'", "'CR'"))
    losses = [float(v) for v in re.findall(r"epoch \d+: loss ([0-9.]+)", result.stdout)]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    assert losses[1] < losses[0]  # it learns something, deterministically (seed 0)
    # the second epoch read the frames from the cache the first one wrote
    assert len(list(cache.rglob("*.npy"))) >= int(classes.group(1)) - 1
    # the one truncated file of the sample data is skipped, named by path only
    assert "MR_truncated.dcm" in result.stderr


@pytest.mark.slow
def test_train_seg_builds_a_lake_of_segs_and_trains_two_epochs(tmp_path: Path) -> None:
    pytest.importorskip("highdicom", reason="highdicom (the ml extra) writes the SEGs")
    cache = tmp_path / "cache"
    result = train("train_seg.py", tmp_path / "lake", tmp_path / "data", cache)
    assert "8 segmentations, 8 segments, 8 ok" in result.stdout
    assert "8 segmentations, 0 rejected" in result.stdout
    epochs = re.findall(r"epoch \d+: loss ([0-9.]+), dice ([0-9.]+)", result.stdout)
    assert len(epochs) == 2
    losses = [float(loss) for loss, _ in epochs]
    assert losses[1] < losses[0]  # it learns, deterministically (seed 0)
    assert float(epochs[1][1]) > 0  # and finds some of the ball
    # the second epoch read frames and masks from the cache the first one wrote
    assert len(list((cache / "labels").rglob("*.npy"))) == 8
