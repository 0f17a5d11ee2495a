"""OHIF at /ohif/: ``dicomlake ohif install`` (integrity, safe unpacking, clear errors),
what /ohif/ serves (index.html, app-config.js, rewritten bundles, CSP), and the real
app in Chromium over our DICOMweb service: the study list, a CT on screen, a
multi-frame MR scrolled with the mouse wheel.

The tests that need the real app find it in the cache (``dicomlake ohif install``, run
by .ci/run) or skip; the install test uses the tarball at /tmp/ohifpack when there is
one, else runs ``npm pack`` for real.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from dicomlake.cli import app as cli_app
from dicomlake.sample import sample_file
from dicomlake.viewer import ohif
from helpers.browser import chromium
from helpers.lakes import build_lake
from helpers.servers import LiveServer

#: A tarball fetched once with ``npm pack @ohif/app@3.13.2``, and the registry's integrity.
REAL_TARBALL = Path("/tmp/ohifpack/ohif-app-3.13.2.tgz")
REAL_INTEGRITY = (
    "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87B"
    "KxFfpq+jd5xXZB9E8EA=="
)
NOT_INSTALLED = "OHIF not installed: run dicomlake ohif install"

CT_STUDY = "1.2.826.0.1.3680043.8.498.7001"
MR_STUDY = "1.2.826.0.1.3680043.8.498.7002"
US_STUDY = "1.2.826.0.1.3680043.8.498.7003"
CT_DESCRIPTION = "Lake CT study"
MR_DESCRIPTION = "Lake cine MR"
US_DESCRIPTION = "Lake JPEG 2000 US"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"

#: OHIF's index.html in miniature: inline scripts, root URLs, webpack's runtime.
FAKE_INDEX = (
    '<!doctype html><html><head><meta name="msapplication-TileImage" '
    'content="/assets/tile.png"><script>console.time("x"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><script src="/app-config.js"></script>'
    "<script>function browserImportFunction(n){return import(n)}"
    'window.PUBLIC_URL="/"</script><script defer src="/app.bundle.0123456789abcdef.js">'
    '</script><link href="/app.bundle.css" rel="stylesheet"></head>'
    '<body><div id="root"></div></body></html>'
)
FAKE_FILES = {
    "index.html": FAKE_INDEX.encode(),
    "app-config.js": b"window.config = { dataSources: ['https://example.org/dicomweb'] };",
    "app.bundle.0123456789abcdef.js": b'(() => {\n__webpack_require__.p = "/";\n})();\n',
    "app.bundle.css": b"@font-face{src:url(/a34f9d1faa5f3315.woff2) format('woff2')}",
    "a34f9d1faa5f3315.woff2": b"wOF2",
    "0ddf166f7a343eda.wasm": b"\x00asm\x01\x00\x00\x00",
    "manifest.json": b"{}",
    "ohif-logo.svg": b"<svg/>",
    "assets/tile.png": b"\x89PNG",
}


# --------------------------------------------------------------------------- helpers


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def _add(tar: tarfile.TarFile, path: str, data: bytes, **attrs: Any) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def make_tarball(
    path: Path,
    files: dict[str, bytes] = FAKE_FILES,
    *,
    name: str = "@ohif/app",
    version: str = "3.13.2",
    extra: Callable[[tarfile.TarFile], None] | None = None,
) -> str:
    """An npm-pack-shaped tarball of ``files`` under package/dist/; its integrity."""
    with tarfile.open(path, "w:gz") as tar:
        meta = json.dumps({"name": name, "version": version}).encode()
        _add(tar, "package/package.json", meta)
        _add(tar, "package/README.md", b"readme")
        for relative, data in files.items():
            _add(tar, f"package/dist/{relative}", data)
        if extra is not None:
            extra(tar)
    return _integrity(path)


def _install(args: list[str]) -> Any:
    return CliRunner().invoke(cli_app, ["ohif", "install", *args])


def _no_traceback(result: Any) -> None:
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache: $DICOMLAKE_CACHE for this test; its ohif/ folder."""
    monkeypatch.setenv("DICOMLAKE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ohif"


def installed_ohif() -> Path:
    """The real OHIF in the user's cache, or skip (a missing component)."""
    found = ohif.find_installed()
    if found is None:
        pytest.skip(NOT_INSTALLED)
    return found


# --------------------------------------------------------------------------- install


def test_install_from_tarball_into_the_cache(cache: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "ohif-app-3.13.2.tgz"
    integrity = make_tarball(tarball)
    result = _install(["--from-tarball", str(tarball), "--integrity", integrity])
    assert result.exit_code == 0, result.output
    assert f"OHIF 3.13.2 installed in {cache / '3.13.2'}" in result.output
    for relative, data in FAKE_FILES.items():
        assert (cache / "3.13.2" / relative).read_bytes() == data
    assert not (cache / "3.13.2" / "README.md").exists()  # only dist/
    assert [p.name for p in cache.iterdir()] == ["3.13.2"]  # no staging left behind
    listed = CliRunner().invoke(cli_app, ["ohif", "list"])
    assert listed.exit_code == 0 and str(cache / "3.13.2") in listed.output
    # again, quietly: the old copy is replaced whole
    (cache / "3.13.2" / "stale.js").write_text("old")
    result = _install(["--from-tarball", str(tarball), "--integrity", integrity, "-q"])
    assert result.exit_code == 0 and result.output == ""
    assert not (cache / "3.13.2" / "stale.js").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["3.13.2"]


def test_tampered_tarball_is_refused(cache: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "ohif.tgz"
    integrity = make_tarball(tarball)
    tampered = dict(FAKE_FILES, **{"app-config.js": b"fetch('https://evil.example/')"})
    make_tarball(tarball, tampered)
    result = _install(["--from-tarball", str(tarball), "--integrity", integrity])
    assert result.exit_code == 2
    assert "integrity mismatch" in result.output and "refusing to install" in result.output
    _no_traceback(result)
    assert ohif.installed_versions(cache) == []


@pytest.mark.parametrize(
    ("member", "said"),
    [
        ({"name": "package/dist/../../escaped.txt"}, "unsafe path"),
        ({"name": "/tmp/absolute.txt"}, "unsafe path"),
        ({"name": "package/dist/assets/passwd", "type": tarfile.SYMTYPE}, "is a link"),
        ({"name": "package/dist/hard", "type": tarfile.LNKTYPE}, "is a link"),
        ({"name": "package/dist/fifo", "type": tarfile.FIFOTYPE}, "special file"),
    ],
)
def test_unsafe_tarball_is_refused(
    cache: Path, tmp_path: Path, member: dict[str, Any], said: str
) -> None:
    def extra(tar: tarfile.TarFile) -> None:
        links = (tarfile.SYMTYPE, tarfile.LNKTYPE)
        link = {"linkname": "/etc/passwd"} if member.get("type") in links else {}
        attrs = {key: value for key, value in member.items() if key != "name"}
        _add(tar, member["name"], b"" if attrs else b"x", **attrs, **link)

    tarball = tmp_path / "evil.tgz"
    integrity = make_tarball(tarball, extra=extra)  # the integrity matches: still refused
    result = _install(["--from-tarball", str(tarball), "--integrity", integrity])
    assert result.exit_code == 2, result.output
    assert said in result.output
    _no_traceback(result)
    assert ohif.installed_versions(cache) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/absolute.txt").exists()


def test_other_packages_and_versions_are_refused(cache: Path, tmp_path: Path) -> None:
    tarball = tmp_path / "other.tgz"
    integrity = make_tarball(tarball, name="left-pad")
    result = _install(["--from-tarball", str(tarball), "--integrity", integrity])
    assert result.exit_code == 2 and "not @ohif/app" in result.output
    integrity = make_tarball(tarball, version="3.12.0")
    result = _install(
        ["--from-tarball", str(tarball), "--integrity", integrity, "--version", "3.13.2"]
    )
    assert result.exit_code == 2 and "@ohif/app@3.12.0, not @ohif/app@3.13.2" in result.output
    result = _install(["--version", "latest"])
    assert result.exit_code == 2 and "not an exact version" in result.output
    result = _install(["--from-tarball", str(tarball), "--integrity", "md5-abc"])
    assert result.exit_code == 2 and "expected sha512" in result.output
    _no_traceback(result)
    assert ohif.installed_versions(cache) == []


def test_npm_missing_or_failing_is_a_clear_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    result = _install([])
    assert result.exit_code == 2 and "npm is not installed" in result.output
    _no_traceback(result)
    npm = bin_dir / "npm"
    npm.write_text(
        "#!/bin/sh\n"
        'echo \'{"error": {"code": "ENOTFOUND", "summary": "request to '
        "https://registry.npmjs.org/@ohif%2fapp failed, reason: getaddrinfo ENOTFOUND\"}}'\n"
        "echo 'npm error code ENOTFOUND' >&2\nexit 1\n"
    )
    npm.chmod(0o755)
    result = _install([])
    assert result.exit_code == 2
    assert "npm view @ohif/app@3.13.2 failed: ENOTFOUND request to" in result.output
    _no_traceback(result)
    assert ohif.installed_versions(cache) == []


def test_install_the_real_app(cache: Path, tmp_path: Path) -> None:
    """The real @ohif/app: the tarball at /tmp/ohifpack, else npm pack (as in CI)."""
    if REAL_TARBALL.exists():
        args = ["--from-tarball", str(REAL_TARBALL), "--integrity", REAL_INTEGRITY]
    elif shutil.which("npm") is None:
        pytest.skip("installing OHIF needs npm (apt-get install npm) or /tmp/ohifpack")
    else:
        args = []  # npm view + npm pack, checked against the registry
    result = _install(args)
    assert result.exit_code == 0, result.output
    dist = cache / ohif.DEFAULT_VERSION
    assert ohif.find_installed() == dist
    assert (dist / "index.html").is_file() and (dist / "app-config.js").is_file()
    assert len(list(dist.glob("app.bundle.*.js"))) == 1
    assert len(list(dist.glob("*.wasm"))) >= 3
    # a damaged copy of the real tarball is refused
    if REAL_TARBALL.exists():
        damaged = tmp_path / "damaged.tgz"
        data = bytearray(REAL_TARBALL.read_bytes())
        data[len(data) // 2] ^= 0xFF
        damaged.write_bytes(data)
        result = _install(["--from-tarball", str(damaged), "--integrity", REAL_INTEGRITY])
        assert result.exit_code == 2 and "integrity mismatch" in result.output
        result = _install(["--from-tarball", str(damaged)])  # no integrity: fails to read it
        assert result.exit_code == 2, result.output
        _no_traceback(result)


def test_cache_location_and_newest_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DICOMLAKE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert ohif.cache_dir() == tmp_path / "home" / ".cache" / "dicomlake" / "ohif"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ohif.cache_dir() == tmp_path / "xdg" / "dicomlake" / "ohif"
    monkeypatch.setenv("DICOMLAKE_CACHE", str(tmp_path / "own"))
    root = ohif.cache_dir()
    assert root == tmp_path / "own" / "ohif"
    assert ohif.find_installed() is None
    for version in ("3.9.1", "3.13.2-beta.4", "3.13.2", "3.10.0"):
        (root / version).mkdir(parents=True)
        (root / version / "index.html").write_text("<html>")
    (root / "4.0.0").mkdir()  # no index.html: half an install
    (root / ".3.14.0-x1").mkdir()  # a staging folder
    assert ohif.installed_versions() == ["3.13.2", "3.13.2-beta.4", "3.10.0", "3.9.1"]
    assert ohif.find_installed() == root / "3.13.2"


# --------------------------------------------------------------------------- serving


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CT study (one slice), a cine MR study (one 10-frame instance) and an RGB
    ultrasound stored as JPEG 2000."""
    root = tmp_path_factory.mktemp("ohif")
    (root / "data").mkdir()
    for source, study, description in (
        ("CT_small.dcm", CT_STUDY, CT_DESCRIPTION),
        ("emri_small.dcm", MR_STUDY, MR_DESCRIPTION),
        ("US1_J2KR.dcm", US_STUDY, US_DESCRIPTION),
    ):
        ds = pydicom.dcmread(sample_file(source))
        ds.StudyInstanceUID = study
        ds.StudyDescription = description
        ds.save_as(root / "data" / source)
    path = str(root / "lake")
    build_lake([str(root / "data")], path)
    return path


@pytest.fixture(scope="module")
def fake_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    for relative, data in FAKE_FILES.items():
        (dist / relative).parent.mkdir(parents=True, exist_ok=True)
        (dist / relative).write_bytes(data)
    return dist


def _client(lake: str, **options: Any) -> Any:
    from starlette.testclient import TestClient

    from dicomlake.viewer import create_app

    return TestClient(create_app(lake, **options))


def test_without_ohif_the_page_says_how_to_install(lake: str, cache: Path, tmp_path: Path) -> None:
    """Status 404 (there is no app to serve) with a page that says what to run; once
    it is installed, a reload shows it (no restart)."""
    with _client(lake) as client:
        for url in ("/ohif/", "/ohif/viewer?StudyInstanceUIDs=1.2.3", "/ohif/app.bundle.js"):
            response = client.get(url)
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("text/html")
            assert "<code>dicomlake ohif install</code>" in response.text
            assert f"<code>{cache}</code>" in response.text
            assert "script-src 'self';" in response.headers["content-security-policy"]
        assert client.get("/ohif", follow_redirects=False).headers["location"].endswith("/ohif/")
        tarball = tmp_path / "ohif.tgz"
        result = _install(["--from-tarball", str(tarball), "--integrity", make_tarball(tarball)])
        assert result.exit_code == 0, result.output
        response = client.get("/ohif/viewer?StudyInstanceUIDs=1.2.3")
        assert response.status_code == 200 and 'src="/ohif/app-config.js"' in response.text


def test_index_html_is_rewritten_for_the_sub_path(lake: str, fake_dist: Path) -> None:
    with _client(lake, ohif_dir=str(fake_dist)) as client:
        for url in ("/ohif/", "/ohif/index.html", "/ohif/viewer?StudyInstanceUIDs=1.2.3"):
            response = client.get(url)
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            page = response.text
            assert "<script>" not in page  # no inline script left
            assert 'src="/ohif/app-config.js"' in page
            assert 'src="/ohif/app.bundle.0123456789abcdef.js"' in page
            assert 'href="/ohif/app.bundle.css"' in page
            assert 'href="/ohif/manifest.json"' in page
            assert 'content="/ohif/assets/tile.png"' in page
            assert '="/' not in page.replace('="/ohif/', "")
        first = client.get("/ohif/_dicomlake/inline-0.js")
        second = client.get("/ohif/_dicomlake/inline-1.js")
        assert first.headers["content-type"].startswith("text/javascript")
        assert first.text == 'console.time("x"),window.PUBLIC_URL="/ohif/"'
        assert second.text.endswith('window.PUBLIC_URL="/ohif/"')
        assert client.get("/ohif/_dicomlake/inline-2.js").status_code == 404


def test_app_config_points_at_our_dicomweb(lake: str, fake_dist: Path) -> None:
    with _client(lake, ohif_dir=str(fake_dist)) as client:
        response = client.get("/ohif/app-config.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "http" not in response.text  # no external URL: the origin comes from the page
    node = shutil.which("node")
    if node is None:
        pytest.skip("reading app-config.js as OHIF does needs Node.js (apt-get install nodejs)")
    script = (
        "const window = {location: {origin: 'http://lake.example:9000'}};\n"
        + response.text
        + "\nprocess.stdout.write(JSON.stringify(window.config));"
    )
    done = subprocess.run([node, "-e", script], capture_output=True, check=True, timeout=60)
    config = json.loads(done.stdout)
    assert config["routerBasename"] == "/ohif"
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["customizationService"] == [{"ohif.tours": {"$set": []}}]
    (source,) = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    settings = source["configuration"]
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert settings[root] == "http://lake.example:9000/dicomweb"
    assert settings["imageRendering"] == settings["thumbnailRendering"] == "wadors"
    for flag in (
        "enableStudyLazyLoad",
        "supportsFuzzyMatching",
        "supportsWildcard",
        "omitQuotationForMultipartRequest",
    ):
        assert settings[flag] is True


def test_app_files_types_rewrites_and_headers(lake: str, fake_dist: Path) -> None:
    with _client(lake, ohif_dir=str(fake_dist)) as client:
        bundle = client.get("/ohif/app.bundle.0123456789abcdef.js")
        assert bundle.headers["content-type"] == "text/javascript; charset=utf-8"
        assert '__webpack_require__.p = "/ohif/";' in bundle.text
        assert "immutable" in bundle.headers["cache-control"]  # a content-hashed name
        css = client.get("/ohif/app.bundle.css")
        assert css.headers["content-type"] == "text/css; charset=utf-8"
        assert "url(/ohif/a34f9d1faa5f3315.woff2)" in css.text
        types = {
            "/ohif/0ddf166f7a343eda.wasm": "application/wasm",
            "/ohif/a34f9d1faa5f3315.woff2": "font/woff2",
            "/ohif/manifest.json": "application/json",
            "/ohif/ohif-logo.svg": "image/svg+xml",
            "/ohif/assets/tile.png": "image/png",
        }
        for url, media_type in types.items():
            response = client.get(url)
            assert response.status_code == 200, url
            assert response.headers["content-type"] == media_type, url
            assert response.content == FAKE_FILES[url.removeprefix("/ohif/")]
        csp = client.get("/ohif/").headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"  # no eval, no inline
        assert directives["worker-src"] == "'self' blob:"
        assert "'unsafe-inline'" in directives["style-src"]
        assert "http" not in csp and "*" not in csp
        assert directives["frame-ancestors"] == "'none'"
        # a bundle started as a worker may evaluate strings (the codecs' embind glue)
        worker = client.get(
            "/ohif/app.bundle.0123456789abcdef.js", headers={"Sec-Fetch-Dest": "worker"}
        )
        assert worker.headers["vary"] == bundle.headers["vary"] == "Sec-Fetch-Dest"
        worker_csp = worker.headers["content-security-policy"]
        assert "script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval';" in worker_csp
        assert bundle.headers["content-security-policy"] == csp
        for url in (
            "/ohif/missing.js",
            "/ohif/assets/missing.png",
            "/ohif/../pyproject.toml",
            "/ohif/%2e%2e/%2e%2e/etc/passwd",
            "/ohif/.hidden",
            "/ohif/assets/..%2f..%2findex.html",
        ):
            assert client.get(url).status_code == 404, url


def test_series_page_links_to_ohif(lake: str) -> None:
    with _client(lake) as client:
        items = client.get("/api/series").json()["items"]
        assert {item["StudyInstanceUID"] for item in items} == {CT_STUDY, MR_STUDY, US_STUDY}
        for item in items:
            page = client.get(f"/series/{item['SeriesInstanceUID']}").text
            link = f'href="/ohif/viewer?StudyInstanceUIDs={item["StudyInstanceUID"]}"'
            assert f'<a class="button ohif" {link}' in page
            assert ">Open in OHIF</a>" in page
    # whatever a lake holds, the UID stays one query value
    from dicomlake.viewer.pages import ohif_url

    assert ohif_url('1.2&x=3"<b>') == "/ohif/viewer?StudyInstanceUIDs=1.2%26x%3D3%22%3Cb%3E"


def test_the_real_index_html_is_served_for_the_sub_path(lake: str) -> None:
    dist = installed_ohif()
    with _client(lake, ohif_dir=str(dist)) as client:
        page = client.get("/ohif/").text
        assert "<script>" not in page and 'window.PUBLIC_URL="/"' not in page
        urls = re.findall(r'\s(?:src|href|content)="(/[^"]*)"', page)
        assert len(urls) > 20 and all(url.startswith("/ohif/") for url in urls)
        for url in re.findall(r'<script[^>]* src="([^"]+)"', page):
            response = client.get(url)
            assert response.status_code == 200, url
            assert response.headers["content-type"].startswith("text/javascript"), url
        bundle = next(dist.glob("app.bundle.*.js")).name
        assert '__webpack_require__.p = "/ohif/";' in client.get(f"/ohif/{bundle}").text
        wasm = next(dist.glob("*.wasm")).name
        assert client.get(f"/ohif/{wasm}").headers["content-type"] == "application/wasm"


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(webgl=True) as instance:
        yield instance


@pytest.fixture(scope="module")
def live(lake: str) -> Iterator[LiveServer]:
    dist = installed_ohif()
    with LiveServer(lake, ohif_dir=str(dist)) as server:
        yield server


class Watch:
    """What a page did: its DICOMweb requests, failures, errors and CSP refusals."""

    def __init__(self, page: Any) -> None:
        self.dicomweb: list[tuple[int, str]] = []
        self.problems: list[str] = []
        page.on("response", self.on_response)
        page.on("requestfailed", self.on_failed)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on("console", self.on_console)

    def on_response(self, response: Any) -> None:
        path = response.url.split("//", 1)[-1].split("/", 1)[-1]
        if path.startswith("dicomweb"):
            self.dicomweb.append((response.status, "/" + path))
        if response.status >= 400:
            self.problems.append(f"{response.status}: {response.url}")

    def on_failed(self, request: Any) -> None:
        # leaving a page cancels the images it was still loading: not a failure
        if "ERR_ABORTED" not in (request.failure or ""):
            self.problems.append(f"failed: {request.url} ({request.failure})")

    def on_console(self, message: Any) -> None:
        text = message.text
        if "Content Security Policy" in text or "Refused to" in text:
            self.problems.append(f"CSP: {text}")
        elif message.type == "error":
            self.problems.append(f"console error: {text}")


@pytest.fixture
def page(browser: Any, live: LiveServer) -> Iterator[tuple[Any, Watch]]:
    context = browser.new_context(base_url=live.url, viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(60_000)
    watch = Watch(tab)
    yield tab, watch
    context.close()
    assert watch.problems == []


def _viewport(tab: Any) -> Any:
    canvas = tab.locator("canvas.cornerstone-canvas").first
    canvas.wait_for(state="visible")
    return canvas


def _centre(tab: Any, canvas: Any) -> np.ndarray:
    """The grey levels of the middle half of the viewport, as on screen."""
    from PIL import Image

    image = Image.open(io.BytesIO(canvas.screenshot())).convert("L")
    pixels = np.asarray(image, dtype=np.float64)
    h, w = pixels.shape
    return pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4]


def _until(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.25)


@pytest.mark.browser
def test_ohif_lists_the_lakes_studies(page: tuple[Any, Watch], artifacts: Path) -> None:
    tab, watch = page
    tab.goto("/ohif/")
    for description in (CT_DESCRIPTION, MR_DESCRIPTION, US_DESCRIPTION):
        tab.get_by_text(description).first.wait_for()
    tab.get_by_text("1-3 of 3").wait_for()
    tab.screenshot(path=artifacts / "ohif-study-list.png")
    assert any(s == 200 and p.startswith("/dicomweb/studies?") for s, p in watch.dicomweb)
    assert tab.evaluate("crossOriginIsolated") is True


@pytest.mark.browser
def test_ohif_shows_a_ct_opened_from_the_gallery(page: tuple[Any, Watch], artifacts: Path) -> None:
    tab, watch = page
    tab.goto("/")
    link = tab.locator(f'#grid a.ohif[href="/ohif/viewer?StudyInstanceUIDs={CT_STUDY}"]')
    link.click()
    tab.wait_for_url(f"**/ohif/viewer?StudyInstanceUIDs={CT_STUDY}")
    canvas = _viewport(tab)
    _until(lambda: _centre(tab, canvas).std() > 20, 30, "the CT on screen")
    tab.screenshot(path=artifacts / "ohif-ct.png")
    wanted = ("/metadata", "/frames/")
    for part in wanted:
        assert any(s == 200 and part in p for s, p in watch.dicomweb), (part, watch.dicomweb)


@pytest.mark.browser
def test_ohif_scrolls_a_multiframe_mr(page: tuple[Any, Watch], artifacts: Path) -> None:
    tab, watch = page
    tab.goto(f"/ohif/viewer?StudyInstanceUIDs={MR_STUDY}")
    canvas = _viewport(tab)
    _until(lambda: _centre(tab, canvas).std() > 20, 30, "the MR on screen")
    tab.get_by_text("(1/10)").wait_for()
    before = _centre(tab, canvas)
    box = canvas.bounding_box()
    tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(3):
        tab.mouse.wheel(0, 120)
        tab.wait_for_timeout(200)
    _until(lambda: np.abs(_centre(tab, canvas) - before).mean() > 5, 30, "another frame on screen")
    tab.get_by_text("(1/10)").wait_for(state="detached")
    tab.screenshot(path=artifacts / "ohif-mr-scrolled.png")
    frames = {p.rsplit("/frames/", 1)[1] for s, p in watch.dicomweb if "/frames/" in p}
    assert len(frames) > 1, watch.dicomweb


@pytest.mark.browser
def test_ohif_decodes_jpeg2000_in_the_browser(page: tuple[Any, Watch], artifacts: Path) -> None:
    """Frames asked for as JPEG 2000 are decoded by OHIF's wasm codec, in a worker,
    under our CSP (the default asks for any transfer syntax: the server decodes)."""
    tab, watch = page

    def ask_for_jpeg2000(route: Any) -> None:
        response = route.fetch()
        body = response.text().replace(
            "imageRendering: 'wadors',",
            f"imageRendering: 'wadors', requestTransferSyntaxUID: '{JPEG2000_LOSSLESS}',",
        )
        assert JPEG2000_LOSSLESS in body
        route.fulfill(response=response, body=body)

    frames: list[str] = []
    tab.route("**/ohif/app-config.js", ask_for_jpeg2000)
    tab.on(
        "response",
        lambda r: frames.append(r.headers["content-type"]) if "/frames/" in r.url else None,
    )
    tab.goto(f"/ohif/viewer?StudyInstanceUIDs={US_STUDY}")
    canvas = _viewport(tab)
    _until(lambda: _centre(tab, canvas).std() > 20, 30, "the ultrasound on screen")
    tab.screenshot(path=artifacts / "ohif-us-jpeg2000.png")
    assert frames and all('type="image/jp2"' in c or "type=image/jp2" in c for c in frames)
    assert all(s == 200 for s, p in watch.dicomweb if "/frames/" in p), watch.dicomweb
