"""A bounded, seeded mutation run against the native header parser.

Seeds: real files from pydicom's test data and generated ones (tests/native_corpus.py).
Mutants: truncations at many offsets, random bit flips, 16- and 32-bit length fields
overwritten with 0xFFFFFFFF / 0xFFFFFFFE / huge / odd values, plus hand-built files:
sequences nested 10,000 deep, a 2 GB element declared in a 1 KB file, 100,000 tiny
elements. Each mutant is parsed in this process (the sanitizer build, see
.ci/sanitize, catches memory errors): it must return or decline, and whatever it
returns must be sound (valid JSON, bulk data inside the file) and bounded by the file
(no more elements than 8-byte element headers fit in it, JSON linear in its size). An
ingest of a folder of mutants must give exactly one row per file.

Accepted mutants are also compared with ``read_header`` (the first
``DICOMLAKE_FUZZ_DIFF`` of them, default 3000): the native JSON must equal it.

``DICOMLAKE_FUZZ_CASES`` sets the number of random mutants (default 20000),
``DICOMLAKE_FUZZ_INGEST`` how many of them the ingest test writes (default 1000),
``DICOMLAKE_FUZZ_SEED`` the seed (default 0).
"""

from __future__ import annotations

import base64
import faulthandler
import io
import os
import random
import struct
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import dicomlake
from dicomlake.dicom.header import json_elements, read_header
from dicomlake.sample import sample_file
from helpers.dicom_bytes import (
    LONG_VRS,
    PATIENT,
    SQ_UNDEFINED,
    deep_defined,
    deep_implicit,
    deep_undefined,
    huge_declared,
    many_items,
    preamble,
    tiny_elements,
)
from helpers.native_corpus import BULK_THRESHOLD, canonical, corpus_bytes

pytestmark = pytest.mark.native

CASES = int(os.environ.get("DICOMLAKE_FUZZ_CASES", "20000"))
DIFF_CASES = int(os.environ.get("DICOMLAKE_FUZZ_DIFF", "3000"))
INGEST_CASES = int(os.environ.get("DICOMLAKE_FUZZ_INGEST", "1000"))
SEED = int(os.environ.get("DICOMLAKE_FUZZ_SEED", "0"))
#: One parse taking longer than this is a hang: faulthandler dumps the stacks and exits.
#: Only a guard against waiting for ever: what the tests assert is the work a parse
#: did (see check_parse), never how long it took.
HANG_SECONDS = 600.0

REAL_SEEDS = [
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "JPEG2000.dcm",
    "SC_rgb_rle.dcm",
    "rtdose_1frame.dcm",
    "reportsi.dcm",
    "emri_small.dcm",
    "SC_rgb_small_odd.dcm",
    "no_meta_group_length.dcm",
    "empty_charset_LEI.dcm",
    "JPGExtended.dcm",
    # declined today: mutants still run the decline paths
    "MR_small_bigendian.dcm",
    "image_dfl.dcm",
    "nested_priv_SQ.dcm",
    "rtstruct.dcm",
]
GENERATED_SEEDS = [
    "bulk-explicit",
    "sq-mixed-explicit",
    "sq-mixed-implicit",
    "sq-empty-explicit",
    "sq-empty-implicit",
    "sq-with-binary",
    "private-explicit",
    "charset-ISO_IR_192",
    "charset-in-sequence-items-latin1-utf8",
    "padding-explicit",
    "ds-is-explicit",
    "floats-explicit",
    "multi-values",
    "pixels-encapsulated-bot",
    "pixels-native-implicit",
    "un-explicit",
]
SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
LONG_VALUES = [0xFFFFFFFF, 0xFFFFFFFE, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 1 << 30]
SHORT_VALUES = [0xFFFF, 0xFFFE, 0x8000, 0xFFF1]


# ---------------------------------------------------------------------------------------
# mutants


