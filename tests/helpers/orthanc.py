"""Orthanc, the reference PACS, as a peer: a real DICOMweb server to compare ours with.

Debian's ``orthanc`` with the ``orthanc-dicomweb`` plugin, started in a child process
on free loopback ports with its own generated configuration, storage and index in a
temporary folder, so a test or the benchmark never touches a system-wide Orthanc.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

#: Where Debian installs the server and the DICOMweb plugin.
ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: The skip reason when either is missing (``.ci/run`` installs both).
SKIP_REASON = "Orthanc not installed (apt-get install orthanc orthanc-dicomweb)"
#: Where the plugin answers, under Orthanc's HTTP root.
DICOMWEB_ROOT = "/dicom-web/"


def orthanc_binary() -> Path | None:
    """The Orthanc executable, or None: Debian's path first, then ``PATH``."""
    if ORTHANC_BINARY.is_file():
        return ORTHANC_BINARY
    found = shutil.which("Orthanc")
    return Path(found) if found else None


def orthanc_available() -> bool:
    """Whether both the server and its DICOMweb plugin are installed."""
    return orthanc_binary() is not None and DICOMWEB_PLUGIN.exists()


def _die_with_parent() -> None:
    """In the child before exec: on Linux, a SIGTERM when the test process dies, so a
    killed run leaves no Orthanc behind (``__exit__`` never runs then)."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    """A loopback port free right now (Orthanc binds it itself, a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OrthancServer:
    """An Orthanc with DICOMweb at ``dicomweb_url``, living for a ``with`` block.

    Everything it writes (configuration, storage, index, log) stays under ``tmp_dir``.
    ``options`` override or add configuration keys (e.g. ``StorageAccessOnFind``).
    Skips the calling test when Orthanc is missing; callers outside pytest check
    :func:`orthanc_available` first.
    """

    def __init__(self, tmp_dir: Path | str, **options: Any) -> None:
        self.folder = Path(tmp_dir)
        self.options = options
        self.http_port = 0
        self.dicom_port = 0
        self.url = ""
        self.dicomweb_url = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx.Client | None = None

    def config(self) -> dict[str, Any]:
        """The configuration: loopback only, no authentication, DICOMweb on, no state
        outside ``tmp_dir`` (no saved jobs, no WebDAV)."""
        storage = self.folder / "storage"
        return {
            "Name": "dicomlake-reference",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "DLREF",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpDescribeErrors": True,
            "WebDavEnabled": False,
            "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": DICOMWEB_ROOT,
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
            },
            **self.options,
        }

    def __enter__(self) -> OrthancServer:
        binary = orthanc_binary()
        if binary is None or not DICOMWEB_PLUGIN.exists():
            import pytest

            pytest.skip(SKIP_REASON)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = self.url + DICOMWEB_ROOT.rstrip("/")
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=2))
        self.log = self.folder / "orthanc.log"
        with self.log.open("wb") as log:
            # its own session, so a Ctrl-C at the terminal reaches it only through us
            self.process = subprocess.Popen(
                [str(binary), str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float = 60) -> None:
        """Until ``/system`` answers: the index is open and the plugin registered."""
        assert self.process is not None and self.client is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited ({self.process.returncode}):\n{self.log_tail()}"
                )
            try:
                if self.client.get("/system", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        """The end of Orthanc's log, for a failure message."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def upload(self, paths: Iterable[Path | str], workers: int = 1) -> list[str]:
        """Store files through the REST API (``POST /instances``); their Orthanc ids.

        ``workers`` > 1 uploads concurrently (Orthanc's HTTP server is threaded).
        Raises on any file Orthanc refuses.
        """
        assert self.client is not None, "upload inside the with block"
        client = self.client

        def one(path: Path | str) -> str:
            response = client.post(
                "/instances",
                content=Path(path).read_bytes(),
                headers={"Content-Type": "application/dicom"},
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"Orthanc refused {path}: {response.status_code} {response.text}"
                )
            answer = response.json()
            if answer.get("Status") not in ("Success", "AlreadyStored"):
                raise RuntimeError(f"Orthanc did not store {path}: {answer}")
            return str(answer["ID"])

        paths = list(paths)
        if workers <= 1:
            return [one(p) for p in paths]
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, paths))

    def __exit__(self, *exc: object) -> None:
        """Terminate, wait, kill if it will not go."""
        if self.client is not None:
            self.client.close()
            self.client = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, 9)
            process.wait()
