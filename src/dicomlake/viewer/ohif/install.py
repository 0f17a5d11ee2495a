"""Installing OHIF: ``dicomlake ohif install`` and the cache it fills.

OHIF is not shipped in this package (a 200 MB JavaScript build with its own release
cycle): the prebuilt app, the npm package ``@ohif/app``, is fetched with ``npm pack``,
checked against the registry's sha512 and its ``dist/`` unpacked into the user's cache
(:func:`cache_dir`), one folder per version, refusing anything unsafe in the tarball.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicomlake.errors import OhifInstallError

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

#: The npm package of OHIF's prebuilt web app.
PACKAGE = "@ohif/app"
#: The version ``dicomlake ohif install`` fetches by default (the one tested).
DEFAULT_VERSION = "3.13.2"
#: Where the viewer serves OHIF.
PREFIX = "/ohif/"

_VERSION = re.compile(r"[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6}(?:-[0-9A-Za-z.]{1,40})?")
_INTEGRITY_ALGORITHMS = ("sha512", "sha384", "sha256")  # strongest first; no sha1
_MAX_FILES = 20_000
_MAX_BYTES = 2 << 30  # the 3.13 dist unpacks to 213 MB
_NPM_VIEW_TIMEOUT = 120.0
_NPM_PACK_TIMEOUT = 1800.0


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    """Where installed OHIF versions live (one folder each, named by version).

    ``$DICOMLAKE_CACHE/ohif``, else ``$XDG_CACHE_HOME/dicomlake/ohif``, else
    ``~/.cache/dicomlake/ohif``.
    """
    own = os.environ.get("DICOMLAKE_CACHE")
    if own:
        return Path(own).expanduser() / "ohif"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dicomlake" / "ohif"


def _version_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """Semver order: numbers, then a release after its pre-releases."""
    core, _, pre = version.partition("-")
    return tuple(int(part) for part in core.split(".")), 0 if pre else 1, pre


def installed_versions(root: Path | None = None) -> list[str]:
    """The versions installed in ``root`` (default :func:`cache_dir`), newest first."""
    root = cache_dir() if root is None else root
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    found = [
        entry.name
        for entry in entries
        if _VERSION.fullmatch(entry.name) and (entry / "index.html").is_file()
    ]
    return sorted(found, key=_version_key, reverse=True)


def find_installed(root: Path | None = None) -> Path | None:
    """The newest installed OHIF (its dist folder), or None when none is."""
    root = cache_dir() if root is None else root
    versions = installed_versions(root)
    return root / versions[0] if versions else None


# --------------------------------------------------------------------------- install


@dataclass(frozen=True)
class InstallSummary:
    """What :func:`install` did."""

    version: str
    path: Path
    files: int
    bytes: int
    integrity: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"OHIF {self.version} installed in {self.path} ({self.files} files, "
            f"{self.bytes / 1e6:.0f} MB) in {self.seconds:.1f} s"
        )


def check_version(version: str) -> str:
    """``version`` if it is an exact release like 3.13.2 (it names a folder)."""
    if not _VERSION.fullmatch(version):
        raise OhifInstallError(
            f"{version!r} is not an exact version of {PACKAGE} (like {DEFAULT_VERSION})"
        )
    return version


def check_integrity(tarball: Path, integrity: str) -> None:
    """Refuse ``tarball`` unless its digest matches ``integrity``.

    ``integrity`` is npm's SRI form, ``sha512-<base64>`` (several may be given,
    separated by spaces; the strongest is checked).
    """
    wanted: dict[str, str] = {}
    for item in integrity.split():
        name, _, value = item.partition("-")
        if name in _INTEGRITY_ALGORITHMS and value:
            wanted.setdefault(name, value.split("?", 1)[0])
    chosen = next((name for name in _INTEGRITY_ALGORITHMS if name in wanted), None)
    if chosen is None:
        raise OhifInstallError(
            f"cannot check the tarball against integrity {integrity!r}: "
            "expected sha512-<base64> (or sha384, sha256)"
        )
    hasher = hashlib.new(chosen)
    try:
        with tarball.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                hasher.update(chunk)
    except OSError as exc:
        raise OhifInstallError(f"cannot read {tarball}: {exc}") from exc
    got = base64.b64encode(hasher.digest()).decode("ascii")
    if not hmac.compare_digest(got, wanted[chosen]):
        raise OhifInstallError(
            f"integrity mismatch: {tarball} has {chosen}-{got} but "
            f"{chosen}-{wanted[chosen]} was expected; refusing to install it "
            "(a damaged or tampered download)"
        )


def _npm(args: list[str], timeout: float, cwd: Path | None = None) -> str:
    """Run npm quietly; its stdout, or an OhifInstallError that says what failed."""
    npm = shutil.which("npm")
    if npm is None:
        raise OhifInstallError(
            "npm is not installed: OHIF is fetched with npm (Node.js 20 or newer); "
            "or pass --from-tarball with a tarball of "
            f"{PACKAGE} and --integrity"
        )
    env = {
        **os.environ,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
        "npm_config_loglevel": "error",
    }
    try:
        done = subprocess.run(
            [npm, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OhifInstallError(
            f"npm {args[0]} did not finish in {timeout:.0f} s (is the registry reachable?)"
        ) from None
    except OSError as exc:
        raise OhifInstallError(f"cannot run npm: {exc}") from exc
    if done.returncode != 0:
        raise OhifInstallError(f"npm {args[0]} {args[1]} failed: {_npm_error(done)}")
    return done.stdout


def _npm_error(done: subprocess.CompletedProcess[str]) -> str:
    """What npm said went wrong, in one line: its --json error, else its stderr."""
    try:
        error = json.loads(done.stdout).get("error", {})
        said = " ".join(str(error[key]) for key in ("code", "summary") if error.get(key))
    except (ValueError, AttributeError):
        said = ""
    if said:
        return said
    lines = []
    for line in done.stderr.splitlines():
        text = re.sub(r"^npm (?:error|ERR!)( [0-9]{3}\b)?", "", line.strip()).strip()
        if text and not text.startswith("A complete log"):
            lines.append(text)
    return "; ".join(lines[:3]) or f"exit code {done.returncode}"


def registry_integrity(version: str) -> str:
    """The registry's integrity of ``@ohif/app@version`` (``npm view``)."""
    out = _npm(
        ["view", f"{PACKAGE}@{check_version(version)}", "dist.integrity", "--json"],
        _NPM_VIEW_TIMEOUT,
    )
    try:
        value = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        value = None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str) or not value:
        raise OhifInstallError(f"the registry has no {PACKAGE}@{version}")
    return value


