"""The NixOS real-media lab path: ISO boot files, the serial install sequence, and (boot) the whole
path on labkit's rehearsal installer ISO (NixOS-style, not NixOS): install over ttyS0, then
OVMF → rEFInd → GRUB → the installed system's probe bundle."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
from rehearsal_nixos_iso import RehearsalInstallerIso

from labkit.core.errors import InputError, LabkitError
from labkit.core.runner import Runner, read_transcript
from labkit.lab.nixos_install import (
    Edit,
    GuestInstallFailed,
    Put,
    Run,
    actions_text,
    drive_install,
    serial_actions,
)
from labkit.lab.serialshell import FdTransport, SerialShell
from labkit.phases.nixos import InstallParams
from labkit.rehearsal.kernel import GuestKernel
from labkit.systems.nixos.config import NixosSettings, User
from labkit.systems.nixos.iso import SERIAL_CONSOLE, IsoBootFiles, iso_boot_files, parse_grub, parse_isolinux

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl lab@labkit"
HASH = "$6$saltsaltsalt$" + "a" * 86  # the shape check only (sha-512 crypt)

# The shape of a real nixos-minimal ISO's isolinux.cfg (24.11): several entries, DEFAULT names one.
NIXOS_ISOLINUX = """\
SERIAL 0 115200
TIMEOUT 100
UI vesamenu.c32
MENU TITLE NixOS
DEFAULT boot

LABEL boot
MENU LABEL NixOS 24.11.717196.c6a788f552b7 Installer
LINUX /boot/bzImage
APPEND init=/nix/store/8i1h5qjnbbwx9w0d3mh7a8lzqlmvhn4w-nixos-system-nixos-24.11.717196.c6a788f552b7/init \
root=LABEL=nixos-minimal-24.11-x86_64 boot.shell_on_fail loglevel=4 console=ttyS0,115200n8 console=tty0
INITRD /boot/initrd

