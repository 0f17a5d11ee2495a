"""OHIF, the web viewer of the DICOM world, served at ``/ohif/`` over ``/dicomweb``.

OHIF is not shipped in this package (a 200 MB JavaScript build with its own release
cycle): ``dicomlake ohif install`` fetches the prebuilt app, the npm package
``@ohif/app``, checks the tarball against the registry's sha512 and unpacks its
``dist/`` into the user's cache (:func:`cache_dir`), one folder per version.
:func:`routes` serves the newest installed version (or the folder ``ohif_dir``).

The prebuilt app assumes it is served from the root of a site, so four things are
written for ``/ohif/`` as they are served, and the files in the cache stay as npm
shipped them:

- ``index.html``: asset URLs and ``window.PUBLIC_URL`` get the ``/ohif/`` prefix, and
  its inline scripts move to ``/ohif/_dicomlake/inline-N.js``, so no page needs an
  inline script (the Content-Security-Policy keeps ``script-src 'self'``);
- webpack's runtime in the bundles (``__webpack_require__.p = "/"``) loads chunks,
  workers and wasm codecs from ``/ohif/``;
- style sheets' ``url(/...)`` (the fonts) point into ``/ohif/``;
- ``app-config.js`` is ours (:func:`app_config`): one DICOMweb data source, this
  server's ``/dicomweb``, no dialogs, tours or external URLs.

OHIF's pages get their own CSP (:data:`OHIF_CSP`): what the app needs (wasm codecs,
workers from blob: URLs, inline styles) and nothing from another origin; scripts
loaded as workers may also evaluate strings (:data:`OHIF_WORKER_CSP`), which the
image decoder's codecs need. Without an installed app every ``/ohif/`` URL answers
404 with a page that says how to install.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dicomlake.errors import OhifInstallError

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

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


# --------------------------------------------------------------------------- serving

#: The CSP of every /ohif response: OHIF compiles wasm codecs, starts workers from
#: its bundles and from blob: URLs, decodes images into blob:/data: URLs and styles
#: elements inline; everything comes from this origin.
OHIF_CSP = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "connect-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; "
    "base-uri 'self'; frame-ancestors 'none'; form-action 'self'"
)
#: The CSP of a script loaded as a worker (``Sec-Fetch-Dest: worker``): the image
#: decoder's wasm codecs (OpenJPEG, CharLS, libjpeg-turbo) are emscripten builds
#: whose embind glue makes functions with ``new Function``, so the worker, which has
#: no DOM, may evaluate strings; OHIF's pages may not.
OHIF_WORKER_CSP = OHIF_CSP.replace(
    "script-src 'self' 'wasm-unsafe-eval'", "script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'"
)
OHIF_HEADERS = {
    "Content-Security-Policy": OHIF_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # cross-origin isolation: SharedArrayBuffer for cornerstone's volume loading
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}

#: Media types by extension (not the system's mime.types: with nosniff a wrong one
#: stops a script, a wasm module or a style sheet).
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".onnx": "application/octet-stream",
}

_INLINE = "_dicomlake/inline-"
_WEBPACK_ROOT = b'__webpack_require__.p = "/";'
_WEBPACK_OHIF = b'__webpack_require__.p = "' + PREFIX.encode() + b'";'
_CSS_ROOT_URL = re.compile(rb"""url\((["']?)/(?!/|ohif/)""")
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16,}\.(js|css|wasm|woff2?)$")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_ROOT_URL = re.compile(r"""(\s(?:href|src|content)=["'])/(?!/|ohif/)""")


def app_config() -> str:
    """OHIF's ``window.config``: one data source, this server's ``/dicomweb``.

    The address is the page's own origin, so it works on whatever host and port.
    """
    return """\
/* OHIF's configuration, written by dicomlake: this server's DICOMweb service. */
(function () {
  var root = window.location.origin + '/dicomweb';
  window.config = {
    name: 'dicomlake',
    routerBasename: '/ohif',
    extensions: [],
    modes: [],
    // no onboarding tours over the viewport
    customizationService: [{ 'ohif.tours': { $set: [] } }],
    showStudyList: true,
    maxNumberOfWebWorkers: 3,
    showWarningMessageForCrossOrigin: false,
    showCPUFallbackMessage: true,
    showLoadingIndicator: true,
    strictZSpacingForVolumeViewport: true,
    investigationalUseDialog: { option: 'never' },
    maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
    showErrorDetails: 'always',
    defaultDataSourceName: 'dicomweb',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'dicomweb',
        configuration: {
          friendlyName: 'dicomlake',
          name: 'dicomlake',
          qidoRoot: root,
          wadoRoot: root,
          wadoUriRoot: root,
          qidoSupportsIncludeField: false,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: true,
          supportsWildcard: true,
          omitQuotationForMultipartRequest: true,
          bulkDataURI: { enabled: true, relativeResolution: 'studies' },
        },
      },
    ],
  };
})();
"""


def rewrite_index(text: str) -> tuple[str, list[str]]:
    """OHIF's ``index.html`` for ``/ohif/``; (the page, the bodies of its scripts).

    Root URLs get the prefix, ``PUBLIC_URL`` is set to it, and each inline script
    moves out to a file of its own (no inline script under the CSP).
    """
    scripts: list[str] = []

    def move(match: re.Match[str]) -> str:
        body = re.sub(r"""(window\.PUBLIC_URL\s*=\s*)(["'])/\2""", r"\1\2/ohif/\2", match[1])
        scripts.append(body)
        return f'<script src="{PREFIX}{_INLINE}{len(scripts) - 1}.js"></script>'

    text = _INLINE_SCRIPT.sub(move, text)
    return _ROOT_URL.sub(r"\1/ohif/", text), scripts


def _media_type(path: str) -> str:
    return MEDIA_TYPES.get(os.path.splitext(path)[1].lower(), "application/octet-stream")


def _safe_relative(path: str) -> str | None:
    """``path`` as a relative path inside the app, or None (dot files, '..')."""
    parts = path.split("/")
    if "\\" in path or "\x00" in path or any(p.startswith(".") for p in parts if p):
        return None
    return "/".join(p for p in parts if p)


class _Site:
    """The files of one installed OHIF, found on first use, and their rewrites."""

    def __init__(self, ohif_dir: str | None) -> None:
        self.given = Path(ohif_dir).expanduser() if ohif_dir else None
        self.lock = threading.Lock()
        self.dist: Path | None = None
        self.index: tuple[float, bytes, list[bytes]] | None = None
        self.rewritten: dict[Path, tuple[float, bytes | None]] = {}

    def find(self) -> Path | None:
        """The app's folder: looked for until found, again if it goes away."""
        if self.dist is not None and not (self.dist / "index.html").is_file():
            self.dist = None  # removed (or being replaced) since
        if self.dist is None:
            if self.given is not None:
                found = self.given if (self.given / "index.html").is_file() else None
            else:
                found = find_installed()
            if found is not None:
                log.info("serving OHIF from %s", found)
            self.dist = found
        return self.dist

    @property
    def where(self) -> Path:
        """Where the app is looked for."""
        return self.given if self.given is not None else cache_dir()

    def index_page(self, dist: Path) -> tuple[bytes, list[bytes]]:
        path = dist / "index.html"
        mtime = path.stat().st_mtime
        with self.lock:
            if self.index is None or self.index[0] != mtime:
                page, scripts = rewrite_index(path.read_text("utf-8"))
                self.index = (mtime, page.encode(), [s.encode() for s in scripts])
            return self.index[1], self.index[2]

    def rewritten_file(self, path: Path) -> bytes | None:
        """A script or style sheet with its root URLs moved to /ohif/; None if it has none.

        Scripts: webpack's public path (chunks, workers, wasm, images); style sheets:
        ``url(/...)`` (fonts).
        """
        mtime = path.stat().st_mtime
        with self.lock:
            known = self.rewritten.get(path)
        if known is not None and known[0] == mtime:
            return known[1]
        data = path.read_bytes()
        fixed: bytes | None = None
        if path.suffix == ".css":
            if _CSS_ROOT_URL.search(data):
                fixed = _CSS_ROOT_URL.sub(rb"url(\1/ohif/", data)
        elif _WEBPACK_ROOT in data:
            fixed = data.replace(_WEBPACK_ROOT, _WEBPACK_OHIF)
        with self.lock:
            self.rewritten[path] = (mtime, fixed)
        return fixed


def not_installed_page(where: Path) -> str:
    """The page every /ohif/ URL shows while no OHIF is installed in ``where``."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>OHIF is not installed · dicomlake</title>
<link rel="stylesheet" href="/static/viewer.css">
</head>
<body>
<header class="top"><a class="brand" href="/">dicomlake</a></header>
<main class="message-page">
  <h1>OHIF is not installed</h1>
  <p>The OHIF viewer is fetched once into this computer's cache (about 50 MB, with
  npm). Run</p>
  <pre><code>dicomlake ohif install</code></pre>
  <p>then reload this page: the server looks for it again.
  It looked in <code>{html.escape(str(where))}</code>.</p>
  <p><a href="/">Back to all series</a></p>
</main>
</body>
</html>
"""


def routes(ohif_dir: str | None = None) -> list[BaseRoute]:
    """The routes under ``/ohif``: the app's files, its routes, our app-config.js.

    The app's own routes (``/ohif/viewer?...``) answer its index.html. Without an
    installed app every URL answers 404 with a page that says how to install.

    ``ohif_dir`` is an unpacked OHIF ``dist`` folder to serve; None serves the newest
    version in :func:`cache_dir` (looked for until one is found).
    """
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse
    from starlette.responses import Response as PlainResponse
    from starlette.routing import Route

    site = _Site(ohif_dir)
    no_cache = {**OHIF_HEADERS, "Cache-Control": "no-cache"}

    def page(data: bytes) -> Response:
        return PlainResponse(data, media_type=MEDIA_TYPES[".html"], headers=no_cache)

    def serve(request: Request) -> Response:
        dist = site.find()
        if dist is None:
            from dicomlake.viewer.app import SECURITY_HEADERS

            headers = {**SECURITY_HEADERS, "Cache-Control": "no-store"}
            return HTMLResponse(not_installed_page(site.where), status_code=404, headers=headers)
        wanted = _safe_relative(request.path_params["path"])
        if wanted is None:
            return PlainTextResponse("not found", status_code=404, headers=OHIF_HEADERS)
        if wanted in ("", "index.html"):
            return page(site.index_page(dist)[0])
        if wanted == "app-config.js":
            return PlainResponse(app_config(), media_type=MEDIA_TYPES[".js"], headers=no_cache)
        if wanted.startswith(_INLINE):
            scripts = site.index_page(dist)[1]
            number = wanted.removeprefix(_INLINE).removesuffix(".js")
            if number.isdigit() and int(number) < len(scripts):
                data = scripts[int(number)]
                return PlainResponse(data, media_type=MEDIA_TYPES[".js"], headers=no_cache)
        path = dist / wanted
        if path.is_file():
            cache = "public, max-age=31536000, immutable" if _HASHED.search(wanted) else "no-cache"
            headers = {**OHIF_HEADERS, "Cache-Control": cache}
            if wanted.endswith((".js", ".mjs")):
                headers["Vary"] = "Sec-Fetch-Dest"  # the same bundle, as a worker or not
                if request.headers.get("sec-fetch-dest") in ("worker", "sharedworker"):
                    headers["Content-Security-Policy"] = OHIF_WORKER_CSP
            if wanted.endswith((".js", ".mjs", ".css")):
                fixed = site.rewritten_file(path)
                if fixed is not None:
                    return PlainResponse(fixed, media_type=_media_type(wanted), headers=headers)
            return FileResponse(path, media_type=_media_type(wanted), headers=headers)
        if "." in wanted.rsplit("/", 1)[-1]:  # a file the app does not have
            return PlainTextResponse("not found", status_code=404, headers=OHIF_HEADERS)
        return page(site.index_page(dist)[0])  # a route of the app: /ohif/viewer, ...

    return [Route("/{path:path}", serve)]
