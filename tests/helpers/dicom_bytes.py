"""DICOM files built byte by byte, for inputs no library would write."""

from __future__ import annotations

import struct

#: Explicit VRs with a reserved field and a 32-bit length.
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())


def preamble(syntax: str = "1.2.840.10008.1.2.1") -> bytes:
    """Preamble, DICM and a file meta group for ``syntax``."""

    def element(tag: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        return struct.pack("<HH", 0x0002, tag) + vr + struct.pack("<H", len(value)) + value

    body = element(0x0002, b"UI", b"1.2.840.10008.5.1.4.1.1.7")
    body += element(0x0003, b"UI", b"1.2.3.4")
    body += element(0x0010, b"UI", syntax.encode())
    body += element(0x0012, b"UI", b"1.2.826.0.1.3680043.8.498.1")
    version = struct.pack("<HH", 0x0002, 0x0001) + b"OB\0\0" + struct.pack("<L", 2) + b"\0\1"
    body = version + body
    group_length = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HL", 4, len(body))
    return b"\0" * 128 + b"DICM" + group_length + body


def explicit(group: int, elem: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH", group, elem) + vr + b"\0\0" + struct.pack("<L", n) + value
    return struct.pack("<HH", group, elem) + vr + struct.pack("<H", n) + value


PATIENT = explicit(0x0010, 0x0010, b"PN", b"Fuzz^Case ")


SQ_UNDEFINED = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" + b"\xff\xff\xff\xff"
ITEM_UNDEFINED = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_END = b"\xfe\xff\x0d\xe0\0\0\0\0"
SQ_END = b"\xfe\xff\xdd\xe0\0\0\0\0"


def deep_undefined(depth: int, closed: bool) -> bytes:
    opening = (SQ_UNDEFINED + ITEM_UNDEFINED) * depth
    closing = (ITEM_END + SQ_END) * depth if closed else b""
    return preamble() + PATIENT + opening + closing


def deep_defined(depth: int) -> bytes:
    value = b""
    for _ in range(depth):  # one item holding one sequence element holding ``value``
        sq = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" + struct.pack("<L", len(value))
        inner = sq + value
        item = b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner
        value = item
    top = struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" + struct.pack("<L", len(value))
    return preamble() + PATIENT + top + value


def deep_implicit(depth: int) -> bytes:
    sq = struct.pack("<HHL", 0x0008, 0x1115, 0xFFFFFFFF)
    patient = struct.pack("<HHL", 0x0010, 0x0010, 10) + b"Fuzz^Case "
    opening = (sq + ITEM_UNDEFINED) * depth
    return preamble("1.2.840.10008.1.2") + patient + opening + (ITEM_END + SQ_END) * depth


def huge_declared(vr: bytes, group: int = 0x0009, elem: int = 0x1001) -> bytes:
    creator = explicit(0x0009, 0x0010, b"LO", b"FUZZ") if group == 0x0009 else b""
    head = preamble() + PATIENT + creator
    element = explicit(group, elem, vr, b"", length=0x80000000)  # 2 GiB
    return (head + element).ljust(1024, b"\xab")


def tiny_elements(count: int) -> bytes:
    parts = [preamble(), PATIENT]
    group, made = 0x0011, 0
    while made < count:
        parts.append(explicit(group, 0x0010, b"LO", b"FUZZ"))
        for elem in range(0x1000, 0x1100):
            if made == count:
                break
            parts.append(explicit(group, elem, b"SH", b"ab" if made % 2 else b""))
            made += 1
        group += 2
    return b"".join(parts)


def many_items(count: int) -> bytes:
    item = b"\xfe\xff\x00\xe0" + struct.pack("<L", 10) + explicit(0x0010, 0x0020, b"LO", b"ab")
    return preamble() + PATIENT + SQ_UNDEFINED + item * count + SQ_END
