"""What keeps a served lake private: the bearer token, CORS, loopback binding, and a
database that cannot fetch extensions or read other files, tested over real HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app as cli_app
from dicomlake.sample import sample_file
from dicomlake.search.connection import LakeConnection
from helpers.servers import LiveServer

TOKEN = "s3cret token/with+odd=chars"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("secure")
    (root / "data").mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), root / "data" / "ct.dcm")
    path = str(root / "lake")
    dicomlake.ingest([str(root / "data")], path, workers=0)
    return path


@pytest.fixture(scope="module")
def guarded_server(lake: str) -> Iterator[LiveServer]:
    with LiveServer(lake, token=TOKEN, cors_origins=["https://viewer.example"]) as live:
        yield live


def test_every_path_needs_the_token(guarded_server: LiveServer) -> None:
    with httpx.Client(base_url=guarded_server.url, follow_redirects=False) as http:
        for path in ("/", "/api/series", "/dicomweb/studies", "/ohif/", "/static/viewer.css"):
            refused = http.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "CT" not in refused.text
        wrong = http.get("/dicomweb/studies", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        right = http.get("/dicomweb/studies", headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200 and len(right.json()) == 1


def test_a_browser_gets_a_cookie_from_a_token_link(guarded_server: LiveServer) -> None:
    with httpx.Client(base_url=guarded_server.url, follow_redirects=False) as http:
        redirect = http.get("/dicomweb/studies", params={"token": TOKEN, "limit": "1"})
        assert redirect.status_code == 303
        assert redirect.headers["location"] == "/dicomweb/studies?limit=1"
        cookie = redirect.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # the client keeps the cookie: later requests need no header
        assert http.get("/dicomweb/studies").status_code == 200
    with httpx.Client(base_url=guarded_server.url) as fresh:
        assert fresh.get("/dicomweb/studies", params={"token": "wrong"}).status_code == 401


def test_cors_only_for_named_origins(guarded_server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=guarded_server.url) as http:
        named = http.get("/dicomweb/studies", headers={**auth, "Origin": "https://viewer.example"})
        assert named.headers["access-control-allow-origin"] == "https://viewer.example"
        other = http.get("/dicomweb/studies", headers={**auth, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = http.options(
            "/dicomweb/studies",
            headers={
                "Origin": "https://viewer.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert preflight.status_code == 200
        assert "GET" in preflight.headers["access-control-allow-methods"]


def test_no_cors_headers_by_default(lake: str) -> None:
    with LiveServer(lake) as live, httpx.Client(base_url=live.url) as http:
        response = http.get("/dicomweb/studies", headers={"Origin": "https://viewer.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


def test_server_database_never_fetches_extensions(lake: str, tmp_path: Path) -> None:
    """A WHERE clause naming a function of an extension the machine lacks must not make
    DuckDB download and load it (autoinstall and autoload are off, and locked)."""
    db = LakeConnection(lake)
    with db.cursor() as cur:
        assert cur.fetch("SELECT current_setting('autoinstall_known_extensions')") == [(False,)]
        assert cur.fetch("SELECT current_setting('autoload_known_extensions')") == [(False,)]
        with pytest.raises(duckdb.Error):
            cur.fetch("SET autoload_known_extensions = true")
        # not found, rather than installed (an HTTP error offline) or loaded
        with pytest.raises(duckdb.CatalogException, match="sqlite_scan"):
            cur.fetch("SELECT * FROM instances WHERE sqlite_scan('/etc/passwd', 'x') IS NULL")
    db.close()
    with LiveServer(lake) as live, httpx.Client(base_url=live.url) as http:
        response = http.get(
            "/api/series", params={"where": "sqlite_scan('/etc/passwd', 'x') IS NULL"}
        )
        assert response.status_code == 400
        assert "root:" not in response.text


def test_binding_beyond_loopback_needs_a_token_or_no_auth(lake: str) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--lake", lake, "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--token" in result.output and "--no-auth" in result.output
    result = runner.invoke(cli_app, ["serve", "--lake", lake, "--host", "0.0.0.0", "--token", " "])
    assert result.exit_code == 2 and "empty" in result.output


def test_loopback_server_refuses_other_host_names(lake: str) -> None:
    with LiveServer(lake) as live, httpx.Client(base_url=live.url) as http:
        assert http.get("/dicomweb/studies", headers={"Host": "evil.example"}).status_code == 400
