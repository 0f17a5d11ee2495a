"""Zip members with hostile names are rows, read in place; nothing is written anywhere."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import dicomlake
from dicomlake.sample import sample_file


def test_traversal_absolute_duplicate_and_odd_member_names(tmp_path: Path) -> None:
    ct = sample_file("CT_small.dcm").read_bytes()
    mr = sample_file("MR_small.dcm").read_bytes()
    archive = tmp_path / "src" / "hostile.zip"
    archive.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("../../escape.dcm", ct)
            zf.writestr("/etc/absolute.dcm", ct)
            zf.writestr("dup.dcm", ct)
            zf.writestr("dup.dcm", mr)  # the same name twice
            zf.writestr("naïve 日本.dcm", ct)  # UTF-8 flag set by zipfile
    before = sorted(p.name for p in tmp_path.rglob("*"))
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(archive.parent)], str(lake), workers=0)
    con = dicomlake.connect(str(lake))
    rows = con.sql("SELECT path, relative_path, status, Modality FROM instances").fetchall()
    con.close()
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "one row per path, even for a duplicated name"
    by_member = {r[1].split("hostile.zip/", 1)[1]: r for r in rows}
    assert set(by_member) == {"../../escape.dcm", "/etc/absolute.dcm", "dup.dcm", "naïve 日本.dcm"}
    assert all(r[2] == "ok" for r in rows)
    assert by_member["dup.dcm"][3] == "MR"  # the last entry of the name, as unzip reads it
    assert summary.done == len(rows)
    # read in place: no file appeared outside the lake, none beside the archive
    after = sorted(p.name for p in tmp_path.rglob("*") if "lake" not in p.parts)
    assert after == before
    assert not (tmp_path.parent / "escape.dcm").exists()
