"""A real PACS on this machine for the DICOMweb round trip: Orthanc with its DICOMweb plugin.

Debian's ``orthanc`` and ``orthanc-dicomweb`` (``make test`` installs them with ``apt-get``; ``make run`` never
needs them). ``python -m infrastructure.local_pacs`` starts one on 127.0.0.1 and prints its URLs; the
integration test starts its own with ``running_orthanc``. Storage lives in a temporary folder, gone when it stops.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PLUGIN_PACKAGE = "orthanc-dicomweb"
AE_TITLE = "LUNGSCANPACS"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (the executable or its DICOMweb plugin is not installed), else None."""
    if not shutil.which("Orthanc"):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb dcmtk)"
    if dicomweb_plugin() is None:
        return f"the {PLUGIN_PACKAGE} package (Orthanc's DICOMweb plugin) is not installed"
    return None


def dicomweb_plugin() -> Path | None:
    """The plugin's shared library, as the Debian package lists it."""
    try:
        listed = subprocess.run(["dpkg", "-L", PLUGIN_PACKAGE], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    libraries = [Path(line) for line in listed.splitlines() if "DicomWeb" in line and line.endswith(".so")]
    return next((path for path in libraries if path.is_file()), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    dicom_port: int
    user: str
    password: str
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def authorization(self) -> str:
        """The Authorization header value (HTTP Basic) Orthanc's REST and DICOMweb APIs require."""
        return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

    def rest(self, path: str):
        """GET Orthanc's own REST API (``/studies``, ``/instances/ID/tags``...) as JSON."""
        return json.loads(self.raw(path))

    def raw(self, path: str) -> bytes:
        """GET Orthanc's REST API as bytes (``/instances/ID/file``: the stored Part 10 file)."""
        request = urllib.request.Request(self.url + path, headers={"Authorization": self.authorization})
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()


def config(folder: Path, http_port: int, dicom_port: int, user: str, password: str) -> dict:
    return {
        "Name": "LungScan local PACS",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,  # 127.0.0.1 only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {user: password},
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,  # any modality may C-STORE, as a scanner does
        "Plugins": [str(dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": f"127.0.0.1:{http_port}", "Ssl": False},
    }


@contextmanager
def running_orthanc(
    folder: Path, timeout: float = 60, http_port: int | None = None, dicom_port: int | None = None
) -> Iterator[Orthanc]:
    """Orthanc on local ports (free ones by default), its storage in ``folder``; stopped (and waited for) on exit."""
    missing = orthanc_missing()
    if missing:
        raise RuntimeError(missing)
    folder.mkdir(parents=True, exist_ok=True)
    ports = (http_port or free_port(), dicom_port or free_port())
    orthanc = Orthanc(*ports, "lungscan", "local-pacs-password", folder / "orthanc.log")
    (folder / "orthanc.json").write_text(
        json.dumps(config(folder, orthanc.http_port, orthanc.dicom_port, orthanc.user, orthanc.password))
    )
    with orthanc.log.open("wb") as log:
        process = subprocess.Popen(["Orthanc", str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({process.returncode}): see {orthanc.log}")
            try:
                orthanc.rest("/system")
                break
            except (OSError, urllib.error.URLError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not answer in {timeout:.0f} s: see {orthanc.log}") from None
                time.sleep(0.2)
        yield orthanc
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http-port", type=int, default=8042, help="DICOMweb and REST (default: 8042)")
    parser.add_argument("--dicom-port", type=int, default=4242, help="DICOM C-STORE (default: 4242)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a plain kill still stops Orthanc and removes its files
    with (
        tempfile.TemporaryDirectory(prefix="lungscan-pacs-") as folder,
        running_orthanc(Path(folder), http_port=args.http_port, dicom_port=args.dicom_port) as orthanc,
    ):
        print(f"Orthanc (DICOMweb): {orthanc.dicomweb}  DICOM: 127.0.0.1:{orthanc.dicom_port} AE {AE_TITLE}")
        print(f"export LUNGSCAN_PACS_AUTHORIZATION='{orthanc.authorization}'   # Ctrl-C stops it")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
