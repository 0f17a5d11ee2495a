"""Hostile zips are rows, read in place with bounded memory; nothing is written anywhere.

Member names (traversal, absolute, duplicate, non-ASCII, bytes that are not UTF-8),
zip bombs (a member that declares a huge ratio or size, one whose declared sizes lie,
bzip2 and LZMA members), and zips inside zips. The archives are written byte by byte
where zipfile would refuse to write them (lying sizes, raw name bytes), and the bombs
from one deflated block of zeros repeated, so no test holds what a bomb inflates to.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import struct
import subprocess
import sys
import uuid
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pytest

import dicomlake
from dicomlake.catalog import iter_files, open_ref, zips
from dicomlake.errors import ZipBomb
from dicomlake.sample import sample_file
from helpers.dicom_bytes import PATIENT, explicit, preamble

MiB = 1 << 20
GiB = 1 << 30
#: A generous bound on a whole ingest's peak RSS, whatever the archive holds.
RSS_LIMIT = 1.5 * GiB

CT = sample_file("CT_small.dcm").read_bytes()
MR = sample_file("MR_small.dcm").read_bytes()


@pytest.fixture(autouse=True)
def _fresh_zip_cache() -> None:
    zips.zip_cache.clear()  # archives of the same path are rewritten between tests


# --------------------------------------------------------------------------- writing zips


@dataclass(frozen=True)
class Entry:
    """One member as it lies in the archive: compressed bytes and what it declares."""

    name: bytes
    data: bytes  # as stored: compressed with ``method``
    crc: int
    size: int  # declared inflated size
    method: int = zipfile.ZIP_DEFLATED
    compressed: int | None = None  # declared compressed size; len(data) when None
    flags: int = 0  # 0x800: the name is UTF-8


def write_zip(path: Path, entries: list[Entry]) -> Path:
    """Write a zip by hand (no zip64), so that sizes and name bytes can be anything."""
    body, central = bytearray(), bytearray()
    for e in entries:
        compressed = len(e.data) if e.compressed is None else e.compressed
        fields = (e.flags, e.method, 0, 0x21, e.crc, compressed, e.size, len(e.name))
        offset = len(body)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *fields, 0) + e.name + e.data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, *fields, 0, 0, 0, 0, 0, offset)
        central += e.name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), 0
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(body + central + end))
    return path


def plain(name: str | bytes, data: bytes, *, flags: int = 0) -> Entry:
    """A member stored as it is."""
    raw = name.encode() if isinstance(name, str) else name
    return Entry(raw, data, zlib.crc32(data), len(data), zipfile.ZIP_STORED, flags=flags)


def deflated(name: str, data: bytes) -> Entry:
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return Entry(name.encode(), packer.compress(data) + packer.flush(), zlib.crc32(data), len(data))


def zero_pixels_head(zeros: int) -> bytes:
    """A DICOM header whose pixel data, the last element, are ``zeros`` bytes."""
    image = b"".join(
        explicit(0x0028, elem, b"US", struct.pack("<H", value))
        for elem, value in ((0x0002, 1), (0x0010, 512), (0x0011, 512), (0x0100, 16))
    )
    pixels = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<L", zeros)
    return preamble() + PATIENT + image + pixels


def zero_bomb(name: str, zeros: int, **declared: int) -> Entry:
    """A deflated DICOM file of ``zeros`` bytes of pixel data, inflating about 1000x.

    One MiB of zeros is deflated once; after a full flush the deflater starts afresh,
    so that block repeated is the deflated stream of as many MiB.
    """
    assert zeros % MiB == 0
    head = zero_pixels_head(zeros)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = packer.compress(head) + packer.flush(zlib.Z_FULL_FLUSH)
    block = packer.compress(bytes(MiB)) + packer.flush(zlib.Z_FULL_FLUSH)
    data = start + block * (zeros // MiB) + packer.flush()
    crc = zlib.crc32(head)
    for _ in range(zeros // MiB):
        crc = zlib.crc32(bytes(MiB), crc)
    return Entry(name.encode(), data, crc, len(head) + zeros, **declared)  # type: ignore[arg-type]


def bzip2_bomb(name: str, zeros: int, **declared: int) -> Entry:
    """A bzip2 DICOM file of ``zeros`` bytes of pixel data (bzip2 packs them ~10^6 x)."""
    whole = zero_pixels_head(zeros) + bytes(zeros)
    data = bz2.compress(whole)
    return Entry(name.encode(), data, zlib.crc32(whole), len(whole), zipfile.ZIP_BZIP2, **declared)  # type: ignore[arg-type]


def ingest_rows(src: Path, lake: Path, **options: object) -> dict[str, tuple[str, str | None]]:
    """Ingest ``src`` in this process; ``{relative_path: (status, error)}``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom on the truncated pixel data
        dicomlake.ingest([str(src)], str(lake), workers=0, **options)  # type: ignore[arg-type]
    with dicomlake.connect(str(lake)) as con:
        rows = con.sql("select relative_path, status, error from instances").fetchall()
    return {rel: (status, error) for rel, status, error in rows}


