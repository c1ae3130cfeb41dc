"""The NixOS ISO catalog entry and the checked, resumable download (served from 127.0.0.1)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from labkit.core.errors import InputError, LabkitError
from labkit.systems.nixos.media import CATALOG, ChecksumMismatch, Image, download, obtain, verify_file

DATA = bytes(range(256)) * 4096  # 1 MiB


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single `bytes=N-` ranges (what download() asks for)."""

    requests: list[str | None] = []  # noqa: RUF012

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    root = tmp_path / "srv"
    root.mkdir()
    (root / "nixos.iso").write_bytes(DATA)
    (root / "nixos.iso.sha256").write_text(f"{hashlib.sha256(DATA).hexdigest()}  nixos.iso\n")
    RangeHandler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


SHA = hashlib.sha256(DATA).hexdigest()


def test_catalog_entry() -> None:
    img = CATALOG["nixos-minimal"]
    assert img.url.startswith("https://") and img.url.endswith(".iso")
    assert img.sha256 is not None or (img.sha256_url or "").endswith(".sha256")


def test_download_with_progress(server: str, tmp_path: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    out = download(f"{server}/nixos.iso", tmp_path / "c" / "nixos.iso", SHA, progress=lambda d, t: seen.append((d, t)),
                   chunk=65536)
    assert out.read_bytes() == DATA and not (tmp_path / "c" / "nixos.iso.part").exists()
    assert seen[-1] == (len(DATA), len(DATA)) and len(seen) > 1
    # present and correct: used as is, no request
    n = len(RangeHandler.requests)
    download(f"{server}/nixos.iso", out, SHA)
    assert len(RangeHandler.requests) == n


def test_download_resumes_with_range(server: str, tmp_path: Path) -> None:
    dest = tmp_path / "nixos.iso"
    (tmp_path / "nixos.iso.part").write_bytes(DATA[:300_000])
    seen: list[tuple[int, int | None]] = []
    download(f"{server}/nixos.iso", dest, SHA, progress=lambda d, t: seen.append((d, t)))
    assert RangeHandler.requests == ["bytes=300000-"]
    assert dest.read_bytes() == DATA and seen[-1] == (len(DATA), len(DATA))


def test_checksum_checked_before_use(server: str, tmp_path: Path) -> None:
    with pytest.raises(ChecksumMismatch, match="expected sha256 0000"):
        download(f"{server}/nixos.iso", tmp_path / "x.iso", "0" * 64)
    assert not (tmp_path / "x.iso").exists() and not (tmp_path / "x.iso.part").exists()
    with pytest.raises(InputError, match="not a sha256"):
        download(f"{server}/nixos.iso", tmp_path / "x.iso", "abc")
    with pytest.raises(LabkitError, match="HTTP 404"):
        download(f"{server}/missing.iso", tmp_path / "y.iso", SHA)


def test_obtain_from_the_published_checksum_or_a_user_path(server: str, tmp_path: Path) -> None:
    img = Image("t", "1", f"{server}/nixos.iso", None, f"{server}/nixos.iso.sha256")
    assert obtain(img, tmp_path / "cache").read_bytes() == DATA
    mine = tmp_path / "mine.iso"
    mine.write_bytes(DATA)
    assert obtain(img, tmp_path / "cache2", user_path=mine) == mine
    mine.write_bytes(DATA[:-1] + b"x")
    with pytest.raises(ChecksumMismatch, match="damaged or another release"):
        verify_file(mine, SHA)
    local = Image("t", "1", (tmp_path / "mine.iso").as_uri(), SHA)
    with pytest.raises(ChecksumMismatch):
        obtain(local, tmp_path / "cache3")
