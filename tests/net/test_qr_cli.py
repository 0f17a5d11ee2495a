"""``dicomlake serve --dimse-port``: the DIMSE server beside the web server, from the CLI."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

import dicomlake
from dicomlake.cli import app
from dicomlake.sample import sample_file
from helpers.orthanc import free_port
from helpers.servers import wait_until_ready

DCMTK_SKIP = "dcmtk not installed (apt-get install dcmtk)"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("qr_cli")
    (root / "src").mkdir()
    shutil.copyfile(sample_file("CT_small.dcm"), root / "src" / "CT_small.dcm")
    dicomlake.ingest([str(root / "src")], str(root / "lake"), workers=0)
    return str(root / "lake")


def echo(port: int, aet: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    if shutil.which("echoscu") is None:
        pytest.skip(DCMTK_SKIP)
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", "DICOMLAKE", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def serve(lake: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dicomlake", "serve", "--lake", lake, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_echo(process: subprocess.Popen[str], port: int) -> None:
    wait_until_ready(
        lambda: True if echo(port).returncode == 0 else None, process, "the DIMSE server"
    )


def wait_for_web(process: subprocess.Popen[str], port: int) -> httpx.Response:
    """The first answer of the web server, which starts after the DIMSE one."""

    def get() -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        except httpx.ConnectError:
            return None

    return wait_until_ready(get, process, "the web server")


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


def test_serve_answers_dimse_beside_the_web(lake: str) -> None:
    web, dimse = free_port(), free_port()
    process = serve(lake, "--port", str(web), "--dimse-port", str(dimse))
    try:
        wait_for_echo(process, dimse)
        assert wait_for_web(process, web).status_code == 200
    finally:
        code, err = stop(process)
    assert code == 0, err
    assert "Traceback" not in err
    assert echo(dimse).returncode != 0  # stopped with the web server


def test_serve_no_web_with_an_allow_list(lake: str) -> None:
    dimse = free_port()
    process = serve(lake, "--no-web", "--dimse-port", str(dimse), "--dimse-allow-aet", "ECHOSCU")
    try:
        wait_for_echo(process, dimse)
        assert echo(dimse, aet="SOMEONE").returncode != 0
    finally:
        code, err = stop(process)
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-web"], "need --dimse-port"),
        (["--dimse-peer", "STORE=127.0.0.1:11113"], "need --dimse-port"),
        (["--dimse-port", "11112", "--dimse-peer", "nonsense"], "AET=HOST:PORT"),
        (["--dimse-port", "11112", "--dimse-peer", "STORE=host:99999"], "between 1 and 65535"),
        (["--dimse-port", "11112", "--dimse-aet", "A" * 17], "at most 16"),
        (["--dimse-port", "11112", "--host", "0.0.0.0", "--token", "t"], "--dimse-allow-aet"),
        (["--dimse-port", "11112", "--dimse-tls-key", "k.pem"], "needs --tls-cert"),
    ],
    ids=["no-web", "peer-without-port", "peer", "peer-port", "aet", "open-host", "tls"],
)
def test_bad_dimse_options_exit_2_with_one_line(lake: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["serve", "--lake", lake, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_missing_lake_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["serve", "--lake", str(tmp_path / "none"), "--no-web", "--dimse-port", "11112"]
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
