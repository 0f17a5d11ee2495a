"""Derived tables: ``thumbnails``, ``volumes``, ``patches``."""

from __future__ import annotations

from typing import Annotated

import typer

from dicomlake.cli.options import (
    AnonOption,
    FrameOption,
    LakeOption,
    QuietOption,
    StorageOptionOption,
    WorkersOption,
    fail,
    storage_config,
)
from dicomlake.errors import DicomLakeError


def thumbnails_command(
    lake: LakeOption,
    size: Annotated[
        int, typer.Option("--size", min=16, max=4096, help="Longest side, in pixels.")
    ] = 256,
    frame: Annotated[FrameOption, typer.Option(help="Frames to draw.")] = FrameOption.middle,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Draw thumbnails for instances with pixel data and none yet, or an outdated one."""
    from dicomlake.jobs.thumbnails import build_thumbnails

    storage = storage_config(anon, storage_option)
    try:
        summary = build_thumbnails(
            lake, size=size, frame=frame.value, workers=workers, storage_options=storage
        )
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    if quiet:
        return
    failed = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors.items()))
    typer.echo(
        f"thumbnails: {summary.instances} instances, {summary.ok} drawn, "
        f"{sum(summary.errors.values())} not drawn"
        + (f" ({failed})" if failed else "")
        + f" in {summary.seconds:.1f} s ({summary.thumbnails_per_second:.0f}/s)"
    )


def volumes_command(
    lake: LakeOption,
    where: Annotated[
        str | None,
        typer.Option("--where", help="SQL expression over instances, e.g. \"Modality = 'CT'\"."),
    ] = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Check each series' slice geometry and write the volumes table (no pixels read)."""
    from dicomlake.jobs.volumes import build_volumes

    storage = storage_config(anon, storage_option)
    try:
        summary = build_volumes(lake, where, storage_options=storage)
    except DicomLakeError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s")


def patches_command(
    lake: LakeOption,
    size: Annotated[int, typer.Option("--size", min=1, help="Patch side, in pixels.")] = 256,
    stride: Annotated[
        int | None,
        typer.Option("--stride", min=1, help="Step between patches (default: --size)."),
    ] = None,
    min_tissue: Annotated[
        float,
        typer.Option(
            "--min-tissue", min=0.0, max=1.0, help="Skip patches with less foreground (0..1)."
        ),
    ] = 0.0,
    pixels: Annotated[
        bool, typer.Option("--pixels", help="Store each patch's float32 values in the table.")
    ] = False,
    where: Annotated[
        str | None,
        typer.Option("--where", help="SQL expression over instances, e.g. \"Modality = 'SM'\"."),
    ] = None,
    workers: WorkersOption = None,
    quiet: QuietOption = False,
    anon: AnonOption = False,
    storage_option: StorageOptionOption = None,
) -> None:
    """Tile frames into patches and write the patches table (replacing their old rows)."""
    from dicomlake.jobs.patches import DEFAULT_SQL
    from dicomlake.ml.patches import DicomPatcher

    storage = storage_config(anon, storage_option)
    sql_text = DEFAULT_SQL if where is None else f"{DEFAULT_SQL} WHERE ({where})"
    try:
        patcher = DicomPatcher(size=size, stride=stride, min_tissue=min_tissue, store_pixels=pixels)
        summary = patcher.write(lake, sql_text, workers=workers, storage_options=storage)
    except (DicomLakeError, ValueError) as exc:
        raise fail(str(exc)) from None
    if not quiet:
        typer.echo(f"{summary} in {summary.seconds:.1f} s")
