"""Write src/dicomlake/lake/dicom_keywords.txt: every DICOM keyword and its tag.

SQL over a lake resolves keywords (``tag(meta, 'PatientAge')``) with this table.
Reading it from a small text file instead of pydicom's data dictionary keeps pydicom
(and the pixel handlers it loads) out of ``dicomlake sql``'s start-up. The file is made
from the pinned pydicom's dictionary; a test fails when the two differ.

    python scripts/gen_dicom_keywords.py           # rewrite the file
    python scripts/gen_dicom_keywords.py --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is no package
from generated import write_or_check

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "src" / "dicomlake" / "lake" / "dicom_keywords.txt"


def render() -> str:
    """One ``KEYWORD<TAB>GGGGEEEE`` line per keyword of pydicom's dictionary, sorted."""
    import pydicom
    from pydicom.datadict import keyword_dict

    lines = [f"# DICOM keywords and tags, from pydicom {pydicom.__version__}'s dictionary"]
    lines += [f"{keyword}\t{tag:08X}" for keyword, tag in sorted(keyword_dict.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the file, or with ``--check`` report whether it is stale."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the file to write")
    args = parser.parse_args(argv)
    command = "python scripts/gen_dicom_keywords.py"
    return write_or_check(render(), args.output, check=args.check, command=command)


if __name__ == "__main__":
    sys.exit(main())