def seeds() -> dict[str, bytes]:
    out = {f"real-{name}": sample_file(name).read_bytes() for name in REAL_SEEDS}
    out.update({f"gen-{name}": data for name, data in corpus_bytes(GENERATED_SEEDS).items()})
    return out


def length_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, size) of what look like length fields after the preamble.

    Explicit VR element headers (16- or 32-bit lengths) and item and delimiter headers
    (32-bit). Implicit VR lengths have no marker: the random overwrites of aligned
    32-bit words ("word@") reach them.
    """
    found = []
    for i in range(132, len(data) - 8):
        vr = data[i + 4 : i + 6]
        if vr in LONG_VRS and data[i + 6 : i + 8] == b"\0\0" and i + 12 <= len(data):
            found.append((i + 8, 4))
        elif vr in SHORT_VRS:
            found.append((i + 6, 2))
        elif data[i : i + 4] in (b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0"):
            found.append((i + 4, 4))
    return found


def _odd_and_huge(rng: random.Random, old: int, size: int, remaining: int) -> int:
    choices = [old + 1, old - 1, old | 1, remaining, remaining + 1, remaining + 2, 1, 3, 0]
    value = rng.choice(choices)
    return value & ((1 << (8 * size)) - 1)


def mutate(rng: random.Random, data: bytes, fields: list[tuple[int, int]]) -> tuple[str, bytes]:
    """One random mutant of ``data`` (whose ``length_fields`` are ``fields``): (kind, bytes)."""
    kind = rng.choice(["truncate", "truncate", "flip", "flip", "length", "length", "length32"])
    if kind == "truncate":
        # near the start, near the end, or anywhere
        where = rng.choice(["start", "end", "any"])
        if where == "start":
            cut = rng.randrange(0, min(len(data), 400))
        elif where == "end":
            cut = max(0, len(data) - rng.randrange(1, 64))
        else:
            cut = rng.randrange(0, len(data))
        return f"truncate@{cut}", data[:cut]
    if kind == "flip":
        out = bytearray(data)
        flips = rng.choice([1, 1, 2, 4, 16])
        for _ in range(flips):
            # most of the interesting bytes are in the header, not the pixel data
            limit = len(out) if rng.random() < 0.3 else min(len(out), 4096)
            position = rng.randrange(132 if limit > 200 else 0, limit)
            out[position] ^= 1 << rng.randrange(8)
        return f"flip x{flips}", bytes(out)
    out = bytearray(data)
    if kind == "length" and fields:
        offset, size = rng.choice(fields)
        old = int.from_bytes(out[offset : offset + size], "little")
        remaining = len(data) - offset - size
        if rng.random() < 0.5:
            value = rng.choice(LONG_VALUES if size == 4 else SHORT_VALUES)
        else:
            value = _odd_and_huge(rng, old, size, remaining)
        out[offset : offset + size] = value.to_bytes(size, "little")
        return f"length{size * 8}@{offset}={value:#x}", bytes(out)
    # any aligned 32-bit word (implicit VR lengths included), set to a special value
    offset = rng.randrange(132, max(133, min(len(out), 8192) - 4)) & ~1
    value = rng.choice([*LONG_VALUES, rng.getrandbits(32) | 1])
    out[offset : offset + 4] = struct.pack("<L", value)
    return f"word@{offset}={value:#x}", bytes(out)


def structural() -> dict[str, bytes]:
    """Hand-built hostile files, always part of the run."""
    return {
        "deep-undefined-10000": deep_undefined(10_000, closed=True),
        "deep-undefined-10000-unclosed": deep_undefined(10_000, closed=False),
        "deep-defined-10000": deep_defined(10_000),
        "deep-implicit-10000": deep_implicit(10_000),
        "huge-OB-2GB": huge_declared(b"OB"),
        "huge-UT-2GB": huge_declared(b"UT"),
        "huge-UN-2GB": huge_declared(b"UN"),
        "huge-SQ-2GB": huge_declared(b"SQ", 0x0008, 0x1115),
        "huge-pixels-2GB": huge_declared(b"OW", 0x7FE0, 0x0010),
        "huge-item-2GB": (
            preamble() + PATIENT + SQ_UNDEFINED + b"\xfe\xff\x00\xe0" + struct.pack("<L", 1 << 31)
        ).ljust(1024, b"\0"),
        "tiny-elements-100000": tiny_elements(100_000),
        "items-100000": many_items(100_000),
        "only-preamble": preamble(),
        "preamble-cut-in-meta": preamble()[:140],
        "empty": b"",
        "dicm-only": b"\0" * 128 + b"DICM",
    }


def mutants(count: int = CASES, seed: int = SEED) -> Iterator[tuple[str, bytes]]:
    """``count`` random mutants of the seeds, round robin, deterministic for ``seed``."""
    rng = random.Random(seed)
    pool = [(name, data, length_fields(data)) for name, data in sorted(seeds().items())]
    for index in range(count):
        name, data, fields = pool[index % len(pool)]
        kind, mutant = mutate(rng, data, fields)
        yield f"{index:05d} {name} {kind}", mutant


# ---------------------------------------------------------------------------------------
# checks


def _native() -> Any:
    native = pytest.importorskip("dicomlake.dicom.native")
    if not native.available():
        pytest.skip("dicomlake.dicom._native is not built")
    return native


def _bulk_ranges(value: Any, key: str = "") -> Iterator[tuple[str, int, int]]:
    """(element key, offset, length) of each BulkDataURI, nested ones included."""
    if isinstance(value, list):
        for v in value:
            yield from _bulk_ranges(v, key)
    elif isinstance(value, dict):
        uri = value.get("BulkDataURI")
        if isinstance(uri, str) and "?" in uri:
            query = dict(part.split("=") for part in uri.rsplit("?", 1)[1].split("&"))
            yield key, int(query["offset"]), int(query["length"])
        inline = value.get("InlineBinary")
        if isinstance(inline, str):
            assert len(base64.b64decode(inline)) <= max(BULK_THRESHOLD, 0) or value.get(
                "vr"
            ) not in ("OB", "OD", "OF", "OL", "OV", "OW")
        for k, v in value.items():
            if isinstance(v, list | dict):
                yield from _bulk_ranges(v, k if len(k) == 8 else key)


def json_size_bound(size: int, elements: int, uri: str = "file:///fuzz") -> int:
    """Most characters of DICOM JSON a file of ``size`` bytes holding ``elements``
    elements and items can give: at most 16 per byte of value (a backslash-separated
    person name gives some 10: a new {"Alphabetic": ...} object per 2 bytes; a control
    character 6: a \\u escape), plus the key, VR, brackets and a BulkDataURI of each
    element (at most 64 characters and the URI)."""
    return 16 * size + (elements + 1) * (64 + len(uri))


def check_parse(native: Any, name: str, data: bytes | Path, size: int) -> str:
    """Parse one mutant; return 'ok' or the decline reason. Fails on an unsound result."""
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        result = native.parse_file(data, uri="file:///fuzz", bulk_threshold=BULK_THRESHOLD)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if isinstance(result, str):
        assert result and len(result) < 40, (name, result)
        return result
    # Bounded work, whatever the mutant: each element and item it reports took at least
    # 8 bytes of the file (a tag and a length), and its JSON grows linearly with the
    # file (see json_size_bound). A parser that looped over the same bytes, or whose
    # work grew faster than the file, would break one or the other.
    elements = json_elements(result.meta_json)
    assert elements <= size // 8, (name, elements, size)
    assert len(result.meta_json) <= json_size_bound(size, elements), (name, size)
    meta = orjson.loads(result.meta_json)
    assert isinstance(meta, dict), name
    assert isinstance(result.has_pixel_data, bool)
    assert all(isinstance(w, str) for w in result.warnings)
    assert isinstance(result.promoted, dict)
    for key, offset, length in _bulk_ranges(meta):
        assert offset >= 0 and offset + length <= size, (name, key, offset, length, size)
    return "ok"


@pytest.fixture(scope="module")
def mutant_set() -> list[tuple[str, bytes]]:
    return list(mutants())


def test_native_survives_mutants(mutant_set: list[tuple[str, bytes]], tmp_path: Path) -> None:
    native = _native()
    outcomes: Counter[str] = Counter()
    start = time.perf_counter()  # printed only, never asserted
    for index, (name, data) in enumerate(mutant_set):
        outcomes[check_parse(native, name, data, len(data))] += 1
        if index % 25 == 0 and data:  # a mapped file too (what ingest uses)
            path = tmp_path / "mutant.dcm"
            path.write_bytes(data)
            check_parse(native, name, path, len(data))
    took = time.perf_counter() - start
    print(f"{len(mutant_set)} mutants in {took:.1f} s: {dict(outcomes.most_common())}")
    assert sum(outcomes.values()) == len(mutant_set)
    assert outcomes["ok"] > len(mutant_set) // 10  # the run reaches past the first element


def test_native_equals_read_header_on_mutants(mutant_set: list[tuple[str, bytes]]) -> None:
    """Where the native parser accepts a mutant, its JSON is read_header's."""
    native = _native()
    compared = python_errors = 0
    for name, data in mutant_set[:DIFF_CASES]:
        result = native.parse_file(data, uri="file:///fuzz", bulk_threshold=BULK_THRESHOLD)
        if isinstance(result, str):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                python = read_header(io.BytesIO(data), uri="file:///fuzz")
            stored = orjson.loads(orjson.dumps(python.meta))
        except Exception:
            python_errors += 1  # the native parser reads what pydicom cannot: see below
            continue
        compared += 1
        assert canonical(orjson.loads(result.meta_json)) == canonical(stored), name
        assert result.has_pixel_data == python.has_pixel_data, name
        assert result.warnings == python.warnings, name
    print(f"compared {compared} accepted mutants with read_header")
    assert python_errors == 0
    assert compared > DIFF_CASES // 10


