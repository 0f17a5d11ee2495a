"""DICOM built to hurt gives one row each, quickly, with bounded memory, on every path.

Length fields of 0xFFFFFFFE, a 2 GB element declared in a 1 KB file, sequences nested
10,000 deep, headers of 2,000,000 tiny elements or items, deflated data sets that
inflate past their limit: each file is one row, through a real ``dicomlake.ingest``,
read by the native parser (the default for local files), by pydicom, and as a zip
member (always pydicom); every well-formed file beside them in the same run is ok.

What each gives (the error class, before the first ':'):

- TruncatedFile: a value or an item declared longer than the file (0xFFFFFFFE, 0xFFFE,
  2 GB);
- ok, with a "pixel data truncated" warning: pixel data declared longer than the file
  (the rest of the header is sound; the warning says what is missing);
- HeaderTooLarge: nesting past MAX_SEQUENCE_DEPTH, more elements and items than
  MAX_HEADER_ELEMENTS, JSON past MAX_META_CHARS, a deflated data set past
  MAX_DEFLATED_BYTES (all in dicomlake.dicom.header).
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

import dicomlake
from dicomlake.dicom import header, native
from dicomlake.dicom.header import read_header
from dicomlake.errors import HeaderTooLarge
from dicomlake.sample import sample_file
from helpers.dicom_bytes import (
    ITEM_END,
    ITEM_UNDEFINED,
    PATIENT,
    SQ_END,
    deep_defined,
    deep_implicit,
    deep_undefined,
    explicit,
    huge_declared,
    preamble,
    tiny_elements,
)

MiB = 1 << 20
GiB = 1 << 30
#: A generous bound on a whole ingest's peak RSS, whatever the files hold.
RSS_LIMIT = 1.5 * GiB
BIG = 2_000_000
GOOD = {name: sample_file(name).read_bytes() for name in ("CT_small.dcm", "MR_small.dcm")}
DEFLATED = "1.2.840.10008.1.2.1.99"


# --------------------------------------------------------------------------- files


def _sq(tag: int, length: int = 0xFFFFFFFF) -> bytes:
    return struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"SQ\0\0" + struct.pack("<L", length)


def declared(vr: bytes, length: int, tag: int = 0x00091001) -> bytes:
    """A 1 KB file whose one element (after a private creator) declares ``length``."""
    creator = explicit(0x0009, 0x0010, b"LO", b"HOSTILE") if tag >> 16 == 0x0009 else b""
    head = preamble() + PATIENT + creator
    element = explicit(tag >> 16, tag & 0xFFFF, vr, b"", length=length)
    return (head + element).ljust(1024, b"\xab")


def implicit_declared(length: int) -> bytes:
    """Implicit VR: an element whose 32-bit length says ``length``."""
    head = preamble("1.2.840.10008.1.2") + struct.pack("<HHL", 0x0010, 0x0010, 4) + b"A^B "
    return (head + struct.pack("<HHL", 0x0010, 0x0020, length)).ljust(1024, b"\0")


def item_declared(length: int) -> bytes:
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", length)
    return (preamble() + PATIENT + _sq(0x00400275) + item).ljust(1024, b"\0")


def nested(depth: int) -> bytes:
    """Sequences nested ``depth`` deep (undefined lengths), in tag order for both parsers."""
    leaf = explicit(0x0040, 0x0009, b"SH", b"LEAF")
    opening = (_sq(0x00400275) + ITEM_UNDEFINED) * depth
    closing = (ITEM_END + SQ_END) * depth
    return preamble() + PATIENT + opening + leaf + closing


def items(count: int, *, empty: bool) -> bytes:
    """One sequence of ``count`` items, empty or holding one short element each."""
    body = b"" if empty else explicit(0x0040, 0x0009, b"SH", b"ab")
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(body)) + body
    return preamble() + PATIENT + _sq(0x00400275) + item * count + SQ_END


def deflated(data_set: bytes | Callable[[zlib._Compress], bytes], level: int = 9) -> bytes:
    """A Deflated Explicit VR Little Endian file of ``data_set`` (or what writes it)."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = data_set(packer) if callable(data_set) else packer.compress(data_set)
    return preamble(DEFLATED) + body + packer.flush()


