"""Tests of dicomlake.notebook.show: inline thumbnail grids for query results."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import duckdb
import pytest
from PIL import Image

import dicomlake
from dicomlake.notebook import ThumbnailGrid, show
from dicomlake.sample import sample_file
from helpers.lakes import build_lake

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("notebook")
    data = root / "data"
    data.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "rtstruct.dcm"):
        shutil.copyfile(sample_file(name), data / name)
    (data / "notes.txt").write_text("not DICOM")
    path = str(root / "lake")
    build_lake([str(data)], path)
    return path


def _images(grid: ThumbnailGrid) -> list[Image.Image]:
    html = grid._repr_html_()
    images = []
    for encoded in IMG.findall(html):
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        image.verify()  # a valid PNG, not just bytes
        images.append(Image.open(io.BytesIO(base64.b64decode(encoded))))
    return images


def test_show_a_relation_finds_its_lake(lake: str) -> None:
    con = dicomlake.connect(lake)
    grid = dicomlake.show(con.sql("SELECT * FROM instances WHERE status = 'ok' ORDER BY path"))
    images = _images(grid)
    assert len(images) == 3 and all(i.format == "PNG" and i.width > 0 for i in images)
    html = grid._repr_html_()
    assert html.count("no thumbnail") == 1  # the RT structure set has no pixels
    assert "grid-template-columns:repeat(4,160px)" in html
    assert repr(grid) == "ThumbnailGrid(4 rows, 3 with thumbnails, 0 not shown)"


def test_show_arrow_and_dicts_with_a_lake(lake: str) -> None:
    con = dicomlake.connect(lake)
    table = con.sql("SELECT row_id, Modality, path FROM instances ORDER BY path").to_arrow_table()
    grid = show(table, lake=lake, columns=2, size=96)
    assert len(_images(grid)) == 3 and len(grid.tiles) == 5
    assert "notes.txt" in [t.caption for t in grid.tiles]  # no Modality: the file name
    assert "repeat(2,96px)" in grid._repr_html_()
    assert len(_images(show(table.to_pylist(), lake=dicomlake.Lake(lake)))) == 3
    assert len(_images(show(table.to_pylist(), lake=con))) == 3


def test_show_caps_rows_and_says_how_many_were_left_out(lake: str) -> None:
    con = dicomlake.connect(lake)
    rows = con.sql("SELECT row_id FROM instances, range(30)")  # 150 rows
    grid = show(rows, limit=100)
    assert len(grid.tiles) == 100 and grid.left_out == 50
    assert "50 more rows not shown" in grid._repr_html_()
    assert len(_images(grid)) == 60


def test_show_escapes_captions(lake: str) -> None:
    row_id = dicomlake.connect(lake).sql("SELECT row_id FROM instances LIMIT 1").fetchall()[0][0]
    html = show([{"row_id": row_id, "SeriesDescription": "<script>x</script>"}], lake=lake)
    assert "<script>" not in html._repr_html_()
    assert "&lt;script&gt;" in html._repr_html_()


def test_show_needs_row_ids_and_a_lake(lake: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="row_id"):
        show(dicomlake.connect(lake).sql("SELECT path FROM instances"))
    with pytest.raises(ValueError, match="lake="):
        show([{"row_id": 1}])
    with pytest.raises(ValueError, match="lake="):
        show(duckdb.sql("SELECT 1 AS row_id"))
    with pytest.raises(TypeError):
        show(42, lake=lake)
    assert show([], lake=lake)._repr_html_() == '<p style="font:12px sans-serif">no rows</p>'
