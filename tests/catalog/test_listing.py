"""Tests for dicomlake.catalog: listing real folders, zips and fsspec memory sources."""

from __future__ import annotations

import inspect
import io
import logging
import os
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest

from dicomlake.catalog import (
    FileRef,
    check_sources,
    extension,
    iter_files,
    listing,
    local_file,
    open_ref,
    path_tags,
    zips,
)
from dicomlake.errors import DicomLakeError, SourceNotFound

ZIP_TIME = (2021, 3, 4, 5, 6, 8)  # DOS time stamps have 2-second resolution


def payload(tag: str, size: int = 600) -> bytes:
    """Distinct, position-dependent bytes so a wrong offset or member shows."""
    head = tag.encode()
    body = bytes((i * 7 + len(head)) % 256 for i in range(size))
    return head + body


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_zip(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in dirs:
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), b"")
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), data)
    return path


def stat_time(path: Path) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=path.stat().st_mtime_ns // 1000
    )


def uri(path: Path | str) -> str:
    return "file://" + str(path)


def by_rel(refs: list[FileRef]) -> dict[str, FileRef]:
    rels = [ref.relative_path for ref in refs]
    assert len(rels) == len(set(rels)), f"duplicate rows: {sorted(rels)}"
    return {ref.relative_path: ref for ref in refs}


def read_ref(ref: FileRef | str, **kwargs: object) -> bytes:
    with open_ref(ref, **kwargs) as handle:  # type: ignore[arg-type]
        return handle.read()


def read_fsspec(url: str) -> bytes:
    opened = fsspec.open(url, "rb")  # keep the OpenFile alive: it owns the zip fs
    handle = opened.open()
    try:
        return handle.read()
    finally:
        handle.close()


@pytest.fixture(autouse=True)
def _fresh_zip_cache() -> Iterator[None]:
    zips.zip_cache.clear()
    yield
    zips.zip_cache.clear()


@pytest.fixture
def memory_root() -> Iterator[str]:
    """A private folder in fsspec's process-wide memory file system, removed after."""
    fs = fsspec.filesystem("memory")
    root = f"/dicomlake-test-{uuid.uuid4().hex}"
    fs.mkdir(root)
    yield root
    if fs.exists(root):
        fs.rm(root, recursive=True)


# --------------------------------------------------------------------------- folders

ODD_NAMES = [
    "plain.dcm",
    "with space.dcm",
    "ünïcödé 画像.dcm",
    "brackets[1](2){3}.dcm",
    "no_extension",
    ".hidden",
    "UPPER.DCM",
]


def test_nested_folder_every_file_once_with_full_uris(tmp_path: Path) -> None:
    src = tmp_path / "src dir"
    expected: dict[str, bytes] = {}
    for depth, sub in enumerate(["", "a", "a/b b", "a/b b/[c]", "ü"]):
        for name in ODD_NAMES:
            rel = f"{sub}/{name}" if sub else name
            data = payload(rel, size=depth * 10)
            write(src / rel, data)
            expected[rel] = data
    (src / "empty" / "deeper").mkdir(parents=True)

    refs = by_rel(list(iter_files([str(src)])))

    assert set(refs) == set(expected)
    for rel, data in expected.items():
        ref = refs[rel]
        local = src / rel
        assert ref.path == "file://" + str(local)  # not percent-encoded, not resolved
        assert ref.size == len(data)
        assert ref.mtime == stat_time(local)
        assert ref.mtime is not None and ref.mtime.tzinfo is UTC
        assert ref.listing_error is None
        assert read_ref(ref) == data


def test_uri_keeps_spaces_unicode_and_brackets_verbatim(tmp_path: Path) -> None:
    local = write(tmp_path / "a b" / "ü[1].dcm", b"x")
    (ref,) = iter_files([str(tmp_path / "a b")])
    assert ref.path == f"file://{tmp_path}/a b/ü[1].dcm"
    assert "%" not in ref.path
    assert ref.relative_path == "ü[1].dcm"
    assert read_fsspec(ref.path) == local.read_bytes()


