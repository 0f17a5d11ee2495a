r"""Locations: telling a local path from an object-store URL, and finding it on disk.

Every layer that holds a location (a source, a row's ``path``, a lake, a table) asks
these two questions of it, so they are answered in one place: a plain path and a
``file://`` URL are local; anything else with ``://`` (``s3://``, ``memory://``) or a
chained URL (``zip://MEMBER::URL``) is not.

How a local path is written in the lake (:func:`file_uri`, read back by
:func:`local_path`; every process, every later run gets the same file back):

- A path whose bytes are valid UTF-8 (nearly all of them) is ``file:///abs/path``,
  written literally: never percent-encoded, so spaces, ``%``, ``[`` and non-ASCII
  letters read as they are, and a row's ``row_id`` (a hash of ``path``) never changes.
- A path whose bytes are not valid UTF-8 (Latin-1 names of old archives) cannot be
  text as it is. It is written in RFC 8089's form with an authority,
  ``file://localhost/abs/path``, in which ``%`` and every byte that is not part of a
  valid UTF-8 sequence are percent-escaped (``%25``, ``%FF``) and all else stays
  literal, so the name stays readable: the bytes ``/data/caf\xe9.dcm`` are
  ``file://localhost/data/caf%E9.dcm``. Reading it back percent-unescapes the text
  after ``file://localhost`` to bytes, then decodes them with ``os.fsdecode``.

The two forms cannot be confused (dicomlake's plain paths always start with
``file:///``) and both are reversible. A zip member of such an archive is
``zip://MEMBER::file://localhost/...``; the member name itself is zipfile's text,
written literally. :func:`display_name` gives a relative path the same escapes.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Final

FILE_PREFIX: Final = "file://"
#: The prefix of a local path whose bytes are not valid UTF-8 (percent-escaped).
ESCAPED_PREFIX: Final = "file://localhost/"


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a plain path or a ``file://`` URL (not chained, not remote).

    Example:
        >>> is_local("/data/x.dcm"), is_local("file:///data"), is_local("s3://b/k")
        (True, True, False)
    """
    if "::" in uri:
        return False
    return uri.startswith(FILE_PREFIX) or "://" not in uri


def local_path(uri: str) -> str | None:
    r"""The absolute local path of a plain path or ``file://`` URL; None for other URLs.

    ``~`` is expanded in plain paths; symlinks are kept. A ``file://localhost/`` URI
    (a path that is not valid UTF-8, see the module's docs) is percent-unescaped to
    bytes and decoded as the file system does (``os.fsdecode``), so undecodable bytes
    come back as the same surrogate escapes ``os.listdir`` gives.

    Example:
        >>> local_path("file:///data/a b/x.dcm"), local_path("s3://b/k")
        ('/data/a b/x.dcm', None)
        >>> os.fsencode(local_path("file://localhost/data/caf%E9%25.dcm"))
        b'/data/caf\xe9%.dcm'
    """
    if not is_local(uri):
        return None
    if uri.startswith(ESCAPED_PREFIX):
        raw = urllib.parse.unquote_to_bytes(uri[len(ESCAPED_PREFIX) - 1 :])
        return os.path.abspath(os.fsdecode(raw))
    if uri.startswith(FILE_PREFIX):
        uri = uri[len(FILE_PREFIX) :]
    return os.path.abspath(os.path.expanduser(uri))


def _utf8_text(text: str) -> str | None:
    """``text`` when its file system bytes are valid UTF-8 (as that text), else None."""
    try:
        return os.fsencode(text).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _escape_bytes(text: str) -> str:
    """Percent-escape ``%`` and each byte of ``text`` that is not valid UTF-8."""
    decoded = os.fsencode(text).decode("utf-8", "surrogateescape")
    return "".join(
        "%25"
        if char == "%"
        else f"%{ord(char) - 0xDC00:02X}"
        if "\udc80" <= char <= "\udcff"
        else char
        for char in decoded
    )


def display_name(text: str) -> str:
    r"""A file system name or relative path as valid UTF-8 text, for ``relative_path``.

    Text whose bytes are valid UTF-8 is returned as it is. Otherwise ``%`` and every
    byte that is not part of a valid UTF-8 sequence are percent-escaped, as in a
    ``file://localhost/`` URI (see the module's docs).

    Example:
        >>> display_name("a b%.dcm"), display_name(os.fsdecode(b"caf\xe9%.dcm"))
        ('a b%.dcm', 'caf%E9%25.dcm')
    """
    plain = _utf8_text(text)
    return plain if plain is not None else _escape_bytes(text)


def file_uri(path: str) -> str:
    r"""The ``file://`` URI a row records for an absolute local path.

    ``file:///abs/path`` written literally when the path's bytes are valid UTF-8;
    ``file://localhost/abs/path`` with ``%`` and the undecodable bytes percent-escaped
    when they are not. :func:`local_path` reads either back to ``path``.

    Example:
        >>> file_uri("/data/a b%.dcm"), file_uri(os.fsdecode(b"/data/caf\xe9.dcm"))
        ('file:///data/a b%.dcm', 'file://localhost/data/caf%E9.dcm')
    """
    plain = _utf8_text(path)
    shown = plain if plain is not None else _escape_bytes(path)
    if os.sep != "/":
        shown = "/" + shown.replace(os.sep, "/").lstrip("/")
    return FILE_PREFIX + shown if plain is not None else ESCAPED_PREFIX + shown.lstrip("/")


def uri_forms(uri: str) -> tuple[str, ...]:
    """The spellings of a location's URI that rows under it may start with.

    A plain ``file:///dir`` can hold a name that is not valid UTF-8, whose rows are
    ``file://localhost/dir/...`` (``%`` in ``dir`` escaped): both forms are returned,
    the given one first. Any other URI has only itself.

    Example:
        >>> uri_forms("file:///data/100%"), uri_forms("s3://b/k")
        (('file:///data/100%', 'file://localhost/data/100%25'), ('s3://b/k',))
    """
    plain = FILE_PREFIX + "/"
    if not uri.startswith(plain) or "::" in uri:
        return (uri,)
    return uri, ESCAPED_PREFIX + uri[len(plain) :].replace("%", "%25")


def url_local_path(url: str) -> str | None:
    """The local path of a location in URL form, as delta-rs reports them; None if remote.

    delta-rs gives table and file locations as URLs, percent-encoded
    (``file:///data/my%20lake``), where dicomlake's own paths are not.
    """
    if not url.startswith(FILE_PREFIX):
        return local_path(url)
    return local_path(FILE_PREFIX + urllib.parse.unquote(url[len(FILE_PREFIX) :]))
