"""``dicomlake ohif``: install the OHIF web viewer that ``dicomlake serve`` shows at /ohif/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dicomlake.cli.options import QuietOption, fail, interactive

app = typer.Typer(
    name="ohif",
    help="The OHIF viewer at /ohif/ of dicomlake serve: install it, list what is installed.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command("install")
def install_command(
    version: Annotated[
        str | None,
        typer.Option(
            "--version",
            help="Exact version of the npm package @ohif/app (default 3.13.2, the tested "
            "one; with --from-tarball, the tarball's).",
        ),
    ] = None,
    from_tarball: Annotated[
        Path | None,
        typer.Option(
            "--from-tarball",
            exists=True,
            dir_okay=False,
            readable=True,
            help="Install this tarball of @ohif/app (from npm pack) instead of fetching one.",
        ),
    ] = None,
    integrity: Annotated[
        str | None,
        typer.Option(
            "--integrity",
            metavar="sha512-BASE64",
            help="The tarball's expected integrity (npm view @ohif/app@V dist.integrity); "
            "default: ask the registry.",
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Fetch OHIF with npm, check it against the registry's sha512, unpack it in the cache."""
    from dicomlake.errors import OhifInstallError
    from dicomlake.viewer.ohif import install

    def progress(line: str) -> None:
        typer.echo(f"ohif: {line}", err=True)

    try:
        summary = install(
            version,
            tarball=from_tarball,
            integrity=integrity,
            progress=progress if interactive(quiet) else None,
        )
    except OhifInstallError as exc:
        raise fail(str(exc)) from None
    if not quiet:
        typer.echo(str(summary))


@app.command("list")
def list_command() -> None:
    """Show the installed versions, newest (the one dicomlake serve shows) first."""
    from dicomlake.viewer.ohif import cache_dir, installed_versions

    root = cache_dir()
    versions = installed_versions(root)
    if not versions:
        typer.echo(f"no OHIF installed in {root}; run: dicomlake ohif install", err=True)
        raise typer.Exit(1)
    for version in versions:
        typer.echo(f"{version}\t{root / version}")
