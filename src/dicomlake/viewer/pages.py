"""HTML pages, rendered from the templates in ``templates/`` with every value escaped.

Templates are plain :class:`string.Template` files (``$name`` placeholders), so the
viewer needs no template engine. Each value goes through :func:`html.escape` before it
is substituted; the gallery's own rows are drawn in the browser with ``textContent``.
"""

from __future__ import annotations

import html
import posixpath
import urllib.parse
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any

from dicomlake.viewer.queries import thumbnail_url


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute: ``<>&"'`` escaped, None as ''."""
    return html.escape("" if value is None else str(value), quote=True)


@lru_cache(maxsize=8)
def _template(name: str) -> Template:
    text = resources.files("dicomlake.viewer").joinpath("templates", name).read_text("utf-8")
    return Template(text)


def render(name: str, **values: str) -> str:
    """Fill template ``name``; values must already be escaped HTML."""
    return _template(name).substitute(values)


def file_name(path: str) -> str:
    """The last part of a path or ``zip://MEMBER::URI`` (the member's name)."""
    inner = path.split("::", 1)[0] if path.startswith("zip://") else path
    return posixpath.basename(inner.rstrip("/")) or path


def gallery_page(lake: str) -> str:
    """The home page: filter bar and an empty grid that ``gallery.js`` fills."""
    return render("gallery.html", lake=esc(lake), lake_name=esc(file_name(lake) or lake))


def message_page(title: str, text: str) -> str:
    """A page that only says something (not found, bad request)."""
    return render("message.html", title=esc(title), text=esc(text))


def _fact(label: str, value: Any) -> str:
    if value is None or value == "":
        return ""
    return f"<div><dt>{esc(label)}</dt><dd>{esc(value)}</dd></div>"


def _instance_item(row: dict[str, Any], token: str) -> str:
    rid = str(row["row_id"])
    frames: list[int] = row["frames"]
    number = row.get("InstanceNumber")
    title = f"Instance {number}" if number is not None else "Instance"
    if frames:
        start = frames[len(frames) // 2] if len(frames) > 1 else frames[0]
        image = (
            f'<img class="frame" src="{esc(thumbnail_url(int(rid), start, token))}" '
            f'alt="{esc(title)}" loading="lazy">'
        )
    else:
        image = '<div class="placeholder">no image</div>'
    slider = ""
    if len(frames) > 1:
        index = len(frames) // 2
        slider = (
            '<div class="frames">'
            f'<input type="range" min="0" max="{len(frames) - 1}" value="{index}" step="1" '
            f'aria-label="Frame of {esc(title)}">'
            f"<output>frame {frames[index] + 1} / {len(frames)}</output></div>"
        )
    dims = ""
    if row.get("Rows") and row.get("Columns"):
        dims = f"{row['Columns']} × {row['Rows']}"
    n_frames = row.get("NumberOfFrames")
    facts = "".join(
        [
            _fact("Size", dims),
            _fact("Frames", n_frames if n_frames and n_frames > 1 else None),
            _fact("Photometric", row.get("PhotometricInterpretation")),
            _fact("Position", _short_position(row.get("ImagePositionPatient"))),
            _fact("File size", f"{row['size']:,} bytes" if row.get("size") is not None else None),
            _fact("SOP Instance UID", row.get("SOPInstanceUID")),
        ]
    )
    frame_list = ",".join(str(f) for f in frames)
    shown_path = row.get("relative_path") or row["path"]
    return (
        f'<li class="instance" id="i{esc(rid)}" data-row-id="{esc(rid)}" '
        f'data-frames="{esc(frame_list)}" data-token="{esc(token)}">'
        f'<figure class="viewer">{image}{slider}</figure>'
        '<div class="info">'
        f"<h2>{esc(title)}</h2>"
        f'<p class="file" title="{esc(row["path"])}">{esc(shown_path)}</p>'
        f'<dl class="facts">{facts}</dl>'
        f'<p><a class="button download" href="{esc(row["download"])}" download>'
        "Download original</a></p>"
        f'<details class="tags" data-row-id="{esc(rid)}"><summary>DICOM tags</summary>'
        '<div class="tag-table">Loading…</div></details>'
        "</div></li>"
    )


def _short_position(ipp: Any) -> str | None:
    if not ipp:
        return None
    return ", ".join("?" if v is None else f"{v:g}" for v in ipp)


def series_page(detail: dict[str, Any], token: str) -> str:
    """A series: its facts, then every instance with its frames, tags and download link."""
    head = detail["series"]
    title = head.get("SeriesDescription") or f"Series {head.get('SeriesNumber') or ''}".strip()
    facts = "".join(
        [
            _fact("Modality", head.get("Modality")),
            _fact("Body part", head.get("BodyPartExamined")),
            _fact("Study", head.get("StudyDescription")),
            _fact("Study date", head.get("study_date")),
            _fact("Series number", head.get("SeriesNumber")),
            _fact("Instances", head.get("n_instances")),
            _fact("Frames", head.get("n_frames")),
            _fact("Manufacturer", head.get("Manufacturer")),
            _fact("Model", head.get("ManufacturerModelName")),
            _fact("Series UID", head.get("SeriesInstanceUID")),
        ]
    )
    items = "\n".join(_instance_item(row, token) for row in detail["instances"])
    study = head.get("StudyInstanceUID")
    ohif = (
        f'<a class="button ohif" href="{esc(ohif_url(study))}" '
        f'title="The whole study in the OHIF viewer">Open in OHIF</a>'
        if study
        else ""
    )
    return render(
        "series.html",
        title=esc(title),
        facts=facts,
        ohif=ohif,
        instances=items,
        count=esc(len(detail["instances"])),
    )


def ohif_url(study_uid: str) -> str:
    """Where OHIF (served at /ohif/ over /dicomweb) opens a study."""
    return f"/ohif/viewer?StudyInstanceUIDs={urllib.parse.quote(study_uid, safe='')}"
