"""Media step on a synthetic ISO in the real Alpine layout, built with xorriso; media checksums."""

from __future__ import annotations

import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.systems.alpine.apkovl import ApkovlSpec
from labkit.systems.alpine.audit import read_apkovl
from labkit.systems.alpine.extract import extract_iso, inspect_iso, refind_linux_conf
from labkit.systems.alpine.media import CATALOG, fetch, find_release, obtain, parse_sha256_file, verify_file

LOADERS = ("boot/syslinux/isolinux.bin", "boot/syslinux/syslinux.cfg", "boot/grub/grub.cfg", "efi/boot/bootx64.efi")


def make_iso(tmp: Path, *, boot_repository: bool = True, kernel: bool = True, name: str = "alpine.iso") -> Path:
    src = tmp / f"src-{name}"
    files = {
        ".alpine-release": "3.20.3\n",
        "apks/x86_64/busybox-1.36.1-r29.apk": "apk",
        "apks/x86_64/APKINDEX.tar.gz": "index",
        "boot/initramfs-lts": "initramfs",
        "boot/modloop-lts": "modloop",
        "boot/config-lts": "config",
        "boot/System.map-lts": "map",
        **{p: "loader" for p in LOADERS},
    }
    if boot_repository:
        files["apks/.boot_repository"] = ""
    if kernel:
        files["boot/vmlinuz-lts"] = "kernel"
    for rel, text in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    iso = tmp / name
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "alpine-std 3.20.3 x86_64",
                    "-o", str(iso), str(src)], check=True, capture_output=True)
    return iso


def test_extract_keeps_boot_repository_and_drops_loaders(tmp_path: Path, runner: Runner) -> None:
    iso = make_iso(tmp_path)
    tree = tmp_path / "alpine"
    spec = ApkovlSpec(hostname="lab", media="vda4", root_size="256m", no_login=True)
    info = extract_iso(runner, iso, tree, spec=spec)
    assert info.release == "3.20.3" and info.flavors == ("lts",)
    got = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert got == [
        "apks/.boot_repository", "apks/x86_64/APKINDEX.tar.gz", "apks/x86_64/busybox-1.36.1-r29.apk",
        "boot/config-lts", "boot/initramfs-lts", "boot/modloop-lts", "boot/refind_linux.conf", "boot/vmlinuz-lts",
        "lab.apkovl.tar.gz",
    ]
    conf = (tree / "boot/refind_linux.conf").read_text()
    assert "modules=loop,squashfs,sd-mod,usb-storage" in conf and "console=ttyS0,115200" in conf
    assert "rootflags=size=256m" in conf and "root=" not in conf.replace("rootflags", "")
    assert read_apkovl(tree / "lab.apkovl.tar.gz").by_name()["etc/apk/cache"].target == "/media/vda4/cache"
    argvs = [r["argv"] for r in read_transcript(tmp_path / "transcript.jsonl") if r.get("event") == "command"]
    assert all(a[0] == "xorriso" for a in argvs)  # every external command went through the runner


def test_plan_mode_extracts_nothing(tmp_path: Path) -> None:
    iso = make_iso(tmp_path)
    runner = Runner(mode=Mode.PLAN, progress=None)
    extract_iso(runner, iso, tmp_path / "t")
    assert not (tmp_path / "t" / "apks").exists()
    assert [p.query for p in runner.planned] == [True, True, False]  # listing runs, extraction only planned


def test_bad_isos_rejected(tmp_path: Path, runner: Runner) -> None:
    with pytest.raises(InputError, match=r"no apks/\.boot_repository"):
        inspect_iso(runner, make_iso(tmp_path, boot_repository=False, name="nobr.iso"))
    with pytest.raises(InputError, match="has no kernel"):
        extract_iso(runner, make_iso(tmp_path, kernel=False, name="nok.iso"), tmp_path / "t")
    with pytest.raises(InputError, match="has no boot/vmlinuz-virt"):
        extract_iso(runner, make_iso(tmp_path, name="ok.iso"), tmp_path / "t", flavor="virt")
    with pytest.raises(InputError, match="does not exist"):
        inspect_iso(runner, tmp_path / "missing.iso")


def test_refind_linux_conf_hardware_has_no_serial() -> None:
    assert "ttyS0" not in refind_linux_conf("lts", lab=False)
    assert refind_linux_conf("virt").startswith('"Alpine Linux (virt)" "modules=loop,squashfs,sd-mod,usb-storage')


def test_cli_extract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    iso = make_iso(tmp_path)
    assert main(["alpine", "extract", str(iso), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out/apks/.boot_repository").is_file() and not (tmp_path / "out/boot/syslinux").exists()
    assert "Alpine 3.20.3 (lts)" in capsys.readouterr().out
    assert main(["alpine", "extract", str(make_iso(tmp_path, kernel=False, name="k.iso")), str(tmp_path / "o2")]) == 2


# -- media --------------------------------------------------------------------------------------
def test_catalog_urls() -> None:
    r = find_release("3.20.3", "virt")
    assert r.url == "https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/x86_64/alpine-virt-3.20.3-x86_64.iso"
    assert r.sha256_url.endswith(".iso.sha256") and r.kernel_flavor == "virt"
    assert {c.flavor for c in CATALOG} == {"standard", "extended", "virt"}
    with pytest.raises(InputError, match="no Alpine release"):
        find_release("9.9.9")


def test_checksum(tmp_path: Path, runner: Runner) -> None:
    p = tmp_path / "alpine-virt-3.20.3-x86_64.iso"
    p.write_bytes(b"iso bytes")
    good = hashlib.sha256(b"iso bytes").hexdigest()
    assert parse_sha256_file(f"{good}  {p.name}\n", p.name) == good
    verify_file(p, good)
    with pytest.raises(InputError, match="checksum mismatch .* expected sha256 0{64}, got " + good):
        verify_file(p, "0" * 64)
    with pytest.raises(InputError, match="not a sha256"):
        verify_file(p, "abc")
    release = find_release("3.20.3", "virt")
    assert obtain(runner, release, tmp_path, sha256=good, path=p) == p
    with pytest.raises(InputError, match="no sha256 known"):
        obtain(runner, release, tmp_path, path=p)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    payload = bytes(range(256)) * 400

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x.iso"
    httpd.shutdown()


def test_download_resumes_with_range(tmp_path: Path, server: str) -> None:
    dest = tmp_path / "x.iso"
    (tmp_path / "x.iso.part").write_bytes(_RangeHandler.payload[:5000])
    seen: list[tuple[int, int | None]] = []
    fetch(server, dest, progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == _RangeHandler.payload and not (tmp_path / "x.iso.part").exists()
    assert seen[0][0] > 5000 and seen[-1] == (len(_RangeHandler.payload), len(_RangeHandler.payload))
    verify_file(dest, hashlib.sha256(_RangeHandler.payload).hexdigest())
