"""Names that are not valid UTF-8 (Latin-1 archives) re-open from the lake, byte for byte.

Such a path is recorded as ``file://localhost/...`` with ``%`` and the undecodable
bytes percent-escaped; every other path stays ``file:///...``, literal. Real files,
real zips, real lakes: nothing is mocked.
"""

from __future__ import annotations

import io
import os
import shutil
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

import dicomlake
from dicomlake.catalog import FileRef, iter_files, local_file, open_ref, zips
from dicomlake.cli import app
from dicomlake.dicom import native
from dicomlake.dicom.frames import load_frame
from dicomlake.lake.location import INSTANCES_TABLE, table_uri
from dicomlake.sample import sample_file
from dicomlake.storage.locations import display_name, file_uri, local_path

CT = sample_file("CT_small.dcm").read_bytes()
MR = sample_file("MR_small.dcm").read_bytes()

BAD_DIR = b"dir\xff\xfe"  # Latin-1 bytes: not valid UTF-8
LEGACY_MEMBER = b"caf\x82 \xe9.dcm"  # a cp437 name, stored without the UTF-8 flag


@pytest.fixture(autouse=True)
def _fresh_zip_cache() -> None:
    zips.zip_cache.clear()


@dataclass(frozen=True)
class Expected:
    """One row the lake must hold: its path, relative path and the bytes it opens to."""

    path: str
    relative_path: str
    data: bytes
    escaped: bool  # recorded as file://localhost/... (the archive's URI, for a member)


def _raw(path: Path) -> bytes:
    return os.fsencode(path)


def _write(raw_path: bytes, data: bytes) -> None:
    os.makedirs(os.path.dirname(raw_path), exist_ok=True)
    with open(raw_path, "wb") as handle:
        handle.write(data)


def _zip_with_raw_names(members: dict[bytes, bytes]) -> bytes:
    """A real zip whose member names are these raw bytes, with no UTF-8 flag.

    zipfile writes a non-ASCII name as UTF-8 (flag 0x800): each is written under an
    ASCII stand-in of the same length, then the name bytes are swapped in (the local
    header and the central directory both hold the name; CRCs cover the data only).
    """
    buffer = io.BytesIO()
    stand_ins: dict[bytes, bytes] = {}
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i, (name, data) in enumerate(members.items()):
            stand_in = name
            if not name.isascii():
                stand_in = (b"~%d~" % i).ljust(len(name), b"_")
                stand_ins[stand_in] = name
            archive.writestr(stand_in.decode("ascii"), data)
    raw = buffer.getvalue()
    for stand_in, name in stand_ins.items():
        assert raw.count(stand_in) == 2
        raw = raw.replace(stand_in, name)
    return raw


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, Expected]]:
    """``src/`` with undecodable folder, file, archive and member names; UTF-8 neighbours.

    src/plain 100%.dcm                      UTF-8: file:///..., literal
    src/legacy.zip  (member caf\\x82 \\xe9)   UTF-8 archive, cp437 member name
    src/dir\\xff\\xfe/bad\\xe9name.dcm          escaped
    src/dir\\xff\\xfe/ok 50%.dcm                escaped (its folder), % as %25
    src/dir\\xff\\xfe/arch\\xe9.zip             escaped archive; members ct.dcm and a
                                            cp437 name
    """
    src = tmp_path / "src"
    src.mkdir()
    raw_src = _raw(src)
    bad = os.path.join(raw_src, BAD_DIR)
    try:
        os.makedirs(bad)
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    legacy_zip = _zip_with_raw_names({LEGACY_MEMBER: MR, b"mr.dcm": MR})
    bad_zip = _zip_with_raw_names({b"ct.dcm": CT, LEGACY_MEMBER: CT})
    _write(os.path.join(raw_src, b"plain 100%.dcm"), CT)
    _write(os.path.join(raw_src, b"legacy.zip"), legacy_zip)
    _write(os.path.join(bad, b"bad\xe9name.dcm"), CT)
    _write(os.path.join(bad, b"ok 50%.dcm"), MR)
    _write(os.path.join(bad, b"arch\xe9.zip"), bad_zip)

    plain = f"file://{src}"  # written literally
    escaped = "file://localhost" + str(src).replace("%", "%25")  # the RFC 8089 form
    member = LEGACY_MEMBER.decode("cp437")  # as zipfile reads it: 'caf\xe9 \u0398.dcm'
    rows = [
        Expected(f"{plain}/plain 100%.dcm", "plain 100%.dcm", CT, False),
        Expected(f"zip://{member}::{plain}/legacy.zip", f"legacy.zip/{member}", MR, False),
        Expected(f"zip://mr.dcm::{plain}/legacy.zip", "legacy.zip/mr.dcm", MR, False),
        Expected(f"{escaped}/dir%FF%FE/bad%E9name.dcm", "dir%FF%FE/bad%E9name.dcm", CT, True),
        Expected(f"{escaped}/dir%FF%FE/ok 50%25.dcm", "dir%FF%FE/ok 50%25.dcm", MR, True),
        Expected(
            f"zip://ct.dcm::{escaped}/dir%FF%FE/arch%E9.zip",
            "dir%FF%FE/arch%E9.zip/ct.dcm",
            CT,
            True,
        ),
        Expected(
            f"zip://{member}::{escaped}/dir%FF%FE/arch%E9.zip",
            f"dir%FF%FE/arch%E9.zip/{member}",
            CT,
            True,
        ),
    ]
    return src, {row.path: row for row in rows}


