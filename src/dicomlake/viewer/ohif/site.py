"""OHIF served at ``/ohif/`` over this server's ``/dicomweb``.

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

import html
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

from dicomlake.viewer.ohif.install import PREFIX, cache_dir, find_installed

log = logging.getLogger(__name__)


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
