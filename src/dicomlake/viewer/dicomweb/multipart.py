"""``multipart/related`` bodies (RFC 2046, RFC 2387) read and written, in bounded chunks.

DICOMweb moves instances as ``multipart/related; type="application/dicom"`` bodies:
STOW-RS receives them (:class:`MultipartParser`), WADO-RS sends them
(:func:`multipart_chunks`). Both work on chunks, so neither holds a whole body:

* The parser is fed the request body as it arrives and spools each part to a
  temporary file past :data:`SPOOL_BYTES`. It enforces :class:`Limits` as it goes (so
  an oversized upload is refused after at most one chunk too many), and raises
  :class:`PayloadTooLarge` (HTTP 413), :class:`MultipartError` (400) or, for the
  request's Content-Type, :class:`UnsupportedMediaType` (415).
* The writer yields the body chunk by chunk from each part's own chunks.

The framing follows RFC 2046 section 5.1.1 to the letter: a delimiter is CRLF, ``--``
and the boundary, at the start of a line (or of the body), followed by optional
space/tab padding and CRLF, or by ``--`` for the close delimiter. The CRLF before a
delimiter belongs to it, not to the part. The preamble before the first delimiter and
the epilogue after the close delimiter are ignored. Lines ended by a bare LF are not
delimiters. A boundary followed by anything else is content, not a delimiter.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Final

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_PARTS",
    "MAX_PART_BYTES",
    "MAX_TOTAL_BYTES",
    "SPOOL_BYTES",
    "Limits",
    "MultipartError",
    "MultipartParser",
    "Part",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "multipart_chunks",
    "multipart_content_type",
    "new_boundary",
    "parse_content_type",
    "parse_multipart",
    "related_boundary",
]

#: Parts one request may carry.
MAX_PARTS: Final = 1000
#: Bytes one part may hold (a large multi-frame or whole-slide instance fits).
MAX_PART_BYTES: Final = 1024**3
#: Bytes one request body may hold, framing included.
MAX_TOTAL_BYTES: Final = 2 * 1024**3
#: Bytes of one part's header block.
MAX_HEADER_BYTES: Final = 16 * 1024
#: A part is kept in memory up to this size, then spooled to a temporary file.
SPOOL_BYTES: Final = 8 * 1024 * 1024

#: Transport padding allowed after a boundary (RFC 2046 allows any; a bound keeps
#: the parser's buffer bounded).
_MAX_PADDING: Final = 1024
_CRLF: Final = b"\r\n"
#: RFC 2046 ``bchars``: what a boundary may be made of (a space only not last).
_BCHARS: Final = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? "
)


class MultipartError(ValueError):
    """The body is not a well-formed multipart message (HTTP 400)."""

    status: int = 400


class PayloadTooLarge(MultipartError):
    """The body breaks one of the :class:`Limits` (HTTP 413)."""

    status = 413


class UnsupportedMediaType(MultipartError):
    """The request's Content-Type is not one this endpoint takes (HTTP 415)."""

    status = 415


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one multipart body; exceeding any raises :class:`PayloadTooLarge`."""

    max_parts: int = MAX_PARTS
    max_part_bytes: int = MAX_PART_BYTES
    max_total_bytes: int = MAX_TOTAL_BYTES
    max_header_bytes: int = MAX_HEADER_BYTES


class Part:
    """One body part: its headers (names lower-cased) and its bytes, spooled.

    The bytes live in memory up to :data:`SPOOL_BYTES` and in an anonymous temporary
    file past that; :meth:`close` frees either.
    """

    def __init__(
        self,
        headers: Mapping[str, str],
        spool_bytes: int = SPOOL_BYTES,
        spool_dir: str | None = None,
    ) -> None:
        self.headers: dict[str, str] = {k.lower(): v for k, v in headers.items()}
        self.size = 0
        # held open for the part's life, closed by close()
        self._file: IO[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
            max_size=spool_bytes, dir=spool_dir
        )

    @classmethod
    def from_bytes(cls, data: bytes, headers: Mapping[str, str] | None = None) -> Part:
        """A part holding ``data`` (for callers that have the bytes already)."""
        part = cls(headers or {"content-type": "application/dicom"}, spool_bytes=len(data) + 1)
        part.write(data)
        return part

    @property
    def content_type(self) -> str:
        """The part's media type, lower case without parameters; '' when not given."""
        return parse_content_type(self.headers.get("content-type", ""))[0]

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the part's bytes."""
        self._file.write(data)
        self.size += len(data)

    def open(self) -> IO[bytes]:
        """The part's bytes as a file, rewound to the start (valid until :meth:`close`)."""
        self._file.seek(0)
        return self._file

    def read(self) -> bytes:
        """All of the part's bytes (prefer :meth:`open` for large parts)."""
        return self.open().read()

    def close(self) -> None:
        """Free the part's memory or temporary file."""
        self._file.close()

    def __repr__(self) -> str:
        return f"Part({self.content_type or 'no content type'}, {self.size} bytes)"


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into its media type (lower case) and parameters.

    Parameter names are lower-cased; values may be quoted (with backslash escapes)
    or bare tokens, and a ``;`` inside quotes is part of the value.

    Example:
        >>> parse_content_type('multipart/related; type="application/dicom"; boundary=a;b')
        ('multipart/related', {'type': 'application/dicom', 'boundary': 'a'})
    """
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        start = i
        while i < n and rest[i] not in "=;":
            i += 1
        name = rest[start:i].strip().lower()
        if i >= n or rest[i] == ";":
            continue  # a name with no value: ignored
        i += 1  # the '='
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1  # the closing quote
            text = "".join(chars)
            while i < n and rest[i] != ";":  # anything after the closing quote
                i += 1
        else:
            start = i
            while i < n and rest[i] != ";":
                i += 1
            text = rest[start:i].strip()
        if name and name not in params:
            params[name] = text
    return media.strip().lower(), params


def related_boundary(content_type: str | None, part_type: str = "application/dicom") -> str:
    """The boundary of a ``multipart/related`` request whose parts are ``part_type``.

    A ``type`` parameter naming anything else (``application/dicom+json``: metadata
    and bulk data) is refused; a missing one is accepted, each part's own
    Content-Type being checked instead.

    Raises:
        UnsupportedMediaType: Not ``multipart/related``, or another ``type``.
        MultipartError: No boundary, or an invalid one.
    """
    media, params = parse_content_type(content_type or "")
    if media != "multipart/related":
        raise UnsupportedMediaType(
            f'the body must be multipart/related; type="{part_type}", not '
            f"{media or 'without a Content-Type'}"
        )
    declared = parse_content_type(params.get("type", ""))[0]
    if declared and declared != part_type:
        raise UnsupportedMediaType(
            f'only type="{part_type}" parts are accepted, not type="{declared}"'
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError("the multipart/related Content-Type has no boundary")
    _check_boundary(boundary, strict=False)
    return boundary


def _check_boundary(boundary: str, *, strict: bool) -> None:
    """1 to 70 characters; ``strict`` (for bodies we write) also asks for RFC bchars."""
    if not 1 <= len(boundary) <= 70:
        raise MultipartError("a multipart boundary must be 1 to 70 characters long")
    if any(c in "\r\n" for c in boundary) or not boundary.isascii():
        raise MultipartError("a multipart boundary must be ASCII on one line")
    if strict and (not set(boundary) <= _BCHARS or boundary.endswith(" ")):
        raise MultipartError(f"{boundary!r} is not a valid multipart boundary (RFC 2046)")


class MultipartParser:
    r"""An incremental ``multipart`` body parser: :meth:`feed` chunks, then :meth:`finish`.

    Memory is bounded by the largest chunk fed plus ``spool_bytes`` per part; disk
    (anonymous temporary files in ``spool_dir``, the system's temporary folder by
    default) by :attr:`Limits.max_total_bytes`. :meth:`close` frees every part, handed
    out or not, so use it in a ``finally``.

    Example:
        >>> parser = MultipartParser("b")
        >>> parser.feed(b"--b\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--b--")
        >>> [(p.content_type, p.read()) for p in parser.finish()]
        [('application/dicom', b'DICM')]
        >>> parser.close()
    """

    _PREAMBLE, _HEADERS, _BODY, _EPILOGUE = range(4)

    def __init__(
        self,
        boundary: str,
        limits: Limits | None = None,
        *,
        spool_bytes: int = SPOOL_BYTES,
        spool_dir: str | None = None,
    ) -> None:
        _check_boundary(boundary, strict=False)
        self.limits = limits or Limits()
        self._delimiter = _CRLF + b"--" + boundary.encode("ascii")
        # a CRLF up front lets a delimiter on the body's first line match like any other
        self._buf = bytearray(_CRLF)
        self._state = self._PREAMBLE
        self._scan_from = 0
        self._spool_bytes = spool_bytes
        self._spool_dir = spool_dir
        self._parts: list[Part] = []
        self._current: Part | None = None
        self.received = 0

    def feed(self, data: bytes) -> None:
        """Parse the next chunk of the body.

        Raises:
            PayloadTooLarge: The body breaks a limit.
            MultipartError: The body is malformed.
        """
        self.received += len(data)
        if self.received > self.limits.max_total_bytes:
            raise PayloadTooLarge(f"the body is larger than {self.limits.max_total_bytes} bytes")
        if self._state == self._EPILOGUE or not data:
            return
        self._buf += data
        self._parse()

    def finish(self) -> list[Part]:
        """The parts, once the whole body was fed.

        Raises:
            MultipartError: The body ended before its close delimiter.
        """
        if self._state != self._EPILOGUE:
            raise MultipartError(
                "the body ends before the closing boundary"
                if self._parts or self._state != self._PREAMBLE
                else "the body has no multipart boundary line"
            )
        return list(self._parts)

    def close(self) -> None:
        """Free every part's memory or temporary file."""
        for part in self._parts:
            part.close()
        if self._current is not None:
            self._current.close()
        self._parts.clear()
        self._current = None
        self._buf.clear()

    def __enter__(self) -> MultipartParser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- the state machine

    def _parse(self) -> None:
        while True:
            if self._state == self._HEADERS:
                if not self._read_headers():
                    return
            elif self._state in (self._PREAMBLE, self._BODY):
                if not self._read_to_delimiter():
                    return
            else:  # epilogue
                self._buf.clear()
                return

    def _read_to_delimiter(self) -> bool:
        """Move content out of the buffer up to the next delimiter; False: need more."""
        buf = self._buf
        at = buf.find(self._delimiter, self._scan_from)
        if at < 0:
            # keep what could be the start of a delimiter split across chunks
            cut = max(0, len(buf) - (len(self._delimiter) - 1))
            self._consume(cut)
            return False
        kind, end = self._after_delimiter(at + len(self._delimiter))
        if kind == "more":
            self._consume(at)  # content so far goes out; the delimiter waits
            return False
        if kind == "no":  # the boundary text followed by other bytes: content
            self._scan_from = at + 1
            return True
        self._consume(at)  # the buffer now starts with the delimiter
        if self._current is not None:
            self._parts.append(self._current)
            self._current = None
        if kind == "close":
            self._state = self._EPILOGUE
            self._buf.clear()
            return False
        del buf[: end - at]
        self._state = self._HEADERS
        return True

    def _consume(self, count: int) -> None:
        """Drop ``count`` bytes from the buffer, into the current part in a body."""
        if count <= 0:
            self._scan_from = 0
            return
        if self._state == self._BODY and self._current is not None:
            part = self._current
            if part.size + count > self.limits.max_part_bytes:
                raise PayloadTooLarge(
                    f"part {len(self._parts) + 1} is larger than {self.limits.max_part_bytes} bytes"
                )
            part.write(memoryview(self._buf)[:count])
        del self._buf[:count]
        self._scan_from = 0

    def _after_delimiter(self, pos: int) -> tuple[str, int]:
        """Classify what follows a delimiter found just before ``pos``.

        'close', 'open' (with the end of the delimiter line), 'no' (the boundary
        text followed by other bytes: not a delimiter) or 'more' (wait for data).
        """
        buf = self._buf
        if len(buf) < pos + 2:
            return "more", 0
        if buf[pos : pos + 2] == b"--":
            return "close", pos + 2
        end = pos
        while end < len(buf) and buf[end] in b" \t":
            end += 1
            if end - pos > _MAX_PADDING:
                raise MultipartError("too much padding after a multipart boundary")
        if len(buf) < end + 2:
            return "more", 0
        if buf[end : end + 2] == _CRLF:
            return "open", end + 2
        return "no", 0

    def _read_headers(self) -> bool:
        """Parse a part's header block; False: need more data."""
        buf, limit = self._buf, self.limits.max_header_bytes
        if buf.startswith(_CRLF):  # no headers at all
            block, size = b"", 2
        else:
            end = buf.find(b"\r\n\r\n", 0, limit + 4)
            if end < 0:
                if len(buf) >= limit + 4:
                    raise MultipartError(f"a part's headers are longer than {limit} bytes")
                return False
            block, size = bytes(buf[:end]), end + 4
        if len(self._parts) >= self.limits.max_parts:
            raise PayloadTooLarge(f"the body has more than {self.limits.max_parts} parts")
        headers = _parse_headers(block)
        del buf[:size]
        self._current = Part(headers, self._spool_bytes, self._spool_dir)
        self._state = self._BODY
        return True