@pytest.mark.parametrize("name", sorted(structural()))
def test_native_survives_hostile_files(name: str, tmp_path: Path) -> None:
    native = _native()
    data = structural()[name]
    outcome = check_parse(native, name, data, len(data))
    if data:
        path = tmp_path / "hostile.dcm"
        path.write_bytes(data)
        assert check_parse(native, name, path, len(data)) == outcome
    if name.startswith("huge-pixels"):  # kept as what the file holds, with a warning
        result = native.parse_file(data, uri="file:///fuzz", bulk_threshold=BULK_THRESHOLD)
        assert isinstance(result, str) or any("truncated" in w for w in result.warnings)
    elif name.startswith(("deep-", "huge-")):
        assert outcome != "ok", outcome


def test_ingest_gives_one_row_per_mutant(
    mutant_set: list[tuple[str, bytes]], tmp_path: Path
) -> None:
    folder = tmp_path / "mutants"
    folder.mkdir()
    files = {}
    for index, (_, data) in enumerate(mutant_set[:INGEST_CASES]):
        files[f"m{index:05d}.dcm"] = data
    for name, data in structural().items():
        files[f"s-{name}.dcm"] = data
    for name, data in files.items():
        (folder / name).write_bytes(data)
    lake = tmp_path / "lake"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dicomlake.ingest([str(folder)], str(lake), workers=0, file_timeout=60)
    with dicomlake.connect(str(lake)) as con:
        rows = con.sql("select path, status from instances").fetchall()
    names = Counter(Path(path.removeprefix("file://")).name for path, _ in rows)
    assert names == Counter(files.keys())
    statuses = Counter(status for _, status in rows)
    print(f"ingested {len(files)} files: {dict(statuses)}")
    assert set(statuses) <= {"ok", "error", "not_dicom"}