def inflating_zeros(size: int) -> Callable[[zlib._Compress], bytes]:
    """A data set of one element, then ``size`` zeros: 1 MiB deflated once, repeated."""

    def write(packer: zlib._Compress) -> bytes:
        start = packer.compress(PATIENT) + packer.flush(zlib.Z_FULL_FLUSH)
        block = packer.compress(bytes(MiB)) + packer.flush(zlib.Z_FULL_FLUSH)
        return start + block * (size // MiB)

    return write


def small_hostile() -> dict[str, bytes]:
    """The hostile files that are small; name -> bytes."""
    return {
        "len-FFFFFFFE-OB": declared(b"OB", 0xFFFFFFFE),
        "len-FFFFFFFE-UT": declared(b"UT", 0xFFFFFFFE),
        "len-FFFFFFFE-UN": declared(b"UN", 0xFFFFFFFE),
        "len-FFFFFFFE-SQ": declared(b"SQ", 0xFFFFFFFE, 0x00400275),
        "len-FFFFFFFE-implicit": implicit_declared(0xFFFFFFFE),
        "len-FFFFFFFE-item": item_declared(0xFFFFFFFE),
        "len-FFFFFFFE-pixels": declared(b"OW", 0xFFFFFFFE, 0x7FE00010),
        "len-FFFE-LO": declared(b"LO", 0xFFFE),
        "huge-2GB-OB": huge_declared(b"OB"),
        "huge-2GB-UT": huge_declared(b"UT"),
        "huge-2GB-SQ": huge_declared(b"SQ", 0x0008, 0x1115),
        "deep-10000": deep_undefined(10_000, closed=True),
        "deep-10000-unclosed": deep_undefined(10_000, closed=False),
        "deep-10000-defined": deep_defined(10_000),
        "deep-10000-implicit": deep_implicit(10_000),
        "deep-65": nested(65),
        "deflated-300MiB": deflated(inflating_zeros(300 * MiB)),
    }


#: What each file gives: (status, error class or warning text).
EXPECTED = {
    "len-FFFFFFFE-OB": ("error", "TruncatedFile"),
    "len-FFFFFFFE-UT": ("error", "TruncatedFile"),
    "len-FFFFFFFE-UN": ("error", "TruncatedFile"),
    "len-FFFFFFFE-SQ": ("error", "TruncatedFile"),
    "len-FFFFFFFE-implicit": ("error", "TruncatedFile"),
    "len-FFFFFFFE-item": ("error", "TruncatedFile"),
    "len-FFFFFFFE-pixels": ("ok", "pixel data truncated"),
    "len-FFFE-LO": ("error", "TruncatedFile"),
    "huge-2GB-OB": ("error", "TruncatedFile"),
    "huge-2GB-UT": ("error", "TruncatedFile"),
    "huge-2GB-SQ": ("error", "TruncatedFile"),
    "deep-10000": ("error", "HeaderTooLarge"),
    "deep-10000-unclosed": ("error", "HeaderTooLarge"),
    "deep-10000-defined": ("error", "HeaderTooLarge"),
    "deep-10000-implicit": ("error", "HeaderTooLarge"),
    "deep-65": ("error", "HeaderTooLarge"),
    "deflated-300MiB": ("error", "HeaderTooLarge"),
    "tiny-2M": ("error", "HeaderTooLarge"),
    "items-2M": ("error", "HeaderTooLarge"),
    "deflated-tiny-2M": ("error", "HeaderTooLarge"),
}


@pytest.fixture(scope="session")
def big_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files of 2,000,000 elements or items, written once per session."""
    folder = tmp_path_factory.mktemp("big-hostile")
    tiny = tiny_elements(BIG)
    written = {
        "tiny-2M": tiny,
        "items-2M": items(BIG, empty=True),
        "deflated-tiny-2M": deflated(tiny[len(preamble()) :], level=1),
    }
    for name, data in written.items():
        (folder / f"{name}.dcm").write_bytes(data)
    return {name: folder / f"{name}.dcm" for name in written}


def hostile_folder(root: Path, big_files: dict[str, Path], *, zipped: bool) -> Path:
    """A folder of every hostile file and the good ones, or one zip of them all."""
    files = {f"{name}.dcm": data for name, data in small_hostile().items()}
    files.update({name: data for name, data in GOOD.items()})
    src = root / "src"
    src.mkdir()
    if zipped:
        with zipfile.ZipFile(src / "hostile.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
            for name, path in big_files.items():
                zf.write(path, f"{name}.dcm")
    else:
        for name, data in files.items():
            (src / name).write_bytes(data)
        for name, path in big_files.items():
            shutil.copyfile(path, src / f"{name}.dcm")
    return src


def ingest_rows(src: Path, lake: Path, **options: object) -> dict[str, tuple[str, str | None]]:
    """Ingest ``src`` in this process; ``{file name: (status, error or warnings)}``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicomlake.ingest([str(src)], str(lake), workers=0, **options)  # type: ignore[arg-type]
    with dicomlake.connect(str(lake)) as con:
        rows = con.sql("select relative_path, status, error, warnings from instances").fetchall()
    names = [Path(rel).name for rel, *_ in rows]
    assert len(names) == len(set(names)), "one row per file"
    return {
        Path(rel).name: (status, error if status != "ok" else " ".join(warned or []))
        for rel, status, error, warned in rows
    }


def check_rows(rows: dict[str, tuple[str, str | None]]) -> None:
    assert set(rows) == {f"{name}.dcm" for name in EXPECTED} | set(GOOD)
    for name in GOOD:
        assert rows[name] == ("ok", ""), name
    for name, (status, expected) in EXPECTED.items():
        got_status, text = rows[f"{name}.dcm"]
        assert got_status == status, (name, text)
        if status == "error":
            assert (text or "").split(":", 1)[0] == expected, (name, text)
        else:
            assert expected in (text or ""), (name, text)


# --------------------------------------------------------------------------- one row each


@pytest.mark.parametrize("path", ["native", "pydicom", "zip"])
def test_each_hostile_file_gives_one_row(
    path: str, tmp_path: Path, big_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MAX_HEADER_ELEMENTS at 50,000 so that pydicom's refusals stay quick here
    (test_worst_case_memory runs the default)."""
    if path == "native" and not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    monkeypatch.setattr(header, "MAX_HEADER_ELEMENTS", 50_000)
    src = hostile_folder(tmp_path, big_files, zipped=path == "zip")
    rows = ingest_rows(src, tmp_path / "lake", parser="pydicom" if path == "pydicom" else "auto")
    check_rows(rows)


def test_deep_nesting_never_kills_a_worker(tmp_path: Path) -> None:
    """In a worker process, as ingest runs by default: error rows, no crash, no timeout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("deep-10000", "deep-10000-defined", "deep-10000-implicit"):
        (src / f"{name}.dcm").write_bytes(small_hostile()[name])
    (src / "ct.dcm").write_bytes(GOOD["CT_small.dcm"])
    # the native parser declines them (too_deep): pydicom reads them, in the worker
    summary = dicomlake.ingest([str(src)], str(tmp_path / "lake"), workers=1, file_timeout=60)
    assert summary.ok == 1 and summary.timeouts == 0
    assert summary.errors == {"HeaderTooLarge": 3}, summary.errors


# --------------------------------------------------------------------------- limits


def _both(data: bytes) -> tuple[str, str]:
    """What the native parser and read_header make of ``data``: 'ok', a decline, or
    the class of the error."""
    outcomes = []
    for parse in (_native_outcome, _pydicom_outcome):
        try:
            outcomes.append(parse(data))
        except HeaderTooLarge:
            outcomes.append("HeaderTooLarge")
    return outcomes[0], outcomes[1]


def _native_outcome(data: bytes) -> str:
    result = native.parse_file(data, uri="file:///x")
    return result if isinstance(result, str) else "ok"


def _pydicom_outcome(data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_header(io.BytesIO(data), uri="file:///x")
    return "ok"


def test_both_parsers_count_elements_and_items_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    if not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    meta_elements = 7  # the file meta group of preamble, and (0010,0010)
    base = meta_elements + 1  # ... and the sequence
    for count, empty in ((300, True), (150, False)):
        data = items(count, empty=empty)
        size = base + count * (1 if empty else 2)
        monkeypatch.setattr(header, "MAX_HEADER_ELEMENTS", size)
        assert _both(data) == ("ok", "ok")
        monkeypatch.setattr(header, "MAX_HEADER_ELEMENTS", size - 1)
        assert _both(data) == ("HeaderTooLarge", "HeaderTooLarge")
    flat = tiny_elements(1000)  # 1000 elements and their 4 private creators
    monkeypatch.setattr(header, "MAX_HEADER_ELEMENTS", meta_elements + 1004)
    assert _both(flat) == ("ok", "ok")
    monkeypatch.setattr(header, "MAX_HEADER_ELEMENTS", meta_elements + 1003)
    assert _both(flat) == ("HeaderTooLarge", "HeaderTooLarge")


def test_both_parsers_refuse_the_same_json_length(monkeypatch: pytest.MonkeyPatch) -> None:
    if not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    data = GOOD["CT_small.dcm"]
    result = native.parse_file(data, uri="file:///x")
    assert not isinstance(result, str) and result.meta_json is not None
    length = len(result.meta_json)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        python = read_header(io.BytesIO(data), uri="file:///x")
    assert python.meta_json is not None and len(python.meta_json) == length
    monkeypatch.setattr(header, "MAX_META_CHARS", length)
    assert _both(data) == ("ok", "ok")
    monkeypatch.setattr(header, "MAX_META_CHARS", length - 1)
    assert _both(data) == ("HeaderTooLarge", "HeaderTooLarge")


def test_nesting_limit() -> None:
    """64 levels are read (by both parsers), 65 refused: native declines, pydicom refuses."""
    deepest = nested(header.MAX_SEQUENCE_DEPTH)
    outcome = _both(deepest) if native.available() else ("ok", _pydicom_outcome(deepest))
    assert outcome == ("ok", "ok")
    too_deep = nested(header.MAX_SEQUENCE_DEPTH + 1)
    if native.available():
        assert _native_outcome(too_deep) == "too_deep"
    with pytest.raises(HeaderTooLarge, match="nested more than 64 deep"):
        _pydicom_outcome(too_deep)


def test_deflated_data_set_past_its_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    data = deflated(PATIENT + explicit(0x0010, 0x0020, b"LO", b"ID") + bytes(8))
    assert _pydicom_outcome(data) == "ok"
    monkeypatch.setattr(header, "MAX_DEFLATED_BYTES", 20)
    with pytest.raises(HeaderTooLarge, match="deflated data set inflates past"):
        _pydicom_outcome(data)


def test_a_value_declared_past_the_budget_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred value is charged before it is read: a 5 MB text is refused unread."""
    text = explicit(0x0010, 0x4000, b"LT", b"x" * 60_000)
    data = preamble() + PATIENT + text
    monkeypatch.setattr(header, "MAX_META_CHARS", 20_000)  # values: twice this
    with pytest.raises(HeaderTooLarge, match="values pass"):
        _pydicom_outcome(data)


# --------------------------------------------------------------------------- memory

_CHILD = """
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
from dicomlake.catalog import iter_files
from dicomlake.kernels.instances import extract_row
timings = {}
for ref in iter_files([sys.argv[1]]):
    start = time.perf_counter()
    row = extract_row(ref, parser=sys.argv[2])
    timings[ref.relative_path] = [time.perf_counter() - start, row["status"], row["error"]]
# VmHWM: this process's own peak. ru_maxrss also counts the parent's RSS at the fork,
# which Linux carries over the exec.
status = open("/proc/self/status").read() if sys.platform == "linux" else ""
hwm = [line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")]
peak = int(hwm[0]) * 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"timings": timings, "peak": peak}))
"""


@pytest.mark.slow
def test_worst_case_memory(tmp_path: Path, big_files: dict[str, Path]) -> None:
    """At the default limits, in a process of its own: 2,000,000 items (pydicom builds a
    Dataset for each, the most memory per byte of file) and 2,000,000 tiny elements."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("items-2M", "tiny-2M"):
        shutil.copyfile(big_files[name], src / f"{name}.dcm")
    for parser in ("auto", "pydicom"):
        run = subprocess.run(
            [sys.executable, "-c", _CHILD, str(src), parser],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        result = json.loads(run.stdout.splitlines()[-1])
        for name, (seconds, status, error) in sorted(result["timings"].items()):
            print(f"{parser}: {name}: {seconds:.1f} s, {status}, {error[:60]}")
            assert (status, error.split(":", 1)[0]) == ("error", "HeaderTooLarge")
        print(f"{parser}: peak RSS {result['peak'] / MiB:.0f} MiB")
        assert result["peak"] < RSS_LIMIT