def npm_pack(version: str, dest: Path) -> Path:
    """Download ``@ohif/app@version``'s tarball into ``dest`` (``npm pack``)."""
    spec = f"{PACKAGE}@{check_version(version)}"
    before = set(dest.glob("*.tgz"))
    _npm(
        ["pack", spec, "--pack-destination", str(dest), "--ignore-scripts", "--json"],
        _NPM_PACK_TIMEOUT,
        cwd=dest,
    )
    made = sorted(set(dest.glob("*.tgz")) - before)
    if len(made) != 1:
        raise OhifInstallError(f"npm pack {spec} left no tarball in {dest}")
    return made[0]


def _member_path(member: tarfile.TarInfo) -> str:
    """The member's name, checked: relative, no '..', a plain file or folder."""
    name = member.name
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or ".." in parts
        or re.match(r"[A-Za-z]:", name)
    ):
        raise OhifInstallError(f"the tarball holds an unsafe path {name!r}; refusing it")
    if not (member.isfile() or member.isdir()):
        kind = "a link" if member.issym() or member.islnk() else "a special file"
        raise OhifInstallError(f"the tarball member {name!r} is {kind}; refusing it")
    return "/".join(part for part in parts if part not in ("", "."))


def _package_json(tar: tarfile.TarFile) -> dict[str, object]:
    try:
        handle = tar.extractfile("package/package.json")
        data = json.loads(handle.read(1 << 20)) if handle else None
    except (KeyError, ValueError, OSError):
        data = None
    if not isinstance(data, dict):
        raise OhifInstallError(f"the tarball has no package/package.json: not {PACKAGE}")
    return data


