"""Generate ``src/dicomlake/deidentify/safe_private.json`` from DICOM PS3.15 Table E.3.10-1.

The input, ``scripts/data/ps315_table_e3_10_1.json``, is Table E.3.10-1 (Safe Private
Attributes) of the 2026d edition as pymedphys extracts it from the standard's HTML
(``lib/pymedphys/_dicom/deidentify/_standard/e3_10_1.json`` at commit 985a1bd9), every
row kept, written as ``[private_creator, tag, vr, vm, meaning]`` lists. The file also
records the digest pymedphys gives its rows (``content_sha256``: SHA-256 of the rows as
``{"tag", "private_creator", "vr", "vm", "meaning"}`` objects in canonical JSON, keys
sorted, no spaces, UTF-8), so a row changed by hand fails here before anything is
written. The output keeps the format :mod:`dicomlake.deidentify.rules` reads: one
``{"creator", "tag", "vr", "meaning"}`` entry per row under ``"attributes"``::

    python scripts/gen_deid_safe_private.py            # writes safe_private.json
    python scripts/gen_deid_safe_private.py --check    # exits 1 when it is stale
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is no package
from generated import write_or_check

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "scripts" / "data" / "ps315_table_e3_10_1.json"
OUTPUT = ROOT / "src" / "dicomlake" / "deidentify" / "safe_private.json"

COLUMNS = ["private_creator", "tag", "vr", "vm", "meaning"]
#: A tag as the table writes it: the group, xx for the creator's block, the element.
#: The published table writes some hexadecimal digits in lower case.
PRIVATE_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),xx([0-9A-Fa-f]{2})\)")

ABOUT = (
    "Private attributes that PS3.15 Table E.3.10-1 lists as known to hold no identifying"
    " information, kept by the Retain Safe Private Option (retain-safe-private): the whole"
    " table, {count} rows, in its order. Each entry is the block's Private Creator, the tag"
    " as the table writes it ((gggg,xxee): xx is the block the creator reserves), the VR"
    " (empty where the table gives none) and the table's meaning. Every private attribute"
    " not listed here is removed."
)


def _digest(rows: list[dict[str, str]]) -> str:
    """The digest pymedphys gives a table's rows (canonical JSON, keys sorted)."""
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def read_table(table: dict[str, Any]) -> list[dict[str, str]]:
    """The table's rows as objects, after checking their shape, tags and digest."""
    if table.get("columns") != COLUMNS:
        raise ValueError(f"expected the columns {COLUMNS}, got {table.get('columns')!r}")
    rows: list[dict[str, str]] = []
    seen: set[tuple[str, int, int]] = set()
    for cells in table["rows"]:
        if len(cells) != len(COLUMNS) or not all(isinstance(c, str) for c in cells):
            raise ValueError(f"a row is not {len(COLUMNS)} strings: {cells!r}")
        row = dict(zip(COLUMNS, cells, strict=True))
        match = PRIVATE_TAG.fullmatch(row["tag"])
        if match is None or int(match[1], 16) % 2 == 0 or not row["private_creator"]:
            raise ValueError(f"not a private tag with its creator: {cells!r}")
        key = (row["private_creator"], int(match[1], 16), int(match[2], 16))
        if key in seen:
            raise ValueError(f"{row['private_creator']} {row['tag']} is in the table twice")
        seen.add(key)
        rows.append(row)
    if _digest(rows) != table["content_sha256"]:
        raise ValueError("the rows do not match the table's content_sha256: edited by hand?")
    return rows


def render(table: dict[str, Any]) -> str:
    """Return the text of ``safe_private.json`` for the table."""
    rows = read_table(table)
    head = {
        "generated": "by scripts/gen_deid_safe_private.py from"
        " scripts/data/ps315_table_e3_10_1.json: do not edit",
        "source": f"DICOM PS3.15 Table E.3.10-1 Safe Private Attributes, {table['edition']}"
        " edition, as extracted by pymedphys",
        "acknowledgement": table["acknowledgement"],
        "about": ABOUT.format(count=len(rows)),
    }
    lines = ["{"]
    lines.extend(
        f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in head.items()
    )
    lines.append('  "attributes": [')
    entries = [
        {"creator": r["private_creator"], "tag": r["tag"], "vr": r["vr"], "meaning": r["meaning"]}
        for r in rows
    ]
    lines.append(",\n".join(f"    {json.dumps(e, ensure_ascii=False)}" for e in entries))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write safe_private.json, or with ``--check`` report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the output is stale")
    parser.add_argument("--table", type=Path, default=TABLE, help="the Table E.3.10-1 JSON")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the JSON to write")
    args = parser.parse_args(argv)
    text = render(json.loads(args.table.read_text(encoding="utf-8")))
    return write_or_check(
        text, args.output, check=args.check, command="python scripts/gen_deid_safe_private.py"
    )


if __name__ == "__main__":
    sys.exit(main())
