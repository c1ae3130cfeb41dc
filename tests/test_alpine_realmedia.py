"""The real-media lab path, proven on labkit's rehearsal ISO (Alpine's ISO layout, labelled rehearsal):
build, checksum (a tampered ISO is refused), extraction + labkit's apkovl, and one boot through
OVMF → rEFInd → the Alpine partition with the bundle collected over serial."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from rehearsal_alpine_iso import RehearsalIso, build_rehearsal_iso

from labkit.core.data import GUEST_DIR as DATA_DIR
from labkit.core.errors import InputError
from labkit.core.runner import Runner
from labkit.lab.run import LabParams, run_lab
from labkit.phases.alpine_media import prepare_alpine_partition
from labkit.rehearsal import obtain_kernel
from labkit.rehearsal.build import apkovl_bytes, lab_apkovl_spec
from labkit.rehearsal.kernel import default_kernel_cache
from labkit.rehearsal.payloads import REHEARSAL_MARKER, alpine_base_payload
from labkit.systems.alpine.apkindex import read_apkindex
from labkit.systems.alpine.audit import read_apkovl
from labkit.systems.alpine.extract import inspect_iso
from labkit.systems.alpine.media import check_iso, is_rehearsal_release, parse_sha256_file

ISO_NAME = "labkit-rehearsal-x86_64.iso"


@pytest.fixture(scope="module")
def mrunner() -> Runner:
    return Runner(progress=None)


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory, mrunner: Runner) -> RehearsalIso:
    kernel = obtain_kernel(mrunner, default_kernel_cache())
    out = tmp_path_factory.mktemp("iso") / ISO_NAME
    t0 = time.monotonic()
    built = build_rehearsal_iso(mrunner, kernel, out, world="small")
    print(f"rehearsal ISO built in {time.monotonic() - t0:.1f} s, {out.stat().st_size / 2**20:.1f} MiB")
    return built


def test_rehearsal_iso_has_alpines_layout_and_says_rehearsal(iso: RehearsalIso, mrunner: Runner) -> None:
    info = inspect_iso(mrunner, iso.path)
    assert is_rehearsal_release(info.release) and "not Alpine Linux" in info.release
    assert info.flavors == ("lts",)
    for f in (".alpine-release", "apks/.boot_repository", "apks/x86_64/APKINDEX.tar.gz", "apks/x86_64/LABKIT-INDEX",
              "boot/vmlinuz-lts", "boot/initramfs-lts", "boot/modloop-lts", "boot/config-lts",
              "boot/syslinux/syslinux.cfg", "boot/grub/grub.cfg", "efi/boot/bootx64.efi"):
        assert f in info.files, f
    assert any(f.startswith("apks/x86_64/busybox-static-") and f.endswith(".apk") for f in info.files)
    pvd = subprocess.run(["xorriso", "-indev", str(iso.path), "-pvd_info"], capture_output=True, text=True).stdout
    assert "labkit-rehearsal" in pvd
    # the published checksum format, next to the ISO
    assert iso.sha256_file == iso.path.with_name(ISO_NAME + ".sha256")
    assert parse_sha256_file(iso.sha256_file.read_text(), ISO_NAME) == iso.sha256
    assert iso.sha256_file.read_text() == f"{iso.sha256}  {ISO_NAME}\n"


def test_checksum_checked_and_tampered_iso_refused(iso: RehearsalIso, tmp_path: Path) -> None:
    assert check_iso(iso.path) == (iso.sha256, str(iso.sha256_file))
    assert check_iso(iso.path, iso.sha256.upper()) == (iso.sha256, "given")
    bad = tmp_path / ISO_NAME
    shutil.copyfile(iso.path, bad)
    shutil.copyfile(iso.sha256_file, tmp_path / (ISO_NAME + ".sha256"))
    with open(bad, "r+b") as fh:  # one byte changed in the middle of the image
        fh.seek(bad.stat().st_size // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(InputError, match="checksum mismatch"):
        check_iso(bad)
    with pytest.raises(InputError, match="checksum mismatch"):
        prepare_alpine_partition(Runner(progress=None), bad, tmp_path / "tree")
    assert not (tmp_path / "tree").exists()  # nothing extracted from a refused ISO
    (tmp_path / (ISO_NAME + ".sha256")).unlink()
    with pytest.raises(InputError, match="no checksum"):
        check_iso(bad)
    with pytest.raises(InputError, match="not a sha256"):
        run_lab(LabParams(out=tmp_path / "r", systems=("alpine",), alpine_iso=iso.path, alpine_iso_sha256="abc"),
                progress=None)


def test_extraction_and_labkits_apkovl(iso: RehearsalIso, tmp_path: Path) -> None:
    tree = tmp_path / "alpine"
    guest, media = prepare_alpine_partition(Runner(progress=None), iso.path, tree)
    assert (tree / "apks" / ".boot_repository").is_file()
    for gone in ("boot/syslinux", "boot/grub", "efi", ".alpine-release"):
        assert not (tree / gone).exists(), gone
    assert sorted(p.name for p in (tree / "boot").iterdir()) == [
        "config-lts", "initramfs-lts", "modloop-lts", "refind_linux.conf", "vmlinuz-lts"]
    # labelled rehearsal everywhere; the apkovl itself is the one real media gets
    assert guest.os_id == "alpine-rehearsal" and media.rehearsal and "rehearsal" in guest.entry.title
    assert guest.entry.cmdline == "modules=loop,squashfs,sd-mod,usb-storage quiet console=ttyS0,115200"
    assert (guest.entry.kernel, guest.entry.initrd) == ("boot/vmlinuz-lts", "boot/initramfs-lts")
    conf = (tree / "boot" / "refind_linux.conf").read_text()
    assert conf.startswith('"Alpine-style rehearsal ISO (lts)" "modules=loop,squashfs,sd-mod,usb-storage')
    assert "console=ttyS0,115200" in conf
    ovl = read_apkovl(tree / "alpinelab.apkovl.tar.gz").by_name()
    with tarfile.open(tree / "alpinelab.apkovl.tar.gz") as tar:
        text = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar if m.isfile()}
    assert text["etc/labkit-os"] == b"alpine\n"
    assert ovl["etc/local.d/labkit-probe.start"].mode == 0o755
    assert ovl["etc/runlevels/default/local"].target == "/etc/init.d/local"
    assert b"LBU_MEDIA=vda4" in text["etc/lbu/lbu.conf"]
    assert "etc/inittab" not in ovl and not any(n.startswith("etc/init.d/") for n in ovl)  # config only
    world = text["etc/apk/world"].decode().split()
    assert "alpine-base" in world and "gdisk" in world and media.world_source == "iso repository (rehearsal)"
    names = {p.name for p in read_apkindex(tree / "apks" / "x86_64" / "APKINDEX.tar.gz")}
    assert set(world) - {"alpine-base"} <= names
    rec = media.record()
    assert rec["rehearsal_iso"] is True and rec["sha256"] == iso.sha256 and rec["iso"] == str(iso.path.resolve())
    # a world naming a package the ISO lacks is refused before anything boots
    with pytest.raises(InputError, match="not in the APKINDEX"):
        prepare_alpine_partition(Runner(progress=None), iso.path, tmp_path / "t2", world=("alpine-base", "firefox"))


def test_base_package_carries_the_rehearsal_init(mrunner: Runner) -> None:
    paths = {e.path: e for e in alpine_base_payload(mrunner).entries}
    assert {"etc/inittab", REHEARSAL_MARKER, "sbin/init", "bin/busybox", "sbin/openrc", "sbin/openrc-run",
            "etc/init.d/local", "etc/init.d/modloop", "etc/init.d/hostname", "etc/insserv.conf"} <= set(paths)
    assert "::wait:/sbin/openrc default" in paths["etc/inittab"].source.read_text()  # type: ignore[union-attr]
    assert not any(p.startswith("etc/runlevels/") for p in paths)  # the runlevels come from the apkovl
    assert paths[REHEARSAL_MARKER].data == b"alpine-rehearsal\n"
    # the rehearsal tree's overlay is labkit's declarative apkovl (one writer), config only
    ovl = apkovl_bytes("alpinelab", ["gdisk"])
    from labkit.systems.alpine.apkovl import build_apkovl

    assert ovl == build_apkovl(lab_apkovl_spec("alpinelab", ["gdisk"]))


@pytest.mark.parametrize(("marker", "os_id", "guest"),
                         [(True, "alpine-rehearsal", "rehearsal"), (False, "alpine", "real")])
def test_probe_os_id_rehearsal_marker_wins(tmp_path: Path, marker: bool, os_id: str, guest: str) -> None:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "proc" / "uptime").write_text("3.14 2.00\n")
    (root / "proc" / "meminfo").write_text("MemTotal:         468400 kB\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet\n")
    (root / "etc" / "labkit-os").write_text("alpine\n")  # what labkit's apkovl writes
    if marker:
        (root / REHEARSAL_MARKER).write_text("alpine-rehearsal\n")  # what the rehearsal base package ships
    out = tmp_path / "out"
    env = {**os.environ, "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
           "LABKIT_PROBE_DMESG": "/dev/null", "TMPDIR": str(tmp_path)}
    subprocess.run(["busybox", "sh", str(DATA_DIR / "probe.sh")], env=env, check=True, timeout=30)
    assert out.read_text().startswith(f"@@LABKIT-BUNDLE-BEGIN v=1 os={os_id} guest={guest}@@")


@pytest.mark.boot
def test_lab_boots_the_rehearsal_iso_via_refind(iso: RehearsalIso, tmp_path: Path) -> None:
    t0 = time.monotonic()
    # a fixed boot list (max_boots=1: the adaptive rule would add boots on a busy host)
    run = run_lab(LabParams(out=tmp_path / "run", systems=("alpine",), boots=1, max_boots=1, warmup=0,
                            alpine_iso=iso.path, load_cost=False), progress=None)
    took = time.monotonic() - t0
    d = run.run_dir
    assert not run.failed, [b.reason for b in run.failed]
    assert [(b.os, b.boot, b.ok) for b in run.boots] == [("alpine", 0, True)]
    print(f"lab run on the rehearsal ISO: {took:.1f} s, boot {run.boots[0].wall_s:.1f} s wall")
    log = (d / "serial" / "alpine-0.log").read_text(encoding="utf-8")
    # rEFInd's manual stanza loads Alpine's kernel + initramfs from the ext4 partition with Alpine's kernel line
    assert "rEFInd" in log and "Starting vmlinuz-lts" in log
    assert "Using load options 'modules=loop,squashfs,sd-mod,usb-storage quiet console=ttyS0,115200 " \
           "initrd=\\boot\\initramfs-lts'" in log
    bundle = (d / "bundles" / "alpine-0.txt").read_text()
    assert bundle.startswith("@@LABKIT-BUNDLE-BEGIN v=1 os=alpine-rehearsal guest=rehearsal@@")
    assert "modules=loop,squashfs,sd-mod,usb-storage" in bundle
    assert "Installing packages to root filesystem: ok." in bundle
    assert "Loading user settings from /media/vda4/alpinelab.apkovl.tar.gz: ok." in bundle
    with open(d / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {(r["os"], r["guest"]) for r in rows} == {("alpine-rehearsal", "rehearsal")}
    metrics = {r["metric"] for r in rows}
    assert {"total_to_probe_s", "alpine_package_load_s", "ram_used_mib"} <= metrics
    env = json.loads((d / "environment.json").read_text())
    media = env["extra"]["alpine_media"]
    assert media["rehearsal_iso"] is True and media["sha256"] == iso.sha256 and media["iso"].endswith(ISO_NAME)
    assert env["extra"]["guest_kind"] == "rehearsal"
    assert env["extra"]["guests"]["alpine"]["os_id"] == "alpine-rehearsal"
    assert env["params"]["alpine_iso"] == str(iso.path)
    html = (d / "report.html").read_text(encoding="utf-8")
    assert "alpine-rehearsal" in html and "rehearsal" in html


def test_cli_lab_alpine_iso_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli import main as cli

    assert cli.main(["lab", "--out", str(tmp_path / "r"), "--alpine-iso", str(tmp_path / "none.iso")]) == 2
    assert "--alpine-iso" in capsys.readouterr().err and not (tmp_path / "r").exists()
    args = cli.build_parser().parse_args(["lab", "--alpine-iso", "a.iso", "--alpine-iso-sha256", "0" * 64,
                                          "--alpine-world", "alpine-base", "openssh"])
    assert (args.alpine_iso, args.alpine_iso_sha256, args.alpine_world) == ("a.iso", "0" * 64,
                                                                            ["alpine-base", "openssh"])
