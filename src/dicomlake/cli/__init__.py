"""The ``dicomlake`` command line: a thin layer over the Python API.

Each command parses its options, calls the public API, and turns a
:class:`~dicomlake.errors.DicomLakeError` into one line on stderr and exit code 2.
Commands live in one module per group (below, in the order ``--help`` lists them);
how results look is :mod:`dicomlake.cli.render`.
"""

from __future__ import annotations

from dicomlake.cli import (
    admin,
    apply,
    deid,
    derive,
    export,
    ingest,
    labels,
    net,
    ohif,
    options,
    query,
)
from dicomlake.cli.options import app

app.command()(ingest.ingest)
app.command("thumbnails")(derive.thumbnails_command)
app.command("volumes")(derive.volumes_command)
app.command("patches")(derive.patches_command)
app.command("labels")(labels.labels_command)
app.command("apply")(apply.apply_command)
app.command("export-nifti")(export.export_nifti_command)
app.command()(query.sql)
app.command()(query.info)
app.command("optimize")(admin.optimize_command)
app.command()(admin.demo)
app.command()(admin.serve)
app.command()(net.receive)
app.command()(net.pull)
app.add_typer(ohif.app)
app.add_typer(deid.app)

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the ``dicomlake`` script."""
    options.own_process = True
    app()