def _parse_headers(block: bytes) -> dict[str, str]:
    """``Name: value`` lines (folded lines joined) into a dict with lower-case names."""
    headers: dict[str, str] = {}
    name = ""
    for raw in block.split(_CRLF) if block else ():
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and name:  # obsolete line folding
            headers[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        key = key.strip().lower()
        if not colon or not key or any(c in " \t" for c in key):
            raise MultipartError(f"a part has a malformed header line: {line[:80]!r}")
        name = key
        headers[name] = f"{headers[name]}, {value.strip()}" if name in headers else value.strip()
    return headers


def parse_multipart(
    body: bytes | Iterable[bytes], boundary: str, limits: Limits | None = None
) -> list[Part]:
    """Parse a whole body (or its chunks) at once; the caller closes the parts.

    Raises:
        PayloadTooLarge: The body breaks a limit.
        MultipartError: The body is malformed.
    """
    parser = MultipartParser(boundary, limits)
    try:
        for chunk in [body] if isinstance(body, bytes | bytearray) else body:
            parser.feed(bytes(chunk))
        return parser.finish()
    except BaseException:
        parser.close()
        raise


# ------------------------------------------------------------------------- the writer


def new_boundary() -> str:
    """A fresh random boundary (bchars only), unlikely to occur in any part.

    Example:
        >>> len(new_boundary()), new_boundary() != new_boundary()
        (42, True)
    """
    return "dicomlake-" + secrets.token_hex(16)


def multipart_content_type(boundary: str, part_type: str = "application/dicom") -> str:
    """The Content-Type header of a body :func:`multipart_chunks` writes.

    Example:
        >>> multipart_content_type("b1")
        'multipart/related; type="application/dicom"; boundary="b1"'
    """
    _check_boundary(boundary, strict=True)
    return f'multipart/related; type="{part_type}"; boundary="{boundary}"'


def multipart_chunks(
    parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    r"""Yield a ``multipart/related`` body of ``parts``, each ``(headers, chunks)``.

    Parts and their chunks are drawn lazily, so a response can stream instances of
    any size; send it with :func:`multipart_content_type`'s header. The parts'
    bytes are not searched for the boundary: use :func:`new_boundary`, whose 128
    random bits make a collision practically impossible.

    Raises:
        MultipartError: The boundary, or a header name or value, is invalid (a CR or
            LF would let a value forge headers).

    Example:
        >>> b"".join(multipart_chunks([({"Content-Type": "application/dicom"}, [b"x"])], "b"))
        b'--b\r\nContent-Type: application/dicom\r\n\r\nx\r\n--b--\r\n'
    """
    _check_boundary(boundary, strict=True)
    dash = b"--" + boundary.encode("ascii")
    for headers, chunks in parts:
        yield dash + _CRLF + _header_block(headers) + _CRLF
        for chunk in chunks:
            if chunk:
                yield bytes(chunk)
        yield _CRLF
    yield dash + b"--" + _CRLF


def _header_block(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if not name or any(c in name for c in ":\r\n \t") or any(c in value for c in "\r\n"):
            raise MultipartError(f"invalid part header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines)
