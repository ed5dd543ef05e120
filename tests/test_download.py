"""The download path against a local HTTP server and file:// URLs, and local archives."""
from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from tsloc.data.download import ARCHIVES, download, fetch_official, verify
from tsloc.data.belgiumtsc import folder_digest
from tsloc.errors import DataError


def _zip_official(layout: Path, out: Path) -> dict:
    """The two official zips (Training/..., Testing/...) and the digests of their contents."""
    out.mkdir(parents=True, exist_ok=True)
    for split, name in ARCHIVES.items():
        with zipfile.ZipFile(out / name, "w") as z:
            for p in sorted((layout / split).rglob("*")):
                z.write(p, p.relative_to(layout).as_posix())
    return {split: folder_digest(layout, split) for split in ARCHIVES}


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = Path(self.directory) / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if self.truncate else data)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    def serve(truncate=False):
        handler = type("H", (_Handler,), {"truncate": truncate})
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_port}/"

    servers = []
    yield root, serve
    for s in servers:
        s.shutdown()


def test_fetch_from_http_server_and_verify(tiny_layout, tmp_path, server):
    www, serve = server
    expected = _zip_official(tiny_layout, www)
    url = serve()
    root = fetch_official(url, tmp_path / "downloads", tmp_path / "raw", expected)
    assert verify(root, expected) == expected
    assert (root / "Training" / "00000" / "00001_00000.ppm").read_bytes() == \
        (tiny_layout / "Training" / "00000" / "00001_00000.ppm").read_bytes()


def test_checksum_mismatch_is_refused(tiny_layout, tmp_path, server):
    www, serve = server
    expected = _zip_official(tiny_layout, www)
    expected["Testing"] = {"files": expected["Testing"]["files"], "digest": "0" * 64}
    with pytest.raises(DataError, match=r"Testing: checksum mismatch.*Delete .*downloads"):
        fetch_official(serve(), tmp_path / "downloads", tmp_path / "raw", expected)


def test_interrupted_download_leaves_nothing(tiny_layout, tmp_path, server):
    www, serve = server
    _zip_official(tiny_layout, www)
    url = serve(truncate=True) + ARCHIVES["Training"]
    dest = tmp_path / "dl" / ARCHIVES["Training"]
    with pytest.raises(DataError, match="interrupted download"):
        download(url, dest)
    assert list((tmp_path / "dl").iterdir()) == []


def test_missing_file_on_server(tmp_path, server):
    _, serve = server
    with pytest.raises(DataError, match="download failed.*404"):
        download(serve() + "nothing.zip", tmp_path / "x.zip")


def test_file_url(tiny_layout, tmp_path):
    expected = _zip_official(tiny_layout, tmp_path / "mirror")
    root = fetch_official((tmp_path / "mirror").as_uri(), tmp_path / "downloads", tmp_path / "raw", expected)
    assert (root / "Testing" / "00000" / "GT-00000.csv").exists()


def test_ingest_local_archives_tar_and_zip(tiny_layout, tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    shutil.make_archive(str(archives / "BelgiumTSC_Training"), "gztar", tiny_layout, "Training")
    with zipfile.ZipFile(archives / "BelgiumTSC_Testing.zip", "w") as z:
        for p in sorted((tiny_layout / "Testing").rglob("*")):
            z.write(p, p.relative_to(tiny_layout).as_posix())
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(f"data: {{source: local, path: {archives}}}\n")
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "ingest"], cwd=work, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    meta = (work / "data" / "metadata.csv").read_text().splitlines()
    assert len(meta) == 1 + 6 and all(",data/raw/" in line for line in meta[1:])
    assert json.loads((work / "reports" / "ingest.json").read_text())["Training"]["fingerprint"] == \
        folder_digest(tiny_layout, "Training")


def test_broken_archive(tmp_path):
    archives = tmp_path / "archives"
    archives.mkdir()
    (archives / "BelgiumTSC_Training.zip").write_bytes(b"PK not really")
    (tmp_path / "params.yaml").write_text(f"data: {{source: local, path: {archives}}}\n")
    proc = subprocess.run([sys.executable, "-m", "tsloc.cli", "ingest"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "BelgiumTSC_Training.zip: cannot extract" in proc.stderr
    assert not (tmp_path / "data" / "raw").exists()
