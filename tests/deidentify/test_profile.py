"""The generated Table E.1-1 module: not stale, and the rows it holds are the standard's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dicomlake.deidentify.options import OPTIONS
from dicomlake.deidentify.profile import OPTION_COLUMNS, PATTERNS, PRIVATE, ROWS, Row
from dicomlake.deidentify.rules import effective_action

ROOT = Path(__file__).resolve().parents[2]


def test_generated_module_matches_the_table() -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_deid_profile.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_check_fails_on_a_hand_edit(tmp_path: Path) -> None:
    stale = tmp_path / "profile.py"
    stale.write_text((ROOT / "src/dicomlake/deidentify/profile.py").read_text() + "# edited\n")
    script = str(ROOT / "scripts/gen_deid_profile.py")
    run = subprocess.run(
        [sys.executable, script, "--check", "--module", str(stale)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "stale" in run.stdout


@pytest.mark.parametrize(
    ("tag", "name", "basic", "options"),
    [
        (0x00080050, "Accession Number", "Z", {}),
        (0x00100010, "Patient's Name", "Z", {}),
        (0x00100020, "Patient ID", "Z/D", {}),
        (0x0020000D, "Study Instance UID", "U", {"retain-uids": "K"}),
        (0x00080018, "SOP Instance UID", "U", {"retain-uids": "K"}),
        (0x00181000, "Device Serial Number", "X/Z/D", {"retain-device-identity": "K"}),
        (0x00080080, "Institution Name", "X/Z/D", {"retain-institution-identity": "K"}),
        (0x00101010, "Patient's Age", "X", {"retain-patient-characteristics": "K"}),
        (
            0x00080020,
            "Study Date",
            "Z",
            {"retain-longitudinal-full-dates": "K", "retain-longitudinal-modified-dates": "C"},
        ),
        (0x00081030, "Study Description", "X", {"clean-descriptors": "C"}),
        (0x00400555, "Acquisition Context Sequence", "X/Z", {"clean-structured-content": "C"}),
        (0x0040A730, "Content Sequence", "D", {"clean-structured-content": "C"}),
    ],
)
def test_known_rows(tag: int, name: str, basic: str, options: dict[str, str]) -> None:
    row = ROWS[tag]
    assert (row.name, row.basic, dict(row.options)) == (name, basic, options)


def test_wildcards_and_private_row() -> None:
    by_name = {row.name: (mask, value) for mask, value, row in PATTERNS}
    assert by_name["Overlay Data"] == (0xFF00FFFF, 0x60003000)
    assert by_name["Curve Data"] == (0xFF000000, 0x50000000)
    assert Row("Private Attributes", "X", (("retain-safe-private", "C"),)) == PRIVATE


def test_every_option_column_is_an_option_and_every_action_a_code() -> None:
    assert set(OPTION_COLUMNS) <= set(OPTIONS)
    codes = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    for row in [*ROWS.values(), *(r for _, _, r in PATTERNS), PRIVATE]:
        assert row.basic in codes
        assert {action for _, action in row.options} <= {"K", "C"}
        assert {name for name, _ in row.options} <= set(OPTION_COLUMNS)


@pytest.mark.parametrize(
    ("tag", "options", "expected"),
    [
        (0x00181000, set(), ("D", None)),  # X/Z/D
        (0x00181000, {"retain-device-identity"}, ("K", "retain-device-identity")),
        (0x00100020, set(), ("D", None)),  # Z/D
        (0x00400555, set(), ("Z", None)),  # X/Z
        (0x00081140, set(), ("U", None)),  # Referenced Image Sequence, X/Z/U*
        (0x00080021, set(), ("D", None)),  # Series Date, X/D
        (
            0x00080020,
            {"retain-longitudinal-modified-dates"},
            ("C", "retain-longitudinal-modified-dates"),
        ),
        (0x00081030, {"clean-descriptors", "retain-uids"}, ("C", "clean-descriptors")),
    ],
)
def test_effective_action(tag: int, options: set[str], expected: tuple[str, str | None]) -> None:
    assert effective_action(ROWS[tag], frozenset(options)) == expected


def test_retain_wins_over_clean() -> None:
    # Allergies: retain-patient-characteristics C and clean-descriptors C; a K beats a C
    row = Row("x", "X", (("clean-descriptors", "C"), ("retain-uids", "K")))
    assert effective_action(row, frozenset({"clean-descriptors", "retain-uids"}))[0] == "K"
