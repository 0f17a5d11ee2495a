"""``dicomlake export-nifti``: each series volume of the lake as NIfTI, as dcm2niix writes it.

The summary and the progress line hold counts, UIDs and reasons only, never a tag
value of a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from dicomlake.cli.options import (
    AnonOption,
    LakeOption,
    QuietOption,
    StorageOptionOption,
    fail,
    storage_config,
)
from dicomlake.cli.render import live_progress
from dicomlake.errors import DicomLakeError

if TYPE_CHECKING:
    from dicomlake.jobs.nifti import NiftiSummary


def _progress_line(summary: NiftiSummary) -> str:
    """An export's live line: series handled, written, skipped."""
    return (
        f"{summary.done}/{summary.series} series · {len(summary.written)} written · "
        f"{len(summary.skipped)} skipped"
    )


def export_nifti_command(
    lake: LakeOption,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Local folder for <SeriesInstanceUID>.nii.gz and .json (made if missing; "
            "files of the same names are replaced).",
        ),
    ],
    where: Annotated[
        str | None,
        typer.Option("--where", help="SQL expression over instances, e.g. \"Modality = 'CT'\"."),
    ] = None,
    patient_tags: Annotated[
        bool,
        typer.Option(
            "--patient-tags",
            help="Also write patient name, ID, birth date, sex, age, study date and time, "
            "accession number and study description to the sidecars (left out by default).",
        ),
    ] = False,
    segmentations: Annotated[
        bool,
        typer.Option(
            "--segmentations/--no-segmentations",
            help="Also write each SEG and RT structure set of a written series, on its "
            "grid, as <SeriesInstanceUID>_seg-<SOPInstanceUID>.nii.gz and .json.",
        ),
    ] = True,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Write each series volume as NIfTI (dcm2niix's layout) with a JSON sidecar.

    Segmentations of the written series follow, on the same grid. Series that are not
    one regular volume are listed with the reason and skipped.
    Exit code 1 when nothing is selected, 2 for wrong options or a failed query.
    """
    from dicomlake.jobs.nifti import export_nifti

    storage = storage_config(anon, storage_option)
    try:
        with live_progress("checking series geometry…", _progress_line, quiet) as progress:
            summary = export_nifti(
                lake,
                out,
                where,
                patient_tags=patient_tags,
                segmentations=segmentations,
                storage_options=storage,
                progress=progress,
            )
    except (DicomLakeError, ValueError, ImportError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write to {out!r}: {exc.strerror or exc}") from None
    if summary.series == 0:
        picked = "matches --where" if where else "is in the lake"
        raise fail(
            f"nothing to export: no ok image instance (with pixel data, not a SEG) {picked}", 1
        )
    if quiet:
        return
    typer.echo(f"{summary} in {summary.seconds:.1f} s -> {out}")
    for skipped in summary.skipped:
        typer.echo(f"  skipped {skipped.SeriesInstanceUID}: {skipped.reason}: {skipped.message}")
    for labels in summary.labels_skipped:
        on = f" on {labels.SeriesInstanceUID}" if labels.SeriesInstanceUID else ""
        typer.echo(
            f"  skipped segmentation {labels.SOPInstanceUID}{on}: {labels.reason}: {labels.message}"
        )
