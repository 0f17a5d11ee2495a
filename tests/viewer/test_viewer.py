"""Tests of the web viewer: its SQL guard, its JSON API over real HTTP, and real pages
in a real browser (Chromium through Playwright), on a lake ingested from real files."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pyarrow as pa
import pydicom
import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.catalog import open_ref
from dicomlake.cli import app as cli_app
from dicomlake.lake import TableWriter
from dicomlake.sample import sample_file, write_bad_files
from dicomlake.schema import INSTANCES_SCHEMA
from dicomlake.search.connection import Cursor, LakeConnection, QueryTimeout
from dicomlake.viewer import create_app
from dicomlake.viewer.safety import UnsafeClause, check_where
from dicomlake.viewer.tags import bulk_length, tag_rows
from helpers.browser import chromium
from helpers.lakes import build_lake
from helpers.servers import LiveServer

SCRIPT_DIR = "<script>alert(1)<"  # with the file name below: "<script>alert(1)</script>.dcm"
SCRIPT_NAME = "script>.dcm"
XSS_DESCRIPTION = "<img src=x onerror=alert(1)>"
QUOTED_NAME = """it's "quoted".dcm"""

MALICIOUS_WHERE = [
    "1=1; DROP TABLE x",
    "read_csv('/etc/passwd') IS NOT NULL",
    "(SELECT count(*) FROM read_text('/etc/passwd')) > 0",
    "path IN (SELECT content FROM read_text('/etc/hostname'))",
    "1=1) UNION ALL (SELECT * FROM instances",
    "path IN (SELECT path FROM '/etc/passwd')",
    "path IN (SELECT * FROM glob('/etc/*'))",
    "current_setting('allowed_directories') IS NOT NULL",
]


# --------------------------------------------------------------------------- test data


def _save(source: str, dest: Path, **attrs: Any) -> None:
    ds = pydicom.dcmread(sample_file(source))
    for name, value in attrs.items():
        setattr(ds, name, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)


def make_corpus(root: Path) -> Path:
    """Real files with known series: a CT of 3 slices (stored out of order), a brain MR,
    a 10-frame MR, an RGB ultrasound (JPEG 2000), an RT structure set (no pixels, many
    sequences), a series whose description and file names are HTML, and bad files."""
    ct = {
        "SeriesInstanceUID": "1.2.3.100",
        "SeriesDescription": "Chest CT",
        "StudyDescription": "Thorax study",
        "BodyPartExamined": "CHEST",
        "StudyDate": "20210304",
    }
    for name, number, z in (("slice-a.dcm", 3, 30.0), ("slice-b.dcm", 1, 10.0), ("c.dcm", 2, 20.0)):
        position = {"ImagePositionPatient": [0.0, 0.0, z], "InstanceNumber": number}
        _save(
            "CT_small.dcm",
            root / "ct" / name,
            SOPInstanceUID=f"1.2.3.100.{number}",
            **ct,
            **position,
        )
    mr = {"SeriesDescription": "Brain MR", "BodyPartExamined": "HEAD", "StudyDate": "20190101"}
    _save("MR_small.dcm", root / "mr" / "brain.dcm", SeriesInstanceUID="1.2.3.200", **mr)
    (root / "mf").mkdir()
    shutil.copyfile(sample_file("emri_small.dcm"), root / "mf" / "emri_small.dcm")
    us = {"SeriesDescription": "Abdomen US", "BodyPartExamined": "ABDOMEN", "StudyDate": "20180505"}
    _save("US1_J2KR.dcm", root / "us" / "us.dcm", SeriesInstanceUID="1.2.3.300", **us)
    (root / "rt").mkdir()
    shutil.copyfile(sample_file("rtstruct.dcm"), root / "rt" / "rtstruct.dcm")
    xss = {
        "SeriesInstanceUID": "1.2.3.400",
        "SeriesDescription": XSS_DESCRIPTION,
        "StudyDate": "20170101",
    }
    _save("MR_small.dcm", root / SCRIPT_DIR / SCRIPT_NAME, SOPInstanceUID="1.2.3.400.1", **xss)
    _save("MR_small.dcm", root / "x" / QUOTED_NAME, SOPInstanceUID="1.2.3.400.2", **xss)
    write_bad_files(root / "bad")  # 3 not_dicom, 2 error
    return root