def _rows(lake: Path, table: str = "instances") -> dict[str, dict[str, object]]:
    with dicomlake.connect(str(lake)) as con:
        found = con.sql(f"select * from {table}").to_arrow_table().to_pylist()
    return {str(row["path"]): row for row in found}


def _version(lake: Path) -> int:
    return DeltaTable(table_uri(str(lake), INSTANCES_TABLE)).version()


def _read(path: str) -> bytes:
    with open_ref(path) as handle:
        return handle.read()


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    "raw",
    [
        b"/data/bad\xe9name.dcm",
        b"/data/dir\xff\xfe/x.dcm",
        b"/data/100%/%FF\xff.dcm",  # a literal '%FF' must not read back as byte 0xFF
        b"/data/\xed\xa0\x80 surrogate.dcm",  # UTF-8 of a surrogate: not valid UTF-8
        b"/data/cut \xc3.dcm",  # a truncated sequence
        b"/data/caf\xc3\xa9 \xe9.dcm",  # valid and invalid side by side
        b"/data/a b#?;&=+ [1] \xff.dcm",
    ],
)
def test_undecodable_paths_round_trip_and_read_as_text(raw: bytes) -> None:
    path = os.fsdecode(raw)
    uri = file_uri(path)
    assert uri.startswith("file://localhost/")
    uri.encode("utf-8")  # valid text
    assert os.fsencode(local_path(uri) or "") == raw
    tail = uri.removeprefix("file://localhost")
    assert urllib.parse.unquote_to_bytes(tail) == raw
    undecodable = len(raw) - len(raw.decode("utf-8", "ignore").encode())
    assert tail.count("%") == raw.count(b"%") + undecodable  # only those are escaped
    assert display_name(path) == tail


@pytest.mark.parametrize(
    "text", ["/data/plain.dcm", "/data/100% sure/%FF.dcm", "/data/café [1]/日本.dcm"]
)
def test_valid_utf8_paths_stay_literal(text: str) -> None:
    assert file_uri(text) == "file://" + text
    assert local_path(file_uri(text)) == text
    assert display_name(text) == text


# --------------------------------------------------------------------------- listing


def test_listing_gives_text_paths_that_reopen(tree: tuple[Path, dict[str, Expected]]) -> None:
    src, expected = tree
    refs = {ref.path: ref for ref in iter_files([str(src)])}
    assert set(refs) == set(expected)
    for path, ref in refs.items():
        assert ref.relative_path == expected[path].relative_path
        assert ref.listing_error is None
        assert _read(path) == expected[path].data
        local = local_file(ref)
        if not path.startswith("zip://"):
            assert local is not None
            with open(local, "rb") as handle:  # the real path, undecodable bytes and all
                assert handle.read() == expected[path].data


def test_a_member_whose_raw_name_is_not_utf8_is_read_by_zipfiles_name(
    tree: tuple[Path, dict[str, Expected]],
) -> None:
    src, _ = tree
    with zipfile.ZipFile(src / "legacy.zip") as archive:
        (info,) = [i for i in archive.infolist() if i.filename != "mr.dcm"]
        assert info.flag_bits & 0x800 == 0  # no UTF-8 flag: the bytes are cp437
        assert info.orig_filename.encode("cp437") == LEGACY_MEMBER
        assert archive.testzip() is None  # a sound archive


# --------------------------------------------------------------------------- ingest