def error_class(error: str | None) -> str:
    return (error or "").split(":", 1)[0]


def snapshot(root: Path, *beside: Path, skip: Path) -> set[str]:
    """Every path under ``root`` (the lake excepted), and the entries of ``beside``."""
    found = {str(p) for p in root.rglob("*") if p != skip and skip not in p.parents}
    for folder in beside:
        found.update(str(p) for p in folder.iterdir())
    return found


# --------------------------------------------------------------------------- names


def test_traversal_absolute_duplicate_and_odd_member_names(tmp_path: Path) -> None:
    archive = tmp_path / "src" / "hostile.zip"
    archive.parent.mkdir()
    token = uuid.uuid4().hex
    absolute = f"/tmp/dicomlake-escape-{token}.dcm"  # where a careless unzip writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(f"../../escape-{token}.dcm", CT)
            zf.writestr(absolute, CT)
            zf.writestr("dup.dcm", CT)
            zf.writestr("dup.dcm", MR)  # the same name twice
            zf.writestr("naïve 日本.dcm", CT)  # UTF-8 flag set by zipfile
    before = snapshot(tmp_path.parent, Path.cwd(), Path.cwd().parent, skip=tmp_path / "lake")
    lake = tmp_path / "lake"
    summary = dicomlake.ingest([str(archive.parent)], str(lake), workers=0)
    con = dicomlake.connect(str(lake))
    rows = con.sql("SELECT path, relative_path, status, Modality FROM instances").fetchall()
    con.close()
    paths = [r[0] for r in rows]
    assert len(paths) == len(set(paths)), "one row per path, even for a duplicated name"
    by_member = {r[1].split("hostile.zip/", 1)[1]: r for r in rows}
    assert set(by_member) == {
        f"../../escape-{token}.dcm",
        absolute,
        "dup.dcm",
        "naïve 日本.dcm",
    }
    assert all(r[2] == "ok" for r in rows)
    assert by_member["dup.dcm"][3] == "MR"  # the last entry of the name, as unzip reads it
    assert summary.done == len(rows)
    # read in place: no file appeared outside the lake, none beside the archive
    assert snapshot(tmp_path.parent, Path.cwd(), Path.cwd().parent, skip=lake) == before
    assert not Path(absolute).exists()
    assert not list(tmp_path.parent.parent.glob(f"escape-{token}.dcm"))


def test_member_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    """Name bytes without the UTF-8 flag are cp437 (zipfile's reading): valid text."""
    raw = b"caf\x82 \xe9\xff/\x81ber.dcm"
    name = raw.decode("cp437")
    archive = write_zip(tmp_path / "src" / "legacy.zip", [plain(raw, CT), plain(b"mr.dcm", MR)])
    # a name flagged UTF-8 that is not: zipfile cannot list the archive at all
    flagged = write_zip(
        tmp_path / "src" / "flagged.zip", [plain(b"bad\xff\xfe.dcm", CT, flags=0x800)]
    )

    rows = ingest_rows(tmp_path / "src", tmp_path / "lake")

    assert rows[f"legacy.zip/{name}"] == ("ok", None)
    assert rows["legacy.zip/mr.dcm"] == ("ok", None)
    assert rows["flagged.zip"][0] == "error"  # one row for the archive, the run goes on
    assert error_class(rows["flagged.zip"][1]) == "UnicodeDecodeError"
    path = f"zip://{name}::file://{archive}"
    with dicomlake.connect(str(tmp_path / "lake")) as con:
        found = con.sql("select Modality from instances where path = ?", params=[path])
        assert found.fetchall() == [("CT",)]
    with open_ref(path) as handle:  # the row's path opens the member it names
        assert handle.read() == CT
    opened = fsspec.open(path, "rb")  # fsspec's own chained form, same bytes
    with opened as handle:
        assert handle.read() == CT
    assert flagged.exists()


