"""The hardware reboot loop: the probe's bundle on /data, the firmware section, the loop's state machine
(labkit/data/guest/loop.sh run by the real busybox sh), refind.conf edits on a real FAT ESP (mtools), collect
from a real ext4 image (mkfs.ext4 -d), arm/disarm."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import synth

from labkit.core.console import SerialLine
from labkit.core.data import GUEST_DIR, probe_script
from labkit.measure.bundle import extract_bundles, parse_bundle_text
from labkit.measure.metrics import measure_bundle
from labkit.measure.parsers import FORMATS, detect_format
from labkit.measure.parsers.firmware import firmware_times, parse_firmware

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox")
APPLETS = ("sh", "awk", "md5sum", "df", "uname", "cat", "rm", "mkdir", "cp", "mv", "sync", "tr", "tail", "ls",
           "date", "grep", "sleep", "echo", "umount", "mount", "findfs")
BOOT_ID = "0b6c4b5e-1111-4222-8333-444455556666"
GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def _bindir(tmp: Path) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    assert BUSYBOX
    for applet in APPLETS:
        if not (bindir / applet).exists():
            (bindir / applet).symlink_to(BUSYBOX)
    return bindir


def _guest_root(tmp: Path, os_id: str = "alpine", *, data: bool = True, boot_id: str = BOOT_ID) -> Path:
    root = tmp / "root"
    for d in ("proc/sys/kernel/random", "etc", "data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "proc" / "uptime").write_text("7.12 6.40\n")
    (root / "proc" / "meminfo").write_text(synth.MEMINFO.format(shmem=18234) + "\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet\n")
    (root / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")
    mounts = "tmpfs / tmpfs rw 0 0\n" + ("/dev/vda5 /data ext4 rw,noatime 0 0\n" if data else "")
    (root / "proc" / "mounts").write_text(mounts)
    (root / "etc" / "labkit-os").write_text(os_id + "\n")
    return root


def run_probe(tmp: Path, root: Path, extra_env: dict[str, str] | None = None) -> str:
    """probe_script() (probe.sh with loop.sh inlined) under busybox sh with busybox applets only; the console."""
    bindir = _bindir(tmp)
    probe = tmp / "probe.sh"
    probe.write_bytes(probe_script())
    dmesg = tmp / "dmesg.txt"
    dmesg.write_text(synth.dmesg_alpine(2.356789, 3.5, 5.25, 5.3) + "\n")
    out = tmp / "console.txt"
    out.write_text("")
    env = {"PATH": str(bindir), "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
           "LABKIT_PROBE_DMESG": str(dmesg), "TMPDIR": str(tmp), "LABKIT_PROBE_SETTLE": "0",
           "LABKIT_PROBE_GUNZIP": "0", **(extra_env or {})}
    subprocess.run([str(bindir / "sh"), str(probe)], env=env, check=True, timeout=60)
    return out.read_text()


# -- 1. the bundle on /data ----------------------------------------------------------------------------
def test_probe_saves_its_bundle_on_data_atomically(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "alpine")
    console = run_probe(tmp_path, root)
    saved = root / "data" / "labkit" / "bundles" / f"alpine-{BOOT_ID}.txt"
    assert saved.is_file(), console
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]  # no temporary file left
    from_file = parse_bundle_text(saved.read_text())
    (from_serial,) = extract_bundles(_lines(console))
    assert from_file.ok and from_file.sections == from_serial.sections and from_file.os == "alpine"
    assert f"bundle saved as /data/labkit/bundles/alpine-{BOOT_ID}.txt" in console


def test_probe_without_a_data_mount_saves_nothing(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos", data=False)
    console = run_probe(tmp_path, root)
    assert not (root / "data" / "labkit").exists()
    assert "bundle saved" not in console
    (b,) = extract_bundles(_lines(console))
    assert b.ok


def _lines(text: str) -> list[SerialLine]:
    return [SerialLine(1.0 + i / 1000, t) for i, t in enumerate(text.split("\n")) if t]


# -- 2. FPDT and the loader variables ---------------------------------------------------------------------
def _efivar(path: Path, value: str) -> None:
    path.write_bytes(b"\x06\x00\x00\x00" + (value + "\0").encode("utf-16-le"))


def test_probe_reads_fpdt_and_loader_variables(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos")
    fpdt = root / "sys" / "firmware" / "acpi" / "fpdt" / "boot"
    fpdt.mkdir(parents=True)
    values = {"firmware_start_ns": 0, "bootloader_load_ns": 2_100_000_000, "bootloader_launch_ns": 2_250_000_000,
              "exitbootservice_start_ns": 3_900_000_000, "exitbootservice_end_ns": 3_950_000_000}
    for k, v in values.items():
        (fpdt / k).write_text(f"{v}\n")
    (root / "sys" / "firmware" / "acpi" / "tables").mkdir()
    (root / "sys" / "firmware" / "acpi" / "tables" / "FPDT").write_bytes(b"FPDT")
    efivars = root / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    _efivar(efivars / f"LoaderInfo-{GUID}", "GRUB 2.12")
    console = run_probe(tmp_path, root)
    (b,) = extract_bundles(_lines(console))
    rec = parse_firmware(b.sections["firmware"])
    assert rec.fpdt == values and rec.loader_vars == {"LoaderInfo": "GRUB 2.12"}
    assert rec.flags == {"fpdt_table": True, "efi": True, "efivars": True}
    assert detect_format(b.sections["firmware"] + "\n") == "firmware" and FORMATS["firmware"] is parse_firmware
    m = {x.name: x for x in measure_bundle(b).metrics}
    assert m["firmware_s"].value == pytest.approx(2.25) and m["loader_s"].value == pytest.approx(1.7)
    assert "FPDT" in m["firmware_s"].source and "FPDT" in m["loader_s"].source


def test_loader_variables_when_there_is_no_fpdt(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos")
    efivars = root / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    _efivar(efivars / f"LoaderTimeInitUSec-{GUID}", "1500000")
    _efivar(efivars / f"LoaderTimeExecUSec-{GUID}", "2750000")
    (b,) = extract_bundles(_lines(run_probe(tmp_path, root)))
    m = {x.name: x for x in measure_bundle(b).metrics}
    assert m["firmware_s"].value == pytest.approx(1.5) and m["loader_s"].value == pytest.approx(1.25)
    assert "LoaderTimeInitUSec" in m["loader_s"].source


def test_no_fpdt_no_variables_is_missing_with_the_reason(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "alpine")
    (b,) = extract_bundles(_lines(run_probe(tmp_path, root)))
    why = measure_bundle(b).reasons()
    assert why["firmware_s"].startswith("no FPDT in sysfs") and "not booted through UEFI" in why["firmware_s"]
    assert why["loader_s"] == why["firmware_s"]


def test_firmware_parser_rules() -> None:
    rec = parse_firmware("fpdt absent\nfpdt_table present\nefi present\nefivars present\n"
                         "efivar LoaderTimeInitUSec absent\nefivar LoaderTimeExecUSec absent\n"
                         "efivar LoaderInfo absent\n")
    t = firmware_times(rec)
    assert t.firmware_s is None and "kernel does not expose it" in t.why and "rEFInd and GRUB set none" in t.why
    bad = parse_firmware("fpdt bootloader_launch_ns 0\nfpdt exitbootservice_end_ns 5\n")
    assert firmware_times(bad).firmware_s is None and "not usable" in firmware_times(bad).why
    from labkit.measure.bundle import SectionError

    with pytest.raises(SectionError, match=r"line 1.*unknown FPDT field"):
        parse_firmware("fpdt reset_end_ns 5\n")
    with pytest.raises(SectionError, match="not a whole number"):
        parse_firmware("fpdt bootloader_launch_ns -5\n")
    with pytest.raises(SectionError, match="expected"):
        parse_firmware("hello\n")


def test_loop_sh_is_inlined_once() -> None:
    text = probe_script().decode()
    assert "# @@include loop.sh@@" not in text and text.count("labkit_loop_decide() {") == 1
    assert (GUEST_DIR / "loop.sh").is_file()