@pytest.mark.parametrize("workers", [0, 2])
def test_ingest_records_paths_that_reopen_byte_for_byte(
    tree: tuple[Path, dict[str, Expected]], tmp_path: Path, workers: int
) -> None:
    src, expected = tree
    lake = tmp_path / "lake"

    summary = dicomlake.ingest([str(src)], str(lake), workers=workers)

    assert (summary.ok, summary.error_count) == (len(expected), 0)
    rows = _rows(lake)
    assert set(rows) == set(expected)
    for path, row in rows.items():
        want = expected[path]
        assert row["status"] == "ok", row["error"]
        assert row["relative_path"] == want.relative_path
        path.encode("utf-8")
        archive = path.rsplit("::", 1)[-1]
        assert archive.startswith("file://localhost/") == want.escaped
        assert _read(path) == want.data  # a later process, from the lake alone
        if not path.startswith("zip://"):
            ref = FileRef(path, str(row["relative_path"]), None, None)
            assert os.path.isfile(local_file(ref) or "")
    # SQL finds them by their recorded text, and by the escape
    with dicomlake.connect(str(lake)) as con:
        escaped = con.sql(
            "select path, Modality from instances where path like '%file://localhost/%' "
            "order by path"
        ).fetchall()
        assert {p for p, _ in escaped} == {p for p, e in expected.items() if e.escaped}
        bad = next(p for p in expected if p.endswith("/bad%E9name.dcm"))
        found = con.sql("select Modality from instances where path = ?", params=[bad])
        assert found.fetchall() == [("CT",)]
    # datasets read frames through the same path
    assert load_frame(bad).values.size > 0


def test_rerun_skips_them_and_sync_removes_exactly_the_deleted_row(
    tree: tuple[Path, dict[str, Expected]], tmp_path: Path
) -> None:
    src, expected = tree
    lake = tmp_path / "lake"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), elsewhere / "other.dcm")
    dicomlake.ingest([str(elsewhere)], str(lake), workers=0)
    dicomlake.ingest([str(src)], str(lake), workers=0)
    before = {path: row["row_id"] for path, row in _rows(lake).items()}
    version = _version(lake)

    again = dicomlake.ingest([str(src)], str(lake), workers=0)

    assert (again.skipped_unchanged, again.new, again.changed) == (len(expected), 0, 0)
    assert _version(lake) == version  # nothing committed
    assert {path: row["row_id"] for path, row in _rows(lake).items()} == before

    # a file gone below a plain UTF-8 source folder: its escaped row goes, no other
    bad = next(p for p in expected if p.endswith("/bad%E9name.dcm"))
    os.remove(local_path(bad) or "")
    synced = dicomlake.ingest([str(src)], str(lake), workers=0, sync=True)
    assert synced.deleted == 1
    assert set(_rows(lake)) == set(before) - {bad}

    # the undecodable folder itself as the source: its prefix is escaped too
    bad_dir = os.fsdecode(os.path.join(os.fsencode(src), BAD_DIR))
    gone = next(p for p in expected if p.endswith("/ok 50%25.dcm"))
    os.remove(local_path(gone) or "")
    synced = dicomlake.ingest([bad_dir], str(lake), workers=0, sync=True)
    assert (synced.deleted, synced.skipped_unchanged) == (1, 2)  # the archive's members
    left = set(_rows(lake))
    assert left == set(before) - {bad, gone}
    assert f"file://{elsewhere}/other.dcm" in left  # another source's row is kept


def test_thumbnails_command_draws_them(
    tree: tuple[Path, dict[str, Expected]], tmp_path: Path
) -> None:
    src, expected = tree
    lake = tmp_path / "lake"
    dicomlake.ingest([str(src)], str(lake), workers=0)  # no thumbnails yet

    result = CliRunner().invoke(app, ["thumbnails", "--lake", str(lake), "--workers", "0"])

    assert result.exit_code == 0, result.output
    assert "0 not drawn" in result.output
    drawn = _rows(lake, "thumbnails")
    for path, want in expected.items():
        assert drawn[path]["status"] == "ok", (path, drawn[path]["error"])
        assert drawn[path]["data"]
        assert want.escaped == path.rsplit("::", 1)[-1].startswith("file://localhost/")


@pytest.mark.skipif(not native.available(), reason="native parser not built")
def test_the_native_parser_reads_them(
    tree: tuple[Path, dict[str, Expected]], tmp_path: Path
) -> None:
    src, expected = tree
    lake = tmp_path / "lake"

    dicomlake.ingest([str(src)], str(lake), workers=0, parser="native")

    rows = _rows(lake)
    plain_files = [p for p in expected if not p.startswith("zip://")]
    for path in plain_files:
        assert (rows[path]["status"], rows[path]["parser"]) == ("ok", "native"), path
    bad = next(p for p in expected if p.endswith("/bad%E9name.dcm"))
    meta = str(rows[bad]["meta"])
    assert f'"BulkDataURI": "{bad}?offset=' in meta or f'"BulkDataURI":"{bad}?offset=' in meta


def test_the_gallery_downloads_them(tree: tuple[Path, dict[str, Expected]], tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from dicomlake.viewer import create_app

    src, expected = tree
    lake = tmp_path / "lake"
    dicomlake.ingest([str(src)], str(lake), workers=0)

    with TestClient(create_app(str(lake), check_every=0)) as client:
        for path, want in expected.items():
            if want.escaped:
                response = client.get("/api/download", params={"path": path})
                assert response.status_code == 200, (path, response.text)
                assert response.content == want.data