def test_member_names_with_a_chain_separator_are_not_followed(tmp_path: Path) -> None:
    """``zip://x::file:///other.zip::file:///this.zip`` would read member x of another
    archive (fsspec splits the chain at the first '::'): such a member is an error row."""
    other = write_zip(tmp_path / "elsewhere" / "other.zip", [plain("x", MR)])
    write_zip(
        tmp_path / "src" / "chain.zip",
        [plain(f"x::file://{other}", CT), plain("a::b.dcm", CT), plain("ok.dcm", CT)],
    )

    rows = ingest_rows(tmp_path / "src", tmp_path / "lake")

    assert rows["chain.zip/ok.dcm"] == ("ok", None)
    for name in (f"x::file://{other}", "a::b.dcm"):
        status, error = rows[f"chain.zip/{name}"]
        assert status == "error"
        assert error_class(error) == "AmbiguousMemberName"
    with dicomlake.connect(str(tmp_path / "lake")) as con:
        read = con.sql("select Modality from instances where Modality is not null").fetchall()
    assert read == [("CT",)]  # the MR of the other archive was never read


# --------------------------------------------------------------------------- bombs


def test_zip_bomb_is_an_error_row_by_its_ratio(tmp_path: Path) -> None:
    """64 MiB of zeros in 65 KB: over 32 MiB, 200x is the most a member may inflate."""
    archive = write_zip(
        tmp_path / "src" / "bomb.zip",
        [zero_bomb("bomb.dcm", 64 * MiB), deflated("ct.dcm", CT), deflated("mr.dcm", MR)],
    )
    assert archive.stat().st_size < 100_000

    rows = ingest_rows(tmp_path / "src", tmp_path / "lake")

    status, error = rows["bomb.zip/bomb.dcm"]
    assert status == "error" and error is not None
    assert error.startswith("ZipBomb: member inflates 1,0") and "limit 200x" in error
    assert "as read" not in error  # refused on what it declares, before any inflating
    assert rows["bomb.zip/ct.dcm"] == ("ok", None)
    assert rows["bomb.zip/mr.dcm"] == ("ok", None)
    with pytest.raises(ZipBomb) as caught, open_ref(f"zip://bomb.dcm::file://{archive}"):
        pass
    assert caught.value.path == f"zip://bomb.dcm::file://{archive}"


def test_zip_bomb_by_size_and_the_limits_can_be_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = write_zip(tmp_path / "src" / "big.zip", [zero_bomb("big.dcm", 40 * MiB)])
    monkeypatch.setattr(zips, "ZIP_MAX_MEMBER_BYTES", 32 * MiB)
    rows = ingest_rows(tmp_path / "src", tmp_path / "lake")
    assert error_class(rows["big.zip/big.dcm"][1]) == "ZipBomb"
    assert "member declares 40 MiB (limit 32 MiB" in (rows["big.zip/big.dcm"][1] or "")

    monkeypatch.setattr(zips, "ZIP_MAX_MEMBER_BYTES", GiB)
    monkeypatch.setattr(zips, "ZIP_MAX_RATIO", 2000)
    zips.zip_cache.clear()
    with open_ref(f"zip://big.dcm::file://{archive}") as handle:
        assert handle.seek(0, os.SEEK_END) == len(zero_pixels_head(40 * MiB)) + 40 * MiB