def test_file_url_and_relative_path_sources_match_plain_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "d" / "x.dcm", b"1")
    write(tmp_path / "d" / "s" / "y", b"22")
    plain = sorted(iter_files([str(tmp_path / "d")]), key=lambda r: r.path)
    as_url = sorted(iter_files([uri(tmp_path / "d")]), key=lambda r: r.path)
    monkeypatch.chdir(tmp_path)
    relative = sorted(iter_files(["d"]), key=lambda r: r.path)
    assert plain == as_url == relative
    assert {r.relative_path for r in plain} == {"x.dcm", "s/y"}


def test_single_file_source(tmp_path: Path) -> None:
    local = write(tmp_path / "one file[1].DCM", b"abc")
    (ref,) = iter_files([str(local)])
    assert ref == FileRef(
        path=uri(local),
        relative_path="one file[1].DCM",
        size=3,
        mtime=stat_time(local),  # the file's own modification time, to the microsecond
    )
    assert ref.mtime is not None and ref.mtime.tzinfo is UTC


def test_several_sources_in_order(tmp_path: Path) -> None:
    first = write(tmp_path / "first.dcm", b"1")
    write(tmp_path / "second" / "x.dcm", b"2")
    refs = list(iter_files([str(first), str(tmp_path / "second")]))
    assert [r.relative_path for r in refs] == ["first.dcm", "x.dcm"]