LABEL boot-nomodeset
MENU LABEL NixOS 24.11 Installer (nomodeset)
LINUX /boot/bzImage
APPEND init=/nix/store/x-nixos-system/init root=LABEL=nixos-minimal-24.11-x86_64 nomodeset
INITRD /boot/initrd
"""

NIXOS_GRUB = """\
set timeout=10
menuentry 'NixOS 24.11 Installer ' --class installer {
  # Fallback to UEFI console for boot, efifb sometimes has difficulties.
  terminal_output console
  linux /boot/bzImage ${isoboot} init=/nix/store/abc-nixos-system-nixos-24.11/init \
root=LABEL=nixos-minimal-24.11-x86_64 boot.shell_on_fail
  initrd /boot/initrd
}
menuentry 'NixOS 24.11 Installer (nomodeset)' {
  linux /boot/bzImage nomodeset
  initrd /boot/initrd
}
"""


def test_parse_isolinux_takes_the_default_entry() -> None:
    cfg = parse_isolinux(NIXOS_ISOLINUX)
    assert (cfg.kernel, cfg.initrd) == ("/boot/bzImage", "/boot/initrd")
    assert cfg.init == "/nix/store/8i1h5qjnbbwx9w0d3mh7a8lzqlmvhn4w-nixos-system-nixos-24.11.717196.c6a788f552b7/init"
    assert cfg.root_label == "nixos-minimal-24.11-x86_64"
    assert "nomodeset" not in cfg.cmdline
    boot = IsoBootFiles(Path("x.iso"), Path("k"), Path("i"), cfg, None)
    # the ISO's own serial console is replaced; ours comes last so it is /dev/console
    assert boot.append.endswith(" console=tty0 " + SERIAL_CONSOLE)
    assert boot.append.count("console=ttyS0") == 1
    assert (boot.os_id, boot.title) == ("nixos", "NixOS")


def test_parse_grub_drops_variables() -> None:
    cfg = parse_grub(NIXOS_GRUB)
    assert cfg.kernel == "/boot/bzImage" and cfg.initrd == "/boot/initrd"
    assert cfg.cmdline == ("init=/nix/store/abc-nixos-system-nixos-24.11/init root=LABEL=nixos-minimal-24.11-x86_64 "
                           "boot.shell_on_fail")


def test_parse_rejects_configs_without_an_entry() -> None:
    with pytest.raises(InputError, match="no boot entry with LINUX"):
        parse_isolinux("DEFAULT boot\nLABEL boot\nMENU LABEL x\n")
    with pytest.raises(InputError, match="no INITRD"):
        parse_isolinux("LABEL boot\nLINUX /boot/bzImage\nAPPEND init=/x\n")
    with pytest.raises(InputError, match="no menuentry"):
        parse_grub("set timeout=1\n")


def _iso(tmp: Path, files: dict[str, str]) -> Path:
    stage = tmp / "stage"
    for rel, text in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    iso = tmp / "test.iso"
    Runner(progress=None).run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-V", "nixos-minimal-24.11-x86_64",
                               "-o", iso, stage])
    return iso


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso missing")
def test_iso_boot_files_extracts_without_mounting(tmp_path: Path) -> None:
    iso = _iso(tmp_path, {"isolinux/isolinux.cfg": NIXOS_ISOLINUX, "boot/bzImage": "KERNEL", "boot/initrd": "INITRD",
                          "EFI/boot/grub.cfg": NIXOS_GRUB})
    runner = Runner(transcript=tmp_path / "t.jsonl", progress=None)
    boot = iso_boot_files(runner, iso, tmp_path / "out")
    assert boot.kernel.read_text() == "KERNEL" and boot.initrd.read_text() == "INITRD"
    assert boot.config.source == "/isolinux/isolinux.cfg" and boot.rehearsal is None
    argv0 = [e["argv"][0] for e in read_transcript(tmp_path / "t.jsonl") if e.get("event") == "command"]
    assert set(argv0) == {"xorriso"}  # no mount, no loop device
    # grub.cfg only (an EFI-only ISO), and a config naming a missing kernel
    iso2 = _iso(tmp_path / "b", {"EFI/boot/grub.cfg": NIXOS_GRUB, "boot/initrd": "I"})
    with pytest.raises(InputError, match=r"names /boot/bzImage, which the ISO does not hold"):
        iso_boot_files(runner, iso2, tmp_path / "out2")
    iso3 = _iso(tmp_path / "c", {"README": "not an installer"})
    with pytest.raises(InputError, match=r"isolinux\.cfg"):
        iso_boot_files(runner, iso3, tmp_path / "out3")


def test_serial_actions_follow_the_install_plan() -> None:
    acts = serial_actions(InstallParams(NixosSettings(user=User(hashed_password=HASH), tmpfs_size="256M")),
                          guest_memory_mib=512)
    steps = list(dict.fromkeys(a.step for a in acts))
    assert steps == ["mount tmpfs root", "mount partitions", "write configuration", "nixos-install", "grub-install",
                     "rEFInd ext4 driver", "verify installed system", "finish"]
    text = actions_text(acts)
    assert "grep -q ' /mnt ' /proc/mounts || mount -t tmpfs -o size=256M,mode=755 none /mnt" in text
    assert "mount -t vfat /dev/disk/by-label/ESP /mnt/boot/efi" in text
    assert ("NIXOS_CONFIG=/mnt/data/etc/nixos/configuration.nix TMPDIR=/mnt/nix/tmp nixos-install --root /mnt "
            "--no-root-passwd") in text
    grub = next(a for a in acts if isinstance(a, Run) and a.step == "grub-install")
    assert "--no-nvram" in grub.line and "--bootloader-id=NixOS" in grub.line and "modinfo.sh" in grub.line
    puts = {a.path: a for a in acts if isinstance(a, Put)}
    assert set(puts) == {"/mnt/data/etc/nixos/labkit.nix", "/mnt/data/etc/nixos/labkit-probe.sh"}
    assert HASH.encode() in puts["/mnt/data/etc/nixos/labkit.nix"].data
    assert any(isinstance(a, Edit) and a.path.endswith("configuration.nix") for a in acts)
    assert HASH in acts[-2].line  # verify: the hash is in the module on /data
    inst = next(a for a in acts if isinstance(a, Run) and a.step == "nixos-install")
    assert inst.timeout == 3600.0
    # the tmpfs size is checked against the installer VM's RAM
    with pytest.raises(InputError, match="RAM"):
        serial_actions(InstallParams(NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="2G")),
                       guest_memory_mib=512)


@pytest.fixture
def pty_shell(tmp_path: Path) -> Iterator[SerialShell]:
    if shutil.which("busybox") is None:
        pytest.skip("busybox missing")
    master, slave = os.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(["busybox", "sh", "-i"], stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=controlling_tty, cwd=tmp_path,
                            env={"PS1": "pty# ", "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)})
    os.close(slave)
    try:
        sh = SerialShell(FdTransport(master), runner=Runner(transcript=tmp_path / "t.jsonl", progress=None),
                         prompt=r"pty# $")
        sh.start(10)
        yield sh
    finally:
        proc.kill()
        proc.wait()
        os.close(master)


def test_drive_install_on_a_host_pty(pty_shell: SerialShell, tmp_path: Path) -> None:
    """Put (base64 in short lines, sha256 read back), Edit (read, change on the host, write back) and
    Run with exit status, against busybox sh behind a pty: no QEMU."""
    root = tmp_path / "root"
    data = bytes(range(256)) * 20  # 5 KiB of binary: several lines
    acts = [Run("prep", f"mkdir -p {root}/etc && echo 'old line' > {root}/etc/cfg"),
            Put("write", f"{root}/etc/blob", data, 0o600),
            Edit("edit", f"{root}/etc/cfg", lambda t: t.replace("old", "new"), "old -> new")]
    session = drive_install(pty_shell, acts, logged_in=True)
    assert (root / "etc" / "blob").read_bytes() == data
    assert (root / "etc" / "blob").stat().st_mode & 0o777 == 0o600
    assert (root / "etc" / "cfg").read_text() == "new line\n"
    assert not list((root / "etc").glob("*.labkit-part"))
    assert all(r.rc == 0 for r in session.records) and len(session.records) > 5
    # a failing command: its step, command and exit status
    with pytest.raises(GuestInstallFailed) as exc:
        drive_install(pty_shell, [Run("nixos-install", "echo 'no such option' >&2; sh -c 'exit 7'")],
                      logged_in=True, session=session)
    assert exc.value.rc == 7 and exc.value.step == "nixos-install"
    assert "exit status 7" in str(exc.value) and "no such option" in str(exc.value)
    assert session.records[-1].rc == 7
    assert json.loads(session.as_json())["commands"][-1]["rc"] == 7
    # a timeout is reported as such
    with pytest.raises(GuestInstallFailed, match="timed out") as exc2:
        drive_install(pty_shell, [Run("slow", "sleep 5", timeout=0.5)], logged_in=True, session=session)
    assert exc2.value.rc is None


# -- end to end on the rehearsal installer ISO --------------------------------------------------------
@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[GuestKernel, RehearsalInstallerIso]:
    from rehearsal_nixos_iso import build_rehearsal_installer_iso

    from labkit.rehearsal.kernel import default_cache_dir, obtain_kernel

    for tool in ("qemu-system-x86_64", "xorriso", "busybox", "grub-mkimage", "mkfs.vfat"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} missing")
    runner = Runner(progress=None)
    try:
        kernel = obtain_kernel(runner, default_cache_dir() / "kernel")
    except LabkitError as exc:
        pytest.skip(f"no guest kernel: {exc}")
    out = tmp_path_factory.mktemp("nixos-iso") / "nixos-rehearsal-installer.iso"
    return kernel, build_rehearsal_installer_iso(runner, kernel, out)


@pytest.mark.boot
def test_install_over_serial_and_boot_through_refind_grub(
    rehearsal: tuple[GuestKernel, RehearsalInstallerIso], tmp_path: Path
) -> None:
    from rehearsal_nixos_iso import FAIL_FLAG, VOLUME_ID

    from labkit.lab import qemu
    from labkit.lab.nixos_install import boot_installed, install_over_serial, installed_guest, target_image

    kernel, iso = rehearsal
    runner = Runner(transcript=tmp_path / "transcript.jsonl", progress=None)
    assert iso.sha256_file.read_text().split() == [iso.sha256, iso.path.name]
    boot = iso_boot_files(runner, iso.path, tmp_path / "bootfiles")
    assert boot.config.root_label == VOLUME_ID and boot.rehearsal is not None
    assert (boot.os_id, boot.title) == ("nixos-rehearsal", "NixOS-style rehearsal")
    image = target_image(runner, tmp_path / "disk.img", boot.title)
    params = InstallParams(NixosSettings(user=User(hashed_password=HASH), tmpfs_size="256M"))
    accel = qemu.choose_accelerator(runner, ("kvm", "tcg"), workdir=tmp_path / "accel").accel

    # 1. a failing install command (the stand-in nixos-install rejects an unknown flag, exit 1)
    bad = serial_actions(params, guest_memory_mib=512, nixos_install_args=(FAIL_FLAG,))
    with pytest.raises(GuestInstallFailed) as exc:
        install_over_serial(runner, boot, image.path, bad, log_dir=tmp_path / "fail", accel=accel, memory_mib=512)
    assert exc.value.step == "nixos-install" and exc.value.rc == 1
    assert f"unknown option '{FAIL_FLAG}'" in str(exc.value) and "install.log" in str(exc.value)
    assert "exit status 1" in str(exc.value)
    assert "nixos-install (labkit rehearsal): unknown option" in (tmp_path / "fail" / "install.log").read_text()

    # 2. the install, again on the same disk (mounts and the generated config are already there)
    good = serial_actions(params, guest_memory_mib=512)
    session = install_over_serial(runner, boot, image.path, good, log_dir=tmp_path / "ok", accel=accel,
                                  memory_mib=512)
    assert [r for r in session.records if r.rc != 0] == []
    log = (tmp_path / "ok" / "install.log").read_text()
    assert "installation finished! (labkit rehearsal)" in log and "Installation finished. No error reported." in log
    assert "warning: not overwriting existing /mnt/data/etc/nixos/configuration.nix" in log
    cmds = json.loads((tmp_path / "ok" / "install-commands.json").read_text())["commands"]
    assert {c["step"] for c in cmds} >= {"nixos-install", "grub-install", "verify installed system"}

    # 3. OVMF → rEFInd → GRUB → the installed system; the probe's bundle
    run_dir = tmp_path / "run"
    rec, rows = boot_installed(runner, image, installed_guest(boot, kernel.version), run_id="t", run_dir=run_dir,
                               accel=accel, timeout_s=300)  # systemd under TCG: ~1 min to the bundle
    assert rec.ok, rec.reason
    bundle = (run_dir / rec.bundle).read_text() if rec.bundle else ""
    assert "os=nixos-rehearsal" in bundle
    assert rows and all(r.os == "nixos-rehearsal" for r in rows)
    serial = (run_dir / rec.serial_log).read_text()
    assert "Welcome to GRUB!" in serial and "NixOS Stage 1 (labkit rehearsal, not NixOS)" in serial


def test_lab_nixos_iso_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli import main as cli
    from labkit.lab.run import LabParams, lab_plan

    iso = tmp_path / "nixos.iso"
    iso.write_bytes(b"x")
    with pytest.raises(InputError, match="no way in"):
        LabParams(nixos_iso=iso).validate()
    with pytest.raises(InputError, match="nixos is not among"):
        LabParams(nixos_iso=iso, systems=("alpine",), nixos_ssh_keys=(KEY,)).validate()
    with pytest.raises(InputError, match="not a sha256"):
        LabParams(nixos_iso=iso, nixos_iso_sha256="abc", nixos_ssh_keys=(KEY,)).validate()
    with pytest.raises(InputError, match="does not exist"):
        LabParams(nixos_iso=tmp_path / "missing.iso", nixos_ssh_keys=(KEY,)).validate_lab()
    plan = "\n".join(lab_plan(LabParams(nixos_iso=iso, nixos_ssh_keys=(KEY,), load_cost=False)))
    assert "install over the serial console" in plan
    rc = cli.main(["lab", "--out", str(tmp_path / "r"), "--nixos-iso", str(iso), "--no-load-cost"])
    assert rc == 2 and "no way in" in capsys.readouterr().err
    # the checksum: the sidecar beside the ISO, or the one given; a wrong one is refused
    from labkit.core.download import ChecksumMismatch
    from labkit.systems.nixos.iso import checked_iso

    with pytest.raises(InputError, match=r"nixos\.iso\.sha256"):
        checked_iso(iso)
    (tmp_path / "nixos.iso.sha256").write_text("0" * 64 + "  nixos.iso\n")
    with pytest.raises(ChecksumMismatch):
        checked_iso(iso)
    import hashlib

    assert checked_iso(iso, hashlib.sha256(b"x").hexdigest()) == iso


@pytest.mark.boot
def test_lab_run_with_the_rehearsal_installer_iso(
    rehearsal: tuple[GuestKernel, RehearsalInstallerIso], tmp_path: Path
) -> None:
    """``labkit lab --nixos-iso``: build the image (NixOS partitions empty), install over serial, boot."""
    from labkit.lab.run import LabParams, run_lab

    _kernel, iso = rehearsal
    run = run_lab(LabParams(out=tmp_path / "run", boots=1, warmup=0, systems=("nixos",), report=False, load_cost=False,
                            nixos_iso=iso.path, nixos_ssh_keys=(KEY,), nixos_install_memory_mib=512),
                  progress=None)
    assert [b.ok for b in run.boots] == [True], run.boots
    assert {r.os for r in run.rows} == {"nixos-rehearsal"}
    env = json.loads((run.run_dir / "environment.json").read_text())
    assert env["extra"]["guest_kind"] == "rehearsal"
    media = env["extra"]["nixos_media"]
    assert media["rehearsal"] is True and media["os_id"] == "nixos-rehearsal"
    assert "root=LABEL=labkit-rehearsal-installer" in media["append"] and media["kernel"] == "/boot/bzImage"
    assert "installation finished! (labkit rehearsal)" in (run.run_dir / "install" / "install.log").read_text()
