"""The generated safe private list: not stale, the whole of Table E.3.10-1, and used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomlake.deidentify.keys import Key
from dicomlake.deidentify.rules import _safe_private, deidentify
from dicomlake.sample import sample_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "scripts" / "gen_deid_safe_private.py")
TABLE = ROOT / "scripts" / "data" / "ps315_table_e3_10_1.json"
OUTPUT = ROOT / "src" / "dicomlake" / "deidentify" / "safe_private.json"
KEY = Key(bytes(range(32)))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, check=False
    )


def test_generated_list_matches_the_table() -> None:
    run = _run("--check")
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    stale = tmp_path / "safe_private.json"
    stale.write_text(OUTPUT.read_text(encoding="utf-8").replace("(0019,xx23)", "(0019,xx25)"))
    run = _run("--check", "--output", str(stale))
    assert run.returncode == 1
    assert "stale" in run.stdout


def test_an_edited_table_row_is_refused(tmp_path: Path) -> None:
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    table["rows"].append(["PLANTED CREATOR", "(0009,xx01)", "LO", "1", "Anything"])
    edited = tmp_path / "table.json"
    edited.write_text(json.dumps(table), encoding="utf-8")
    run = _run("--check", "--table", str(edited), "--output", str(OUTPUT))
    assert run.returncode != 0
    assert "content_sha256" in run.stderr


def test_the_table_is_whole() -> None:
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    assert table["edition"] == "2026d"
    assert table["acknowledgement"] == "DICOM PS3.15 2026d, © NEMA"
    assert len(table["rows"]) == 479
    attributes = json.loads(OUTPUT.read_text(encoding="utf-8"))["attributes"]
    assert len(attributes) == 479
    assert len(_safe_private()) == 479


@pytest.mark.parametrize(
    ("creator", "tag", "vr", "meaning"),
    [
        (
            "Philips PET Private Group",
            "(7053,xx00)",
            "DS",
            "SUV Factor - Multiplying Stored Pixel Values by Rescale Slope then this factor"
            " results in SUVbw in g/l",
        ),
        ("ELSCINT1", "(00E1,xx21)", "DS", "DLP"),
        ("GEMS_ACQU_01", "(0019,xx23)", "DS", "Table Speed [mm/rotation]"),
        ("GEMS_PARM_01", "(0043,xx27)", "SH", 'Scan Pitch Ratio in the form "n.nnn:1"'),
        ("SIEMENS MR HEADER", "(0019,xx0C)", "IS", "B Value"),
        ("Philips Imaging DD 001", "(2001,xx0a)", "IS", "Image Plane Number"),
        ("Philips Imaging DD 002", "(2001,xx01)", "US", "Edr Setgp"),
        ("HOLOGIC, Inc.", "(7E01,xx12)", "OB", "Codec Content"),
        ("NQRight", "(0299,xx16)", "FL", "Right Other"),
        ("SIEMENS Ultrasound SC2000", "(0119,xx11)", "", "Stage Timer Time"),
        ("SIEMENS SYNGO ULTRA-SOUND TOYON DATA STREAMING", "(7FD1,xx11)", "OB", "After Payload"),
    ],
)
def test_known_rows(creator: str, tag: str, vr: str, meaning: str) -> None:
    attributes = json.loads(OUTPUT.read_text(encoding="utf-8"))["attributes"]
    found = [
        (a["vr"], a["meaning"]) for a in attributes if (a["creator"], a["tag"]) == (creator, tag)
    ]
    assert found == [(vr, meaning)]


@pytest.mark.parametrize(
    ("key", "safe"),
    [
        (("Philips PET Private Group", 0x7053, 0x00), True),
        (("ELSCINT1", 0x00E1, 0x21), True),
        (("GEMS_ACQU_01", 0x0019, 0x23), True),
        (("Philips Imaging DD 001", 0x2001, 0x0A), True),  # the table writes (2001,xx0a)
        (("Philips MR Imaging DD 001", 0x2005, 0x0E), True),
        # the same element under another creator, and rows the table does not have
        (("Philips Imaging DD 001", 0x2001, 0x00), False),
        (("GEMS_ACQU_01", 0x0019, 0xBB), False),
        (("Philips MR Imaging DD 001", 0x2005, 0xB0), False),
        (("SIEMENS MR HEADER", 0x0019, 0x08), False),
    ],
)
def test_rules_read_the_list(key: tuple[str, int, int], safe: bool) -> None:
    assert (key in _safe_private()) is safe


def _with_private() -> Dataset:
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    pet = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    pet.add_new(0x00, "DS", "1.25")
    elscint = ds.private_block(0x00E1, "ELSCINT1", create=True)
    elscint.add_new(0x21, "DS", "512.5")
    elscint.add_new(0x22, "LO", "PLANTEDELSCINT")
    return ds


def test_retain_safe_private_keeps_table_rows_only() -> None:
    out = deidentify(_with_private(), KEY, frozenset({"retain-safe-private"}))
    assert out.private_block(0x7053, "Philips PET Private Group")[0x00].value == "1.25"
    elscint = out.private_block(0x00E1, "ELSCINT1")
    assert elscint[0x21].value == "512.5"
    assert elscint.get_tag(0x22) not in out


def test_without_the_option_every_private_attribute_goes() -> None:
    out = deidentify(_with_private(), KEY, frozenset())
    assert not [elem for elem in out if elem.tag.group % 2 == 1]