def test_member_whose_declared_sizes_lie_is_stopped_while_read(tmp_path: Path) -> None:
    """It declares 100x (compressed bytes that are in fact the next member's) and
    inflates 1000x: the stream stops just past 32 MiB, whatever it would go on to."""
    bomb = zero_bomb("liar.dcm", 256 * MiB)
    lie = Entry(bomb.name, bomb.data, bomb.crc, bomb.size, compressed=bomb.size // 100)
    noise = plain("noise.bin", os.urandom(3 * MiB))
    archive = write_zip(tmp_path / "src" / "liar.zip", [lie, noise, deflated("ct.dcm", CT)])

    rows = ingest_rows(tmp_path / "src", tmp_path / "lake")

    status, error = rows["liar.zip/liar.dcm"]
    assert status == "error" and error is not None
    assert error.startswith("ZipBomb: member inflates") and "as read" in error
    assert rows["liar.zip/ct.dcm"] == ("ok", None)
    with open_ref(f"zip://liar.dcm::file://{archive}") as handle:
        with pytest.raises(ZipBomb):
            handle.seek(0, os.SEEK_END)
        assert 32 * MiB < handle.tell() <= 34 * MiB  # one step past the limit at most


def test_member_that_declares_less_than_it_holds_stops_at_its_declared_size(
    tmp_path: Path,
) -> None:
    """zipfile stops at the declared size (and its CRC check fails); bzip2 members are
    read through bz2, which would go on: the guard stops them there too."""
    bomb = zero_bomb("short.dcm", 8 * MiB)
    short = Entry(bomb.name, bomb.data, bomb.crc, 4096)
    bomb2 = bzip2_bomb("short-bz2.dcm", 8 * MiB)
    short2 = Entry(bomb2.name, bomb2.data, bomb2.crc, 4096, bomb2.method)
    write_zip(tmp_path / "src" / "short.zip", [short, short2, deflated("ct.dcm", CT)])

    rows = ingest_rows(tmp_path / "src", tmp_path / "lake")

    assert rows["short.zip/short.dcm"][0] == "error"
    assert error_class(rows["short.zip/short.dcm"][1]) == "BadZipFile"  # Bad CRC-32
    assert rows["short.zip/short-bz2.dcm"][0] == "error"
    assert "inflates past its declared size" in (rows["short.zip/short-bz2.dcm"][1] or "")
    assert rows["short.zip/ct.dcm"] == ("ok", None)


def test_bzip2_and_lzma_members_are_read_or_refused(tmp_path: Path) -> None:
    """zipfile inflates each read of these whole: bzip2 is read through bz2 instead."""
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "methods.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("ct-bz2.dcm"), CT, compress_type=zipfile.ZIP_BZIP2)
        zf.writestr(zipfile.ZipInfo("ct-lzma.dcm"), CT, compress_type=zipfile.ZIP_LZMA)
        zf.writestr(
            zipfile.ZipInfo("bomb-lzma.dcm"),
            zero_pixels_head(40 * MiB) + bytes(40 * MiB),
            compress_type=zipfile.ZIP_LZMA,
        )
    bomb = bzip2_bomb("bomb.dcm", 40 * MiB)
    noise = plain("noise.bin", os.urandom(MiB))
    liar = Entry(bomb.name, bomb.data, bomb.crc, bomb.size, bomb.method, compressed=MiB // 2)
    write_zip(src / "bzip2.zip", [liar, noise])

    rows = ingest_rows(src, tmp_path / "lake")

    assert rows["methods.zip/ct-bz2.dcm"] == ("ok", None)
    assert rows["methods.zip/ct-lzma.dcm"] == ("ok", None)
    assert error_class(rows["methods.zip/bomb-lzma.dcm"][1]) == "ZipBomb"
    assert error_class(rows["bzip2.zip/bomb.dcm"][1]) == "ZipBomb"
    assert "as read" in (rows["bzip2.zip/bomb.dcm"][1] or "")


def test_guarded_member_reads_and_seeks_like_the_member(tmp_path: Path) -> None:
    data = bytes(range(256)) * 12_000  # 3 MB: a few steps of the guard
    src = tmp_path / "src"
    src.mkdir()
    with zipfile.ZipFile(src / "m.zip", "w") as zf:
        for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2):
            zf.writestr(zipfile.ZipInfo(f"{method}.bin"), data, compress_type=method)
        zf.writestr(zipfile.ZipInfo("lzma.bin"), data[: 2 * MiB], compress_type=zipfile.ZIP_LZMA)
    for ref in iter_files([str(src / "m.zip")]):
        expected = data[: 2 * MiB] if ref.relative_path == "lzma.bin" else data
        with open_ref(ref) as handle:
            assert handle.read(10) == expected[:10]
            assert handle.seek(-5, os.SEEK_END) == len(expected) - 5
            assert handle.read() == expected[-5:]
            assert handle.seek(1_500_000) == 1_500_000  # back: a rewind
            assert handle.read(3 * MiB // 2) == expected[1_500_000 : 1_500_000 + 3 * MiB // 2]
            handle.seek(0)
            assert handle.read() == expected
            handle.seek(3)
            buffer = bytearray(7)
            assert handle.readinto(buffer) == 7  # type: ignore[attr-defined]
            assert buffer == expected[3:10]


# --------------------------------------------------------------------------- zips in zips


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_zips_inside_zips_are_rows_never_opened(tmp_path: Path) -> None:
    level2 = _zip_bytes({"ct3.dcm": CT})
    src = tmp_path / "src"
    src.mkdir()
    (src / "outer.zip").write_bytes(
        _zip_bytes(
            {
                "ct.dcm": CT,
                "inner.zip": _zip_bytes({"ct2.dcm": CT}),
                "deeper.zip": _zip_bytes({"level2.zip": level2}),  # a zip of zips of zips
                "empty.zip": _zip_bytes({}),
                "renamed.dat": level2,
            }
        )
    )
    (src / "plain.dat").write_bytes(level2)  # a zip not named .zip is a file, not a source

    rows = ingest_rows(src, tmp_path / "lake")

    assert set(rows) == {
        "outer.zip/ct.dcm",
        "outer.zip/inner.zip",
        "outer.zip/deeper.zip",
        "outer.zip/empty.zip",
        "outer.zip/renamed.dat",
        "plain.dat",
    }
    assert rows["outer.zip/ct.dcm"] == ("ok", None)
    for name in ("inner.zip", "deeper.zip", "empty.zip", "renamed.dat"):  # by content
        status, error = rows[f"outer.zip/{name}"]
        assert status == "error"
        assert error == (
            "NestedArchive: a zip inside a zip is not opened; unzip the outer archive first"
        )
    status, error = rows["plain.dat"]
    assert status == "not_dicom"
    assert (
        error == "NotDicom: a zip archive, but its name does not end in .zip: rename it to read it"
    )


# --------------------------------------------------------------------------- memory

_CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
import dicomlake
start = time.perf_counter()
dicomlake.ingest([sys.argv[1]], sys.argv[2], workers=0)
took = time.perf_counter() - start
with dicomlake.connect(sys.argv[2]) as con:
    rows = con.sql("select relative_path, status, error from instances").fetchall()
# VmHWM: this process's own peak. ru_maxrss also counts the parent's RSS at the fork,
# which Linux carries over the exec.
status = open("/proc/self/status").read() if sys.platform == "linux" else ""
hwm = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
peak = int(hwm[0]) * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"rows": rows, "peak": peak, "seconds": took}))
"""


def test_bombs_keep_an_ingest_bounded(tmp_path: Path) -> None:
    """1 GiB of zeros in 1 MB, honest or lying about it, and a bzip2 member that declares
    4 KB and holds 64 MiB (zipfile alone would inflate it whole on its first read)."""
    src = tmp_path / "src"
    write_zip(src / "honest.zip", [zero_bomb("bomb.dcm", GiB), deflated("ct.dcm", CT)])
    lie = zero_bomb("liar.dcm", GiB)
    write_zip(
        src / "liar.zip",
        [
            Entry(lie.name, lie.data, lie.crc, lie.size, compressed=lie.size // 150),
            plain("noise.bin", os.urandom(8 * MiB)),
        ],
    )
    bomb = bzip2_bomb("bz2.dcm", 64 * MiB)
    write_zip(src / "bz2.zip", [Entry(bomb.name, bomb.data, bomb.crc, 4096, bomb.method)])
    assert sum(p.stat().st_size for p in src.iterdir()) < 12 * MiB

    run = subprocess.run(
        [sys.executable, "-c", _CHILD, str(src), str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result = json.loads(run.stdout.splitlines()[-1])
    rows = {rel: (status, error) for rel, status, error in result["rows"]}
    print(f"bombs: {result['seconds']:.1f} s, peak RSS {result['peak'] / MiB:.0f} MiB")
    assert error_class(rows["honest.zip/bomb.dcm"][1]) == "ZipBomb"
    assert error_class(rows["liar.zip/liar.dcm"][1]) == "ZipBomb"
    assert error_class(rows["bz2.zip/bz2.dcm"][1]) == "ZipBomb"
    assert rows["honest.zip/ct.dcm"] == ("ok", None)
    assert result["peak"] < RSS_LIMIT