def write_big_lake(lake: str, n_series: int) -> None:
    """``n_series`` one-instance series written straight to Delta (no DICOM parsing)."""
    n = n_series
    ids = np.arange(n, dtype=np.int64)
    modalities = np.array(["CT", "MR", "US", "CR"])
    start = dt.date(2000, 1, 1)
    columns: dict[str, pa.Array] = {
        "row_id": pa.array(ids + 1),
        "path": pa.array([f"file:///big/{i}.dcm" for i in ids]),
        "status": pa.array(["ok"] * n),
        "SeriesInstanceUID": pa.array([f"9.{i}" for i in ids]),
        "StudyInstanceUID": pa.array([f"8.{i // 4}" for i in ids]),
        "Modality": pa.array(modalities[ids % 4]),
        "InstanceNumber": pa.array(np.ones(n, dtype=np.int64)),
        "StudyDate": pa.array([start + dt.timedelta(days=int(d)) for d in ids % 9000], pa.date32()),
        "SeriesDescription": pa.array([f"series {i}" for i in ids]),
        "has_pixel_data": pa.array(np.ones(n, dtype=bool)),
    }
    table = pa.table(
        {f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in INSTANCES_SCHEMA},
        schema=INSTANCES_SCHEMA,
    )
    with TableWriter(lake, max_rows=n + 1) as writer:
        writer.write(table)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("viewer")
    corpus = make_corpus(root / "data")
    path = str(root / "lake")
    build_lake([str(corpus)], path)
    return path


