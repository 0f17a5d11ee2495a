"""Zip members read in place, within limits that keep a zip bomb harmless.

A member is checked against :data:`ZIP_MAX_MEMBER_BYTES` and :data:`ZIP_MAX_RATIO` by
its declared sizes when opened and by what it actually inflates while read (declared
sizes lie). Open archives are kept in a small per-process cache, so thousands of
members of one zip share one central directory.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import IO, cast

from dicomlake.catalog.refs import ZIP_PREFIX
from dicomlake.errors import ZipBomb

#: How many open zip archives a process keeps.
_ZIP_CACHE_SIZE = 8


ZIP_MAX_MEMBER_BYTES = 4 * 1024**3
#: Highest compression ratio (inflated / compressed) of a member larger than
#: :data:`ZIP_RATIO_MIN_BYTES`. CT and MR compress 2-10x and sparse segmentations some
#: 50-150x; deflate's own ceiling, about 1030x, is reached only by long runs of one
#: byte, which is what zip bombs are made of.
ZIP_MAX_RATIO = 200
#: Members up to this size are read whatever their ratio: inflating one costs well under
#: a second and holds at most this much.
ZIP_RATIO_MIN_BYTES = 32 * 1024**2
#: How far a guarded member moves in one read, checking the limits after each.
_ZIP_STEP = 1 << 20
#: The same for LZMA members: zipfile inflates all the compressed bytes of one read at
#: once (up to some 7,000 times as many), so those reads stay small.
_ZIP_LZMA_STEP = 4096


def _size_text(n: float) -> str:
    return f"{n / 1024**3:,.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:,.0f} MiB"


def _check_zip_size(size: int, path: str, *, declared: bool) -> None:
    """Refuse a member larger than :data:`ZIP_MAX_MEMBER_BYTES`."""
    if size > ZIP_MAX_MEMBER_BYTES:
        verb = "declares" if declared else "inflates past"
        raise ZipBomb(
            f"member {verb} {_size_text(size)} (limit {_size_text(ZIP_MAX_MEMBER_BYTES)}, "
            "ZIP_MAX_MEMBER_BYTES in dicomlake.catalog); unzip the archive to read it",
            path=path,
        )


def _check_zip_ratio(inflated: int, compressed: int, path: str, *, declared: bool) -> None:
    """Refuse a member past :data:`ZIP_RATIO_MIN_BYTES` that inflates too many times."""
    if inflated > ZIP_RATIO_MIN_BYTES and inflated > ZIP_MAX_RATIO * max(compressed, 1):
        how = "" if declared else " as read, more than its declared sizes say"
        raise ZipBomb(
            f"member inflates {inflated / max(compressed, 1):,.0f}x{how} (limit "
            f"{ZIP_MAX_RATIO}x past {_size_text(ZIP_RATIO_MIN_BYTES)}, ZIP_MAX_RATIO in "
            "dicomlake.catalog)",
            path=path,
        )


def open_guarded(archive: zipfile.ZipFile, member: str, path: str) -> IO[bytes]:
    """Open a member after checking its declared sizes, guarded while it is read."""
    info = archive.getinfo(member)
    _check_zip_size(info.file_size, path, declared=True)
    _check_zip_ratio(info.file_size, info.compress_size, path, declared=True)
    guarded = _GuardedMember(*_member_stream(archive, info), info=info, path=path)
    return cast("IO[bytes]", guarded)  # a binary file: io's classes are not typing's IO


def _member_stream(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[IO[bytes], Callable[[], int], list[IO[bytes]]]:
    """The member's inflating stream, how many compressed bytes it has read, what to close.

    zipfile inflates a bzip2 member's compressed bytes whole in each read (a few
    hundred bytes can hold gigabytes of one byte), so such a member is read as its raw
    bytes through :class:`bz2.BZ2File`, which inflates in bounded steps.
    """
    if info.compress_type != zipfile.ZIP_BZIP2:
        stream = archive.open(info)
        compressed = info.compress_size

        def consumed() -> int:
            # zipfile's own counts: read from the archive, less what the inflater holds
            # unread (zipfile reads ahead up to a whole step); the declared size if gone
            left = getattr(stream, "_compress_left", None)
            if left is None:
                return compressed
            inflater = getattr(stream, "_decompressor", None)
            return int(compressed - left - len(getattr(inflater, "unconsumed_tail", b"")))

        return stream, consumed, []
    import bz2
    import copy

    raw_info = copy.copy(info)
    raw_info.compress_type = zipfile.ZIP_STORED
    raw_info.file_size = info.compress_size
    raw = archive.open(raw_info)
    # the entry's CRC is of the inflated bytes, not these: bz2 checks its own CRCs
    raw._expected_crc = None  # type: ignore[attr-defined]
    return bz2.BZ2File(raw), raw.tell, [raw]


def declared_size(member: IO[bytes]) -> int | None:
    """A member's inflated size as its entry declares it; None for any other stream.

    What its ``seek(0, 2)`` gives too, but without inflating the whole member to get
    there: a reader of its first bytes knows the size at no cost.
    """
    return member._info.file_size if isinstance(member, _GuardedMember) else None


def read_to_end(member: IO[bytes]) -> None:
    """Inflate the rest of a zip member through its guards; nothing for other streams.

    What ``read_header``'s seek to the end does: a member that passes the zip bomb
    limits or fails its CRC past the bytes a reader of its header took still fails, so
    it is an error row whichever parser read its header.

    Raises:
        ZipBomb: The member inflates past a limit.
        zipfile.BadZipFile: Its CRC does not match.
    """
    if isinstance(member, _GuardedMember):
        member.seek(0, io.SEEK_END)


class _GuardedMember(io.BufferedIOBase):
    """A zip member's stream that stops once it inflates past the zip limits.

    A zip's declared sizes can lie, so what is actually inflated (the furthest
    position reached, against the compressed bytes read so far) is checked after each
    step: forward moves go in steps of at most 1 MiB, reads and seeks alike, so the
    reader never inflates more than one step past a limit. Going back uses the
    stream's own seek, which inflates again only what was already checked.

    Args:
        stream: The inflating stream.
        consumed: Returns how many compressed bytes ``stream`` has read.
        closing: Other streams to close with this one.
        info: The member's entry.
        path: The member's URI, for errors.

    Raises:
        ZipBomb: From any read or seek that takes the member past a limit.
    """

    def __init__(
        self,
        stream: IO[bytes],
        consumed: Callable[[], int],
        closing: list[IO[bytes]],
        *,
        info: zipfile.ZipInfo,
        path: str,
    ) -> None:
        super().__init__()
        self._stream = stream
        self._consumed = consumed
        self._closing = closing
        self._info = info
        self._path = path
        self._step = _ZIP_LZMA_STEP if info.compress_type == zipfile.ZIP_LZMA else _ZIP_STEP
        self._pos = 0
        self._furthest = 0
        # below this position no limit can be passed: most reads check nothing
        self._watch_from = min(
            ZIP_RATIO_MIN_BYTES + 1, ZIP_MAX_MEMBER_BYTES + 1, max(info.file_size, 1)
        )
        self.name = info.filename

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._stream.seekable()

    def tell(self) -> int:
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all with -1), one checked step at a time."""
        if size is not None and 0 <= size <= self._step:  # _read_step, inlined: most reads
            data = self._stream.read(size)
            self._pos += len(data)
            if self._pos > self._furthest:
                self._furthest = self._pos
                if self._pos >= self._watch_from:
                    self._check(self._pos)
            return data
        everything = size is None or size < 0
        left = 0 if size is None else size
        parts: list[bytes] = []
        while everything or left > 0:
            part = self._read_step(self._step if everything else min(left, self._step))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        """Read at most one step."""
        return self._read_step(self._step if size < 0 else min(size, self._step))

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Seek, in checked steps past what was inflated before.

        The stream's own seek inflates what it skips: backward, it starts again from the
        member's start, inflating only what was checked already.
        """
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self._info.file_size + offset  # zipfile's end: the declared size
        else:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence}")
        target = max(target, 0)
        # zipfile inflates all the compressed bytes of one LZMA read at once: small steps
        # only, and back to the start first (a rewind inflates nothing)
        lzma = self._info.compress_type == zipfile.ZIP_LZMA
        if lzma and target < self._pos:
            self._pos = self._stream.seek(0)
        if target <= self._furthest and not lzma:  # inflated and checked before
            self._pos = self._stream.seek(target)
            return self._pos
        while self._pos < target:
            self._stream.seek(min(target, self._pos + self._step))
            moved = self._stream.tell()
            if moved <= self._pos:
                break  # the end of the member
            self._advance(moved)
        return self._pos

    def close(self) -> None:
        """Close the stream and the streams it reads from."""
        if not self.closed:
            for stream in (self._stream, *self._closing):
                stream.close()
        super().close()

    def _read_step(self, size: int) -> bytes:
        data = self._stream.read(size)
        self._advance(self._pos + len(data))
        return data

    def _advance(self, position: int) -> None:
        self._pos = position
        if position > self._furthest:
            self._furthest = position
            if position >= self._watch_from:
                self._check(position)

    def _check(self, inflated: int) -> None:
        _check_zip_size(inflated, self._path, declared=False)
        declared = self._info.file_size
        # zipfile stops at the declared size itself (its CRC check then fails); bz2 goes on
        if inflated > declared or (inflated == declared and self._stream.peek(1)):  # type: ignore[attr-defined]
            raise ZipBomb(
                f"member inflates past its declared size ({declared:,} bytes)", path=self._path
            )
        _check_zip_ratio(inflated, self._consumed(), self._path, declared=False)


class _ZipCache:
    """A small LRU of open ``ZipFile`` objects, so members share one central directory.

    Entries are keyed by archive URI and checked against a signature (size, mtime,
    inode or ETag) on every use, so a rewritten archive is reopened. Members are
    opened under the lock: an archive evicted by another thread stays readable for
    members already open, because ``ZipFile`` counts its open members. A member is
    checked against the zip bomb limits and handed out guarded (:class:`_GuardedMember`).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, tuple[Hashable, zipfile.ZipFile]] = OrderedDict()
        self._lock = threading.Lock()

    def open_member(
        self,
        key: str,
        signature: Hashable,
        opener: Callable[[], zipfile.ZipFile],
        member: str,
    ) -> IO[bytes]:
        with self._lock:
            cached = self._entries.get(key)
            if cached is not None and cached[0] == signature:
                self.hits += 1
                self._entries.move_to_end(key)
                archive = cached[1]
            else:
                self.misses += 1
                if cached is not None:
                    del self._entries[key]
                    cached[1].close()
                archive = opener()
                self._entries[key] = (signature, archive)
                while len(self._entries) > self.maxsize:
                    _, (_, evicted) = self._entries.popitem(last=False)
                    evicted.close()
            return open_guarded(archive, member, f"{ZIP_PREFIX}{member}::{key}")

    def clear(self) -> None:
        """Close and forget every cached archive."""
        with self._lock:
            for _, archive in self._entries.values():
                archive.close()
            self._entries.clear()
            self.hits = self.misses = 0

    def _forget_after_fork(self) -> None:
        # A forked child shares the parent's file offsets: never reuse its handles.
        self._entries = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0


zip_cache = _ZipCache(_ZIP_CACHE_SIZE)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=zip_cache._forget_after_fork)


#: How much of each file :class:`Prefetcher` asks the kernel to read ahead.