def test_non_utf8_file_name_is_escaped_and_still_opens(tmp_path: Path) -> None:
    raw_dir = os.fsencode(tmp_path)
    raw_name = b"caf\xe9 \xff.dcm"  # Latin-1 bytes: not valid UTF-8
    try:
        fd = os.open(os.path.join(raw_dir, raw_name), os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    os.write(fd, b"latin")
    os.close(fd)

    (ref,) = iter_files([str(tmp_path)])

    assert ref.relative_path == "caf%E9 %FF.dcm"
    assert ref.path == f"file://localhost{tmp_path}/caf%E9 %FF.dcm"  # RFC 8089, escaped
    ref.path.encode("utf-8")  # valid text for Arrow
    local = local_file(ref)
    assert local is not None
    assert os.fsencode(local) == os.path.join(raw_dir, raw_name)
    assert read_ref(ref) == b"latin"
    with open_ref(ref.path) as handle:  # the path alone opens it
        assert handle.read() == b"latin"


def test_fifo_and_other_special_files_are_skipped(tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    write(tmp_path / "real.dcm", b"x")
    os.mkfifo(tmp_path / "pipe")
    assert [r.relative_path for r in iter_files([str(tmp_path)])] == ["real.dcm"]


# --------------------------------------------------------------------------- streaming


def test_iter_files_streams_instead_of_listing_first(tmp_path: Path) -> None:
    top = tmp_path / "big"
    for i in range(2000):
        write(top / f"f{i:05d}.dcm", b"")
    (top / "sub").mkdir()

    refs = iter_files([str(top)])
    assert inspect.isgenerator(refs)
    first = next(refs)
    assert first.relative_path.startswith("f")
    # The walk has not reached sub/ yet: a file created there now must still be seen,
    # which could not happen if the folder had been listed before the first yield.
    write(top / "sub" / "late.dcm", b"late")
    rest = list(refs)

    rels = {first.relative_path} | {r.relative_path for r in rest}
    assert len(rest) + 1 == len(rels) == 2001
    assert "sub/late.dcm" in rels


def test_iter_files_does_nothing_until_iterated(tmp_path: Path) -> None:
    refs = iter_files([str(tmp_path / "does not exist")])  # no error yet: lazy
    with pytest.raises(SourceNotFound):
        next(refs)


# --------------------------------------------------------------------------- zips

MEMBERS = {
    "a.dcm": payload("a.dcm", 1000),
    "dir/b b[1].dcm": payload("b", 50),
    "dir/ünï/no_ext": payload("c", 3),
    "inner.zip": b"PK\x03\x04 not expanded, just a member",
}


def test_zip_given_directly_lists_members_as_fsspec_chained_uris(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "my scans[1].zip", MEMBERS, dirs=("dir/", "empty/"))

    refs = by_rel(list(iter_files([str(archive)])))

    assert set(refs) == set(MEMBERS)  # no row for the zip itself or directory entries
    for name, data in MEMBERS.items():
        ref = refs[name]
        assert ref.path == f"zip://{name}::file://{archive}"
        assert ref.size == len(data)  # uncompressed
        assert ref.mtime == datetime(*ZIP_TIME, tzinfo=UTC)
        assert ref.listing_error is None
        assert read_ref(ref) == data
        assert read_fsspec(ref.path) == data  # the URI is fsspec's own form


def test_zip_inside_folder(tmp_path: Path) -> None:
    write(tmp_path / "src" / "loose.dcm", b"loose")
    archive = make_zip(tmp_path / "src" / "batch 1" / "SCANS.ZIP", MEMBERS)

    refs = by_rel(list(iter_files([str(tmp_path / "src")])))

    expected = {"loose.dcm"} | {f"batch 1/SCANS.ZIP/{name}" for name in MEMBERS}
    assert set(refs) == expected
    ref = refs["batch 1/SCANS.ZIP/dir/b b[1].dcm"]
    assert ref.path == f"zip://dir/b b[1].dcm::file://{archive}"
    assert read_ref(ref) == MEMBERS["dir/b b[1].dcm"]
    assert read_fsspec(ref.path) == MEMBERS["dir/b b[1].dcm"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a zip at all" * 10, "BadZipFile: File is not a zip file"),
        (b"", "BadZipFile: File is not a zip file"),
        (None, "BadZipFile: "),  # a real zip, truncated
    ],
    ids=["garbage", "empty", "truncated"],
)
def test_corrupt_zip_gives_one_error_reference(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    bad = tmp_path / "src" / "bad.zip"
    if content is None:
        good = make_zip(tmp_path / "good.zip", MEMBERS)
        content = good.read_bytes()[:-30]
    write(bad, content)
    write(tmp_path / "src" / "ok.dcm", b"ok")

    refs = by_rel(list(iter_files([str(tmp_path / "src")])))

    assert set(refs) == {"bad.zip", "ok.dcm"}
    ref = refs["bad.zip"]
    assert ref.path == uri(bad)
    assert ref.size == len(content)
    assert ref.mtime is not None
    assert ref.listing_error is not None and ref.listing_error.startswith(message)

    (direct,) = iter_files([str(bad)])  # a corrupt zip given directly: same row
    assert direct == ref


def test_open_ref_zip_member_is_seekable(tmp_path: Path) -> None:
    data = MEMBERS["a.dcm"]
    archive = make_zip(tmp_path / "x.zip", MEMBERS)
    with open_ref(f"zip://a.dcm::{uri(archive)}") as handle:
        handle.seek(128)
        assert handle.tell() == 128
        assert handle.read(4) == data[128:132]
        handle.seek(-10, os.SEEK_END)
        assert handle.read() == data[-10:]
        handle.seek(0)
        assert handle.read(5) == data[:5]


def test_open_ref_missing_member_raises_key_error(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "x.zip", MEMBERS)
    with pytest.raises(KeyError), open_ref(f"zip://nope.dcm::{uri(archive)}"):
        pass


def test_zip_cache_reuses_archive_and_sees_rewrites(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    make_zip(archive, {"m.dcm": b"version one"})
    ref = FileRef(f"zip://m.dcm::{uri(archive)}", "m.dcm", None, None)
    cache = zips.zip_cache

    assert read_ref(ref) == b"version one"
    assert read_ref(ref) == b"version one"
    assert (cache.misses, cache.hits) == (1, 1)

    make_zip(archive, {"m.dcm": b"version two, longer"})  # rewritten in place
    assert read_ref(ref) == b"version two, longer"
    assert cache.misses == 2

    os.replace(make_zip(tmp_path / "y.zip", {"m.dcm": b"three"}), archive)
    assert read_ref(ref) == b"three"
    assert cache.misses == 3


def test_zip_cache_evicts_but_members_stay_readable(tmp_path: Path) -> None:
    archives = [make_zip(tmp_path / f"z{i}.zip", {"m": payload(str(i))}) for i in range(12)]
    with open_ref(f"zip://m::{uri(archives[0])}") as held:
        for i, archive in enumerate(archives):  # more archives than the cache holds
            assert read_ref(f"zip://m::{uri(archive)}") == payload(str(i))
        assert held.read() == payload("0")  # its archive was evicted meanwhile
    assert read_ref(f"zip://m::{uri(archives[0])}") == payload("0")


# --------------------------------------------------------------------------- symlinks

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")


@needs_symlinks
def test_symlink_to_file_is_followed_but_not_resolved(tmp_path: Path) -> None:
    target = write(tmp_path / "elsewhere" / "target.dcm", b"target bytes")
    src = tmp_path / "src"
    src.mkdir()
    (src / "link.dcm").symlink_to(target)

    (ref,) = iter_files([str(src)])

    assert ref.path == uri(src / "link.dcm")
    assert ref.size == len(b"target bytes")
    assert ref.mtime == stat_time(target)
    assert read_ref(ref) == b"target bytes"


@needs_symlinks
def test_symlink_to_folder_is_followed(tmp_path: Path) -> None:
    write(tmp_path / "outside" / "x.dcm", b"x")
    src = tmp_path / "src"
    write(src / "own.dcm", b"o")
    (src / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)

    refs = by_rel(list(iter_files([str(src)])))

    assert set(refs) == {"own.dcm", "linked/x.dcm"}
    assert refs["linked/x.dcm"].path == uri(src / "linked" / "x.dcm")


@needs_symlinks
def test_symlink_loops_terminate_without_duplicates(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "d" / "f.dcm", b"f")
    write(src / "top.dcm", b"t")
    (src / "d" / "self").symlink_to(src / "d", target_is_directory=True)  # dir/link -> dir
    (src / "d" / "up").symlink_to(src, target_is_directory=True)  # back to the root
    (src / "d" / "dot").symlink_to(".", target_is_directory=True)

    refs = list(iter_files([str(src)]))

    assert sorted(r.relative_path for r in refs) == ["d/f.dcm", "top.dcm"]


@needs_symlinks
def test_broken_symlink_becomes_an_error_reference(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "ok.dcm", b"ok")
    (src / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    (src / "selfloop").symlink_to(src / "selfloop")

    refs = by_rel(list(iter_files([str(src)])))

    assert set(refs) == {"ok.dcm", "dangling.dcm", "selfloop"}
    broken = refs["dangling.dcm"]
    assert broken == FileRef(
        path=uri(src / "dangling.dcm"),
        relative_path="dangling.dcm",
        size=None,
        mtime=None,
        listing_error="FileNotFoundError: broken symlink",
    )
    assert refs["selfloop"].listing_error is not None
    assert refs["selfloop"].size is None


def test_unreadable_folder_is_an_error_row_and_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "src"
    write(src / "ok.dcm", b"ok")
    locked = src / "locked"
    write(locked / "secret.dcm", b"s")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads anything: force the rare OS condition at the seam instead
        real_scandir = os.scandir

        def scandir(path: str) -> object:
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(listing.os, "scandir", scandir)
    try:
        with caplog.at_level(logging.WARNING, logger="dicomlake.catalog"):
            refs = list(iter_files([str(src)]))
    finally:
        locked.chmod(0o755)

    assert [r.relative_path for r in refs] == ["ok.dcm", "locked/"]
    folder = refs[1]
    assert folder.path == f"file://{locked}/"
    assert folder.listing_error is not None and "Permission denied" in folder.listing_error
    assert any("locked" in rec.getMessage() for rec in caplog.records)


# --------------------------------------------------------------------------- fsspec


def test_memory_source_via_fsspec(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    files = {
        "a.dcm": b"aaa",
        "sub dir/b[1].dcm": b"bb",
        "sub dir/deeper/ü": b"c",
    }
    for rel, data in files.items():
        fs.pipe(f"{memory_root}/{rel}", data)
    source = f"memory://{memory_root.lstrip('/')}"

    refs = by_rel(list(iter_files([source])))

    assert set(refs) == set(files)
    for rel, data in files.items():
        ref = refs[rel]
        assert ref.path == f"{source}/{rel}"
        assert ref.size == len(data)
        assert ref.mtime is not None and ref.mtime.tzinfo is UTC
        assert read_ref(ref) == data
        assert read_fsspec(ref.path) == data


def test_memory_single_file_and_trailing_slash(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe(f"{memory_root}/x/one.dcm", b"1")
    base = f"memory://{memory_root.lstrip('/')}/x"

    (single,) = iter_files([f"{base}/one.dcm"])
    assert (single.path, single.relative_path, single.size) == (f"{base}/one.dcm", "one.dcm", 1)

    (slashed,) = iter_files([base + "/"])
    assert slashed.path == f"{base}/one.dcm"


def test_memory_zips_listed_and_opened(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in MEMBERS.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=ZIP_TIME), data)
    fs.pipe(f"{memory_root}/s/batch.zip", buffer.getvalue())
    fs.pipe(f"{memory_root}/s/broken.zip", b"nope")
    source = f"memory://{memory_root.lstrip('/')}/s"

    refs = by_rel(list(iter_files([source])))

    assert set(refs) == {"broken.zip"} | {f"batch.zip/{name}" for name in MEMBERS}
    assert refs["broken.zip"].listing_error == "BadZipFile: File is not a zip file"
    ref = refs["batch.zip/dir/b b[1].dcm"]
    assert ref.path == f"zip://dir/b b[1].dcm::{source}/batch.zip"
    assert ref.mtime == datetime(*ZIP_TIME, tzinfo=UTC)
    assert read_ref(ref) == MEMBERS["dir/b b[1].dcm"]
    assert read_fsspec(ref.path) == MEMBERS["dir/b b[1].dcm"]
    with open_ref(refs["batch.zip/a.dcm"]) as handle:
        handle.seek(128)
        assert handle.read(4) == MEMBERS["a.dcm"][128:132]

    direct = by_rel(list(iter_files([f"{source}/batch.zip"])))
    assert set(direct) == set(MEMBERS)

    # rewriting the remote archive invalidates the cached ZipFile too
    with zipfile.ZipFile(buffer := io.BytesIO(), "w") as archive:
        archive.writestr("a.dcm", b"new bytes, new size")
    fs.pipe(f"{memory_root}/s/batch.zip", buffer.getvalue())
    assert read_ref(refs["batch.zip/a.dcm"]) == b"new bytes, new size"


# --------------------------------------------------------------------------- check_sources


def test_check_sources_accepts_existing_sources(tmp_path: Path, memory_root: str) -> None:
    write(tmp_path / "f.dcm", b"")
    fsspec.filesystem("memory").pipe(f"{memory_root}/m.dcm", b"")
    check_sources([str(tmp_path), str(tmp_path / "f.dcm"), uri(tmp_path)])
    check_sources([f"memory://{memory_root.lstrip('/')}"])


def test_check_sources_names_the_first_missing_source(tmp_path: Path, memory_root: str) -> None:
    missing = str(tmp_path / "missing dir")
    with pytest.raises(SourceNotFound) as info:
        check_sources([str(tmp_path), missing, "/also/missing"])
    assert str(info.value) == f"source not found: {missing}"
    assert info.value.source == missing
    assert isinstance(info.value, DicomLakeError)

    remote = f"memory://{memory_root.lstrip('/')}/nothing"
    with pytest.raises(SourceNotFound, match="source not found: memory://"):
        check_sources([remote])
    with pytest.raises(SourceNotFound):
        next(iter_files([remote]))


def test_check_sources_unknown_protocol_is_a_source_error() -> None:
    with pytest.raises(SourceNotFound) as info:
        check_sources(["nosuchprotocol://bucket/key"])
    assert info.value.source == "nosuchprotocol://bucket/key"


# --------------------------------------------------------------------------- columns


@pytest.mark.parametrize(
    ("relative_path", "tags"),
    [
        ("CT head/series_01/IM-0001.dcm", ["CT", "head", "series", "01", "IM", "0001", "dcm"]),
        ("a\\b\tc..d__e--f", ["a", "b", "c", "d", "e", "f"]),
        ("", []),
        ("/lead/", ["lead"]),
        ("zip.zip/ünï/x", ["zip", "zip", "ünï", "x"]),
    ],
)
def test_path_tags(relative_path: str, tags: list[str]) -> None:
    assert path_tags(relative_path) == tags


@pytest.mark.parametrize(
    ("path", "ext"),
    [
        ("file:///data/x.dcm", "dcm"),
        ("IMG.DCM", "dcm"),
        ("file:///data.d/noext", ""),
        ("a/.hidden", ""),
        ("archive.tar.gz", "gz"),
        ("trailing.", ""),
        ("zip://dir/a.DICOM::file:///data/x.zip", "dicom"),
        ("zip://dir/noext::s3://b/x.zip", ""),
        ("s3://bucket/key.json", "json"),
        ("c:\\data\\x.Dcm", "dcm"),
        ("", ""),
    ],
)
def test_extension(path: str, ext: str) -> None:
    assert extension(path) == ext


def _evict(path: Path) -> None:
    """Drop a file's pages from the page cache, as after a reboot (clean pages only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _drained(prefetcher: Any, files: int) -> None:
    """Wait until ``files`` local paths in all were judged cached or queued, and read."""
    deadline = time.monotonic() + 30  # a loaded machine: never a fixed sleep
    while time.monotonic() < deadline:
        if prefetcher.cached + prefetcher.queued >= files and prefetcher._queue.empty():
            break
        time.sleep(0.01)
    assert prefetcher.cached + prefetcher.queued == files
    assert prefetcher._queue.empty()


def test_prefetcher_reads_ahead_cold_local_files_and_skips_the_rest(tmp_path: Path) -> None:
    from dicomlake.catalog import FileRef, Prefetcher

    real = tmp_path / "a.dcm"
    real.write_bytes(b"x" * 100_000)
    refs = [
        FileRef(real.as_uri(), "a.dcm", 100_000, None),
        FileRef((tmp_path / "gone.dcm").as_uri(), "gone.dcm", None, None),  # vanished
        FileRef(f"zip://m.dcm::{(tmp_path / 'z.zip').as_uri()}", "z.zip/m.dcm", 1, None),
    ]
    prefetcher = Prefetcher(threads=2)
    # just written, so in memory: nothing to read ahead (on a file system whose reads
    # can say so; elsewhere the task is read ahead as if cold)
    prefetcher.submit(refs)
    _drained(prefetcher, 2)
    assert (prefetcher.cached, prefetcher.queued) in ((2, 0), (0, 2))
    warm_known = prefetcher.cached == 2
    # evicted: the two local paths are read ahead, not the zip member, and a vanished
    # file stops no thread
    _evict(real)
    prefetcher.submit(refs)
    _drained(prefetcher, 4)
    if warm_known:
        assert prefetcher.queued == 2
    prefetcher.submit(refs[:1])
    _drained(prefetcher, 5)
    threads = [t for t in threading.enumerate() if t.name == "dicomlake-prefetch"]
    assert threads and all(t.daemon for t in threads)  # never keeps a process alive