@pytest.fixture(scope="module")
def server(lake: str) -> Iterator[LiveServer]:
    with LiveServer(lake) as live:
        yield live


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _series(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/api/series", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def _uid_of(http: httpx.Client, description: str) -> str:
    items = _series(http, limit=100)["items"]
    return next(i["SeriesInstanceUID"] for i in items if i["SeriesDescription"] == description)


# --------------------------------------------------------------------------- the WHERE guard


@pytest.mark.parametrize(
    "clause",
    [
        "Modality = 'CT'",
        "Rows >= 64 AND SliceThickness < 10",
        "tag(meta, 'PatientAge') IS NULL OR tag(meta, '00101010') <> ''",
        "EXISTS (SELECT 1 FROM unnest(path_tags) AS t(x) WHERE x = 'ct')",
        "SeriesInstanceUID IN (SELECT SeriesInstanceUID FROM series WHERE n_instances > 1)",
        "path LIKE '%;%'",
        "1=1 -- a comment",
    ],
)
def test_check_where_accepts_expressions(clause: str) -> None:
    sql = check_where(duckdb.connect(), clause)
    assert sql == f"SELECT * FROM instances WHERE (\n{clause}\n)"


@pytest.mark.parametrize(
    "clause",
    [
        *MALICIOUS_WHERE,
        "",
        "DROP TABLE instances",
        "1=1) LIMIT 1 --",
        "1=1 /*",
        "Modality = ?",
        "path IN (SELECT path FROM duckdb_tables)",
        "path IN (SELECT x FROM information_schema.tables)",
        "exists(FROM query('SELECT 1'))",
        "1 IN (SELECT 1 FROM (DESCRIBE instances))",
        "path IN (SELECT path FROM dicomlake_internal.instances_schema)",
        "1 = (SELECT 1 FROM range(10) LIMIT 1)",
        "x" * 5000,
    ],
)
def test_check_where_refuses_anything_else(clause: str) -> None:
    with pytest.raises(UnsafeClause):
        check_where(duckdb.connect(), clause)


def test_connection_reads_the_lake_but_nothing_else(lake: str) -> None:
    db = LakeConnection(lake)
    with db.cursor() as cur:
        assert cur.fetch("SELECT count(*) FROM instances")[0][0] == 14
        # every frame: 3 CT slices, 3 one-frame MRs, the 10-frame MR and the ultrasound
        assert cur.fetch("SELECT count(*) FROM thumbnails WHERE status = 'ok'")[0][0] == 17
        assert cur.fetch("SELECT tag(meta, 'Modality') FROM instances WHERE status = 'ok'")
        # the second guard: even a query that skips check_where cannot read other files
        for sql in (
            "SELECT * FROM read_text('/etc/hostname')",
            "SELECT * FROM read_csv('/etc/passwd')",
            "COPY (SELECT 1) TO '/tmp/dicomlake-viewer-test.csv'",
        ):
            with pytest.raises(duckdb.Error, match="disabled by configuration"):
                cur.fetch(sql)
        with pytest.raises(duckdb.Error):
            cur.fetch("SET enable_external_access = true")
    db.close()


# --------------------------------------------------------------------------- tag table


def test_tag_rows_sequences_and_binary_sizes() -> None:
    meta = {
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
        "00091001": {"vr": "OB", "InlineBinary": "AAECAw=="},
        "7FE00010": {"vr": "OW", "BulkDataURI": "file:///a%20b.dcm?offset=12&length=32768"},
        "30060020": {"vr": "SQ", "Value": [{"30060022": {"vr": "IS", "Value": [1]}}, {}]},
    }
    rows = {r["tag"]: r for r in tag_rows(meta)}
    assert rows["(0010,0010)"] == {
        "tag": "(0010,0010)", "keyword": "PatientName", "vr": "PN", "value": "Doe^Jane"
    }  # fmt: skip
    assert rows["(0028,0030)"]["value"] == "0.5\\0.5"
    assert rows["(0009,1001)"]["bytes"] == 4 and rows["(0009,1001)"]["keyword"] == ""
    assert rows["(7FE0,0010)"]["bytes"] == 32768
    sequence = rows["(3006,0020)"]
    assert sequence["keyword"] == "StructureSetROISequence" and sequence["value"] == "2 items"
    assert sequence["items"][0][0]["keyword"] == "ROINumber" and sequence["items"][1] == []
    assert bulk_length("zip://m.dcm::file:///x.zip?offset=1&length=9") == 9
    assert bulk_length("file:///whole.dcm") is None


# --------------------------------------------------------------------------- JSON API


def test_series_api_pages(http: httpx.Client) -> None:
    everything = _series(http)
    assert everything["total"] == 6 and everything["next_offset"] is None
    first = _series(http, limit=4)
    assert len(first["items"]) == 4 and first["total"] == 6 and first["next_offset"] == 4
    rest = _series(http, limit=4, offset=4)
    assert len(rest["items"]) == 2 and rest["next_offset"] is None
    seen = [i["SeriesInstanceUID"] for i in first["items"] + rest["items"]]
    assert seen == [i["SeriesInstanceUID"] for i in everything["items"]]
    dates = [i["study_date"] for i in everything["items"] if i["study_date"]]
    assert dates == sorted(dates, reverse=True)  # newest study first
    ct = next(i for i in everything["items"] if i["Modality"] == "CT")
    assert ct["n_instances"] == 3 and ct["BodyPartExamined"] == "CHEST"
    assert ct["thumbnail"].startswith("/api/thumbnail/")
    rt = next(i for i in everything["items"] if i["Modality"] == "RTSTRUCT")
    assert rt["thumbnail"] is None  # no pixels: the page draws a placeholder
    beyond = _series(http, offset=100)
    assert beyond["items"] == [] and beyond["total"] == 6 and beyond["next_offset"] is None
    for bad in ({"limit": 0}, {"limit": 100000}, {"offset": -1}, {"offset": "x"}):
        assert http.get("/api/series", params=bad).status_code == 400


def test_series_api_filters(http: httpx.Client) -> None:
    def uids(**params: Any) -> set[str]:
        return {i["SeriesDescription"] or i["Modality"] for i in _series(http, **params)["items"]}

    assert uids(modality="CT") == {"Chest CT"}
    assert len(uids(modality="MR")) == 3
    assert uids(body_part="ABDOMEN") == {"Abdomen US"}
    assert uids(date_from="2018-01-01", date_to="2019-12-31") == {"Brain MR", "Abdomen US"}
    assert uids(q="thorax") == {"Chest CT"}  # StudyDescription
    assert uids(q="BRAIN") == {"Brain MR"}  # SeriesDescription, any case
    assert uids(q="100%_") == set()  # LIKE wildcards are plain text
    assert uids(where="InstanceNumber = 2 AND Modality = 'CT'") == {"Chest CT"}
    assert uids(where="tag(meta, 'BodyPartExamined') = 'HEAD'") == {"Brain MR", "MR"}
    # a series matched through one instance still counts all of its instances
    ct = _series(http, where="InstanceNumber = 2")["items"]
    assert [i["n_instances"] for i in ct if i["Modality"] == "CT"] == [3]
    assert http.get("/api/series", params={"date_from": "yesterday"}).status_code == 400
    assert http.get("/api/series", params={"status": "maybe"}).status_code == 400


@pytest.mark.parametrize("clause", MALICIOUS_WHERE)
def test_bad_where_is_a_400_with_a_message(http: httpx.Client, clause: str) -> None:
    for endpoint in ("/api/series", "/api/errors"):
        response = http.get(endpoint, params={"where": clause})
        assert response.status_code == 400
        body = response.json()
        assert set(body) == {"error"} and body["error"]
        assert "root:" not in response.text and "Traceback" not in response.text


def test_where_that_fails_when_run_is_a_400(http: httpx.Client) -> None:
    response = http.get("/api/series", params={"where": "no_such_column = 1"})
    assert response.status_code == 400
    assert "no_such_column" in response.json()["error"]
    assert "Traceback" not in response.text


def test_errors_api_lists_failed_files_with_their_error(http: httpx.Client) -> None:
    errors = http.get("/api/errors", params={"status": "error"}).json()
    assert errors["total"] == 2
    assert {Path(i["path"]).name for i in errors["items"]} == {
        "dicm-then-garbage.dcm", "truncated-header.dcm"
    }  # fmt: skip
    assert all(i["error"] and i["status"] == "error" for i in errors["items"])
    not_dicom = http.get("/api/errors", params={"status": "not_dicom"}).json()
    assert not_dicom["total"] == 3
    failed = http.get("/api/errors", params={"status": "failed", "limit": 2}).json()
    assert failed["total"] == 5 and len(failed["items"]) == 2 and failed["next_offset"] == 2
    found = http.get("/api/errors", params={"status": "failed", "q": "TRUNCATED-header"}).json()
    assert [Path(i["path"]).name for i in found["items"]] == ["truncated-header.dcm"]
    by_where = http.get("/api/errors", params={"status": "failed", "where": "size = 0"}).json()
    assert [Path(i["path"]).name for i in by_where["items"]] == ["empty.dcm"]


def test_series_detail_orders_instances(http: httpx.Client) -> None:
    detail = http.get(f"/api/series/{_uid_of(http, 'Chest CT')}").json()
    assert detail["series"]["n_instances"] == 3
    assert detail["series"]["StudyDescription"] == "Thorax study"
    instances = detail["instances"]
    assert [i["InstanceNumber"] for i in instances] == [1, 2, 3]
    assert [Path(i["path"]).name for i in instances] == ["slice-b.dcm", "c.dcm", "slice-a.dcm"]
    assert all(i["frames"] == [0] for i in instances)
    assert isinstance(instances[0]["row_id"], str)  # 64-bit ids survive JavaScript
    assert http.get("/api/series/1.2.999").status_code == 404
    multi = http.get(f"/api/series/{_uid_of_modality(http, 'MR', 10)}").json()
    assert multi["instances"][0]["frames"] == list(range(10))


def _uid_of_modality(http: httpx.Client, modality: str, frames: int) -> str:
    items = _series(http, modality=modality)["items"]
    return next(i["SeriesInstanceUID"] for i in items if i["n_frames"] == frames)


def test_thumbnail_api(http: httpx.Client) -> None:
    detail = http.get(f"/api/series/{_uid_of_modality(http, 'MR', 10)}").json()
    row_id = detail["instances"][0]["row_id"]
    for frame in (0, 9):
        response = http.get(f"/api/thumbnail/{row_id}", params={"frame": frame})
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert http.get(f"/api/thumbnail/{row_id}").status_code == 200  # first frame
    assert http.get(f"/api/thumbnail/{row_id}", params={"frame": 10}).status_code == 404
    assert http.get(f"/api/thumbnail/{row_id}", params={"frame": "-1"}).status_code == 400
    assert http.get("/api/thumbnail/12345").status_code == 404
    assert http.get("/api/thumbnail/abc").status_code == 400


def test_instance_api_gives_the_tag_table(http: httpx.Client) -> None:
    ct = http.get(f"/api/series/{_uid_of(http, 'Chest CT')}").json()["instances"][0]
    tags = {r["keyword"]: r for r in http.get(f"/api/instances/{ct['row_id']}").json()["tags"]}
    assert tags["Modality"]["value"] == "CT" and tags["Modality"]["tag"] == "(0008,0060)"
    assert tags["PixelData"]["bytes"] == 128 * 128 * 2  # a BulkDataURI, shown by its size
    assert tags["TransferSyntaxUID"]["vr"] == "UI"  # the file meta group is there too
    rt = _series(http, modality="RTSTRUCT")["items"][0]
    row_id = http.get(f"/api/series/{rt['SeriesInstanceUID']}").json()["instances"][0]["row_id"]
    rows = http.get(f"/api/instances/{row_id}").json()["tags"]
    sequences = [r for r in rows if r["vr"] == "SQ"]
    assert sequences and any(r["items"] and r["items"][0] for r in sequences)
    assert http.get("/api/instances/1").status_code == 404


def test_download_streams_lake_files_only(http: httpx.Client, lake: str) -> None:
    ct = http.get(f"/api/series/{_uid_of(http, 'Chest CT')}").json()["instances"][0]
    response = http.get("/api/download", params={"path": ct["path"]})
    assert response.status_code == 200
    with open_ref(ct["path"]) as handle:
        assert response.content == handle.read()
    assert 'filename="slice-b.dcm"' in response.headers["content-disposition"]
    assert http.get(ct["download"]).content == response.content
    for path in ("file:///etc/passwd", "/etc/passwd", ct["path"] + "x", f"file://{lake}"):
        response = http.get("/api/download", params={"path": path})
        assert response.status_code == 404
        assert "root:" not in response.text
    assert http.get("/api/download").status_code == 400


def test_pages_escape_file_names_and_tags(http: httpx.Client) -> None:
    page = http.get(f"/series/{_uid_of(http, XSS_DESCRIPTION)}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<script>alert(1)" not in text and XSS_DESCRIPTION not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.dcm" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "it&#x27;s &quot;quoted&quot;.dcm" in text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    missing = http.get("/series/<b>nope</b>")
    assert missing.status_code == 404 and "<b>nope" not in missing.text


def test_unknown_host_names_are_refused(http: httpx.Client) -> None:
    # a DNS-rebinding page would send its own host name
    assert http.get("/api/facets", headers={"Host": "evil.example"}).status_code == 400
    facets = http.get("/api/facets").json()
    assert {f["value"] for f in facets["modality"]} == {"CT", "MR", "US", "RTSTRUCT"}
    assert facets["status"] == {"ok": 9, "error": 2, "not_dicom": 3}


# --------------------------------------------------------------------------- other lakes


def test_paging_a_lake_of_100000_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.testclient import TestClient

    lake = str(tmp_path / "big")
    write_big_lake(lake, 100_000)
    fetched: list[int] = []  # rows DuckDB handed to Python, per query
    real_fetch = Cursor.fetch

    def counted(self: Cursor, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        rows = real_fetch(self, sql, params)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(Cursor, "fetch", counted)
    with TestClient(create_app(lake)) as client:
        client.get("/api/series", params={"limit": 1})
        fetched.clear()
        first = client.get("/api/series").json()
        assert len(first["items"]) == 48 and first["total"] == 100_000
        assert first["next_offset"] == 48
        # paged in SQL: one query, and only the page's rows reach Python, never the
        # 100,000 series (nor a count of them made in Python)
        assert fetched == [48]
        fetched.clear()
        last = client.get("/api/series", params={"offset": 99_990, "limit": 48}).json()
        assert len(last["items"]) == 10 and last["next_offset"] is None
        assert fetched == [10]
        ct = client.get("/api/series", params={"modality": "CT", "offset": 48}).json()
        assert ct["total"] == 25_000 and ct["offset"] == 48 and len(ct["items"]) == 48
        assert all(i["Modality"] == "CT" for i in ct["items"])
        where = client.get("/api/series", params={"where": "row_id % 1000 = 0"}).json()
        assert where["total"] == 100
        beyond = client.get("/api/series", params={"offset": 100_000}).json()
        assert beyond["items"] == [] and beyond["total"] == 100_000
    assert max(fetched) <= 48  # no request of them all took more than a page


def test_viewer_sees_new_ingests(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    lake = str(tmp_path / "lake")
    (tmp_path / "a").mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), tmp_path / "a" / "ct.dcm")
    dicomlake.ingest([str(tmp_path / "a")], lake, workers=0)
    with TestClient(create_app(lake, check_every=0)) as client:
        assert client.get("/api/series").json()["total"] == 1
        assert client.get("/api/series").json()["items"][0]["thumbnail"] is None
        (tmp_path / "b").mkdir()
        shutil.copyfile(sample_file("MR_small.dcm"), tmp_path / "b" / "mr.dcm")
        # thumbnails for b's file, and, at the end of the run, for a's that had none
        summary = dicomlake.ingest([str(tmp_path / "b")], lake, workers=0, thumbnails=True)
        assert summary.thumbnails == 2
        items = client.get("/api/series").json()["items"]
        assert len(items) == 2 and all(i["thumbnail"] for i in items)


def test_slow_queries_are_interrupted(lake: str) -> None:
    db = LakeConnection(lake, timeout=0.2)
    with db.cursor() as cur, pytest.raises(QueryTimeout):
        cur.fetch("SELECT count(*) FROM instances a, range(100000000000) b")
    with db.cursor() as cur:  # the pooled cursor still works afterwards
        assert cur.fetch("SELECT count(*) FROM instances")[0][0] == 14
    db.close()


def test_missing_web_extra_names_the_install(lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ImportError, match=r"pip install 'dicomlake\[web\]'"):
        create_app(lake)
    result = CliRunner().invoke(cli_app, ["serve", "--lake", lake])
    assert result.exit_code == 2 and "dicomlake[web]" in result.output


def test_cli_serve(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli_app, ["serve", "--help"])
    assert result.exit_code == 0 and "--port" in result.output
    result = runner.invoke(cli_app, ["serve", "--lake", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no instances table" in result.output


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as instance:
        yield instance


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def on_dialog(dialog: Any) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.set_default_timeout(10_000)
    yield tab
    context.close()
    assert problems == []


def _images_loaded(page: Any, selector: str, n: int) -> None:
    """Wait until ``n`` images match and every one has decoded (naturalWidth > 0)."""
    page.wait_for_function(
        """([selector, n]) => {
            const images = [...document.querySelectorAll(selector)];
            return images.length === n && images.every((i) => i.complete && i.naturalWidth > 0);
        }""",
        arg=[selector, n],
    )


def _cards_loaded(page: Any, n: int) -> None:
    page.wait_for_function(f"() => document.querySelectorAll('#grid .card').length === {n}")


@pytest.mark.slow
def test_browser_gallery_and_filters(page: Any, artifacts: Path) -> None:
    page.goto("/")
    _cards_loaded(page, 6)
    _images_loaded(page, "#grid .card img", 5)
    assert page.locator("#grid .placeholder").count() == 1  # the RT structure set
    assert page.locator("#grid .card .title", has_text=XSS_DESCRIPTION).count() == 1
    page.wait_for_function(
        "() => document.querySelector('select[name=modality]').options.length > 1"
    )
    page.screenshot(path=str(artifacts / "gallery.png"), full_page=True)
    page.select_option("select[name=modality]", "CT")
    _cards_loaded(page, 1)
    assert "modality=CT" in page.url
    page.select_option("select[name=modality]", "MR")
    _cards_loaded(page, 3)
    page.fill("input[name=q]", "brain")
    page.click("button[type=submit]")
    _cards_loaded(page, 1)
    page.click("#clear")
    _cards_loaded(page, 6)


@pytest.mark.slow
def test_browser_malicious_where_shows_an_error(page: Any, artifacts: Path) -> None:
    page.goto("/")
    _cards_loaded(page, 6)
    page.click("#advanced summary")
    for clause in MALICIOUS_WHERE[:4]:
        page.fill("textarea[name=where]", clause)
        page.click("button[type=submit]")
        page.wait_for_selector("#message:not([hidden])")
        _cards_loaded(page, 0)
        assert page.locator("#message").inner_text().strip()
        assert "root:" not in page.content()
    page.screenshot(path=str(artifacts / "bad-where.png"), full_page=True)
    page.fill("textarea[name=where]", "Modality = 'US'")
    page.click("button[type=submit]")
    _cards_loaded(page, 1)
    assert page.locator("#message").is_hidden()


@pytest.mark.slow
def test_browser_status_filter_lists_failures(page: Any, artifacts: Path) -> None:
    page.goto("/")
    _cards_loaded(page, 6)
    page.select_option("select[name=status]", "error")
    page.wait_for_selector("#failures:not([hidden])")
    page.wait_for_function("() => document.querySelectorAll('#failures tbody tr').length === 2")
    assert page.locator("#grid").is_hidden()
    rows = page.locator("#failures tbody tr")
    assert "truncated-header.dcm" in rows.all_inner_texts()[1]
    assert page.locator("#failures td.err").first.inner_text().strip()
    assert page.locator("select[name=modality]").is_disabled()
    page.screenshot(path=str(artifacts / "failures.png"), full_page=True)
    page.select_option("select[name=status]", "failed")
    page.wait_for_function("() => document.querySelectorAll('#failures tbody tr').length === 5")


@pytest.mark.slow
def test_browser_series_page(page: Any, http: httpx.Client, artifacts: Path) -> None:
    page.goto("/?modality=CT")
    _cards_loaded(page, 1)
    page.click("#grid .card")
    page.wait_for_selector("li.instance")
    assert page.locator("h1").inner_text() == "Chest CT"
    assert page.locator("li.instance h2").all_inner_texts() == [
        "Instance 1", "Instance 2", "Instance 3"
    ]  # fmt: skip
    _images_loaded(page, "img.frame", 3)
    first = page.locator("details.tags").first
    first.locator("summary").click()
    first.locator("table.tags").first.wait_for()
    assert first.locator("td.kw", has_text="PixelData").count() == 1
    assert "32,768 bytes" in first.locator("tr", has_text="PixelData").inner_text()
    page.screenshot(path=str(artifacts / "series.png"), full_page=True)
    assert page.locator("#back").get_attribute("href") == "/?modality=CT"

    # a multi-frame instance: a slider steps through the drawn frames
    page.goto(f"/series/{_uid_of_modality(http, 'MR', 10)}")
    slider = page.locator(".frames input[type=range]")
    assert slider.get_attribute("max") == "9"
    before = page.locator("img.frame").get_attribute("src")
    slider.fill("2")
    page.wait_for_function(
        "() => document.querySelector('.frames output').textContent === 'frame 3 / 10'"
    )
    assert page.locator("img.frame").get_attribute("src") != before
    page.wait_for_function("() => document.querySelector('img.frame').naturalWidth > 0")

    # sequences open as nested tables
    rt = _series(http, modality="RTSTRUCT")["items"][0]["SeriesInstanceUID"]
    page.goto(f"/series/{rt}")
    assert page.locator(".viewer .placeholder").count() == 1
    page.locator("details.tags summary").click()
    sequence = page.locator("details.sequence").first
    assert not sequence.locator(".item").first.is_visible()
    sequence.locator(":scope > summary").click()
    sequence.locator(":scope > .item > table.tags").first.wait_for()
    assert sequence.locator(":scope > .item > table.tags td.tag").first.is_visible()
    page.screenshot(path=str(artifacts / "tags.png"), full_page=False)


@pytest.mark.slow
def test_browser_shows_markup_as_text(page: Any, http: httpx.Client) -> None:
    page.goto(f"/series/{_uid_of(http, XSS_DESCRIPTION)}")
    page.wait_for_selector("li.instance")
    assert page.locator("h1").inner_text() == XSS_DESCRIPTION
    files = page.locator("li.instance .file").all_inner_texts()
    assert f"{SCRIPT_DIR}/{SCRIPT_NAME}" in files
    assert f"x/{QUOTED_NAME}" in files
    page.locator("details.tags summary").first.click()
    page.locator("table.tags").first.wait_for()
    assert page.locator("td.value", has_text=XSS_DESCRIPTION).count() == 1
    # the page fixture fails the test if any alert() dialog opened


@pytest.mark.slow
def test_browser_scrolling_loads_more_pages(browser: Any, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    write_big_lake(lake, 120)
    with LiveServer(lake) as live:
        context = browser.new_context(base_url=live.url, viewport={"width": 1200, "height": 800})
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto("/")
        _cards_loaded(page, 48)
        page.mouse.wheel(0, 100_000)
        page.wait_for_function("() => document.querySelectorAll('#grid .card').length > 48")
        page.mouse.wheel(0, 100_000)
        _cards_loaded(page, 120)
        assert page.locator("#summary").inner_text() == "Showing 120 of 120 series"
        assert page.locator("#more").is_hidden()
        context.close()
