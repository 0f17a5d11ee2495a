"""Content negotiation for WADO: what the client accepts, and what a file can give.

PS3.18 §8.7 names the media types of each resource and a ``transfer-syntax``
parameter. A file is served as stored when the client accepts its transfer syntax
(``*`` accepts any); an explicit request for Explicit VR Little Endian is met by
decoding; anything else is a 406.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomlake.viewer.dicomweb.multipart import parse_content_type

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
#: Transfer syntaxes whose pixel data is not encapsulated.
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})

#: The media type of a compressed frame, by transfer syntax (PS3.18 Table 8.7.3-2).
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
}
OCTET = "application/octet-stream"


class NotAcceptable(Exception):
    """Nothing the client accepts can be made of the resource (406)."""


@dataclass(frozen=True)
class Accepted:
    """One media range of an Accept header."""

    media: str  # 'multipart/related', 'application/dicom', 'image/jpeg', '*/*', ...
    part: str | None  # the ``type`` of a multipart range
    syntax: str | None  # the ``transfer-syntax`` parameter; None when absent
    quality: float


def accepted(header: str | None) -> list[Accepted]:
    """The media ranges of an Accept header, best first (``*/*`` when absent)."""
    if not header or not header.strip():
        return [Accepted("*/*", None, None, 1.0)]
    out = []
    for order, text in enumerate(_split(header)):
        media, params = parse_content_type(text)
        if not media:
            continue
        try:
            quality = float(params.get("q", "1"))
        except ValueError:
            quality = 1.0
        part = params.get("type")
        out.append(
            (
                -quality,
                order,
                Accepted(
                    media,
                    part.lower() if part else None,
                    params.get("transfer-syntax"),
                    quality,
                ),
            )
        )
    out.sort(key=lambda item: (item[0], item[1]))
    return [item[2] for item in out if item[2].quality > 0]


def _split(header: str) -> list[str]:
    """Split on commas outside quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _matches(pattern: str, media: str) -> bool:
    if pattern in ("*/*", "*"):
        return True
    if pattern.endswith("/*"):
        return media.startswith(pattern[:-1])
    return pattern == media


def choose_syntax(ranges: list[Accepted], part_media: str, stored: str, *, single: bool) -> str:
    """The transfer syntax to send a resource in, for parts of type ``part_media``.

    Args:
        ranges: What the client accepts, best first.
        part_media: ``application/dicom`` (instances) or a frame's media type.
        stored: The transfer syntax the file is stored in.
        single: Whether a bare (not multipart) answer is allowed.

    Returns:
        ``stored`` when acceptable as is, or :data:`EXPLICIT_LE` when the client
        asked for it explicitly (the caller then decodes).

    Raises:
        NotAcceptable: The client accepts neither.
    """
    for item in ranges:
        if item.media == "multipart/related":
            part = item.part or part_media
            if not _matches(part, part_media):
                continue
        elif item.media not in ("*/*", "*") and not (single and _matches(item.media, part_media)):
            continue
        syntax = item.syntax
        if syntax is None or syntax == "*" or syntax == stored:
            return stored
        if syntax == EXPLICIT_LE:
            return EXPLICIT_LE
    raise NotAcceptable(
        f"the resource is stored as {part_media} in transfer syntax {stored}; "
        "accept that (or transfer-syntax=*), or ask for 1.2.840.10008.1.2.1"
    )


@dataclass(frozen=True)
class FrameAnswer:
    """How frames are sent.

    The parts' media type, their transfer syntax, and whether the server decodes them.
    """

    media: str
    syntax: str
    decode: bool


def choose_frames(ranges: list[Accepted], stored: str) -> FrameAnswer:
    """How to send frames of a file stored in ``stored`` to this client.

    ``application/octet-stream`` with ``transfer-syntax=*`` (what OHIF asks) takes the
    frames as stored, named by a ``transfer-syntax`` parameter, so the browser's codecs
    decode them; without ``*`` it means Explicit VR Little Endian, decoded here when
    stored otherwise. A compressed frame's own media type takes it as stored.

    Raises:
        NotAcceptable: The client accepts none of these.
    """
    native_le = stored in (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE)
    own = frame_media(stored)
    for item in ranges:
        part = item.part if item.media == "multipart/related" else item.media
        part = part or OCTET
        syntax = item.syntax
        if part in ("*/*", "*"):
            return FrameAnswer(own, EXPLICIT_LE if native_le else stored, False)
        if part == OCTET:
            if syntax == "*" or syntax == stored:
                return FrameAnswer(OCTET, EXPLICIT_LE if native_le else stored, False)
            if syntax in (None, EXPLICIT_LE):
                return FrameAnswer(OCTET, EXPLICIT_LE, not native_le)
        elif own != OCTET and _matches(part, own) and syntax in (None, "*", stored):
            return FrameAnswer(own, stored, False)
    raise NotAcceptable(
        f"frames stored in transfer syntax {stored} are sent as {own} or "
        "application/octet-stream (transfer-syntax=* or 1.2.840.10008.1.2.1)"
    )


def frame_media(stored: str) -> str:
    """The media type a frame of a file in ``stored`` syntax is sent as, unchanged."""
    return OCTET if stored in NATIVE else FRAME_MEDIA.get(stored, OCTET)


def wants_bare(ranges: list[Accepted], media: str) -> bool:
    """Whether the client's best acceptable choice is ``media`` itself, not multipart."""
    for item in ranges:
        if item.media == media:
            return True
        if item.media == "multipart/related" or item.media in ("*/*", "*"):
            return False
    return False


def image_media(ranges: list[Accepted], default: str = "image/jpeg") -> str:
    """The image type for a rendered resource: JPEG, PNG, or a 406.

    Raises:
        NotAcceptable: The client accepts neither JPEG nor PNG.
    """
    for item in ranges:
        for media in ("image/jpeg", "image/png") if item.media != default else (default,):
            if item.media == "multipart/related" and item.part:
                if _matches(item.part, media):
                    return media
            elif _matches(item.media, media):
                return default if item.media in ("*/*", "*", "image/*") else media
    raise NotAcceptable("rendered images are image/jpeg or image/png")