def tarball_version(tarball: Path) -> str:
    """The version in the package.json of an npm tarball of ``@ohif/app``."""
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            meta = _package_json(tar)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise OhifInstallError(f"{tarball} is not a readable npm tarball: {exc}") from exc
    if meta.get("name") != PACKAGE:
        raise OhifInstallError(f"{tarball} is {meta.get('name')!r}, not {PACKAGE}")
    return check_version(str(meta.get("version")))


def unpack(tarball: Path, version: str, root: Path) -> tuple[int, int]:
    """Unpack the tarball's ``package/dist/`` into ``root/version``; (files, bytes).

    What was there is replaced only once all of it is written, so a server never sees
    half an app.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    files = size = 0
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            meta = _package_json(tar)
            if meta.get("name") != PACKAGE or meta.get("version") != version:
                raise OhifInstallError(
                    f"the tarball is {meta.get('name')}@{meta.get('version')}, "
                    f"not {PACKAGE}@{version}"
                )
            for member in tar:
                path = _member_path(member)
                if not path.startswith("package/dist/"):
                    continue
                relative = path.removeprefix("package/dist/")
                target = staging / relative
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                files += 1
                size += member.size
                if files > _MAX_FILES or size > _MAX_BYTES:
                    raise OhifInstallError(
                        f"the tarball unpacks to more than {_MAX_FILES} files or "
                        f"{_MAX_BYTES >> 30} GiB; refusing it"
                    )
                source = tar.extractfile(member)
                if source is None:
                    raise OhifInstallError(f"cannot read {member.name!r} in the tarball")
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, target.open("xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                target.chmod(0o644)
        if not (staging / "index.html").is_file():
            raise OhifInstallError(f"the tarball has no package/dist/index.html: not {PACKAGE}")
        final = root / version
        old = root / f".{version}-old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        try:
            staging.rename(final)
        except OSError:
            if old.exists():
                old.rename(final)  # the version that was there stays
            raise
        shutil.rmtree(old, ignore_errors=True)
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise OhifInstallError(f"cannot unpack {tarball} into {root}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files, size


def install(
    version: str | None = None,
    *,
    tarball: Path | None = None,
    integrity: str | None = None,
    root: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> InstallSummary:
    """Fetch (or take ``tarball``), check and unpack ``@ohif/app`` into the cache.

    Args:
        version: Exact version; default the tarball's, else :data:`DEFAULT_VERSION`.
        tarball: A tarball already downloaded (``npm pack``) instead of fetching one.
        integrity: The expected ``sha512-<base64>``; default the registry's (npm view).
        root: Where versions are installed; default :func:`cache_dir`.
        progress: Called with a short line before each step.

    Returns:
        What was installed, and where.

    Raises:
        OhifInstallError: npm is missing or failed, the tarball does not match its
            integrity, is not ``@ohif/app`` or holds unsafe paths. Nothing is installed.
    """
    started = time.monotonic()
    say = progress or (lambda line: None)
    root = cache_dir() if root is None else root
    checked = False
    if tarball is not None and integrity is not None:
        # before reading a byte of it: a tampered tarball is refused as such
        say(f"checking {tarball.name} against its integrity")
        check_integrity(tarball, integrity)
        checked = True
    if tarball is not None and version is None:
        version = tarball_version(tarball)
    version = check_version(version or DEFAULT_VERSION)
    if integrity is None:
        say(f"asking the registry for the integrity of {PACKAGE}@{version}")
        integrity = registry_integrity(version)
    with tempfile.TemporaryDirectory(prefix="dicomlake-ohif-") as work:
        if tarball is None:
            say(f"fetching {PACKAGE}@{version} (npm pack)")
            tarball = npm_pack(version, Path(work))
        if not checked:
            say(f"checking {tarball.name} against the registry's integrity")
            check_integrity(tarball, integrity)
        say(f"unpacking into {root / version}")
        files, size = unpack(tarball, version, root)
    seconds = time.monotonic() - started
    return InstallSummary(version, root / version, files, size, integrity, seconds)
