"""The NixOS real-media lab path: ISO boot files, the serial install sequence, and (boot) the whole
path on labkit's rehearsal installer ISO (NixOS-style, not NixOS): install over ttyS0, then
OVMF → rEFInd → GRUB → the installed system's probe bundle."""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
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
from labkit.lab.nixos_install import GuestInstallFailed, SerialHost, guest_params
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


def test_the_installer_vm_gets_the_plans_own_parameters(tmp_path: Path) -> None:
    """The serial install runs build_plan's steps; only the machine changes: the VM's RAM bounds the tmpfs,
    its own mountinfo is read there, the by-label paths stay."""
    from labkit.phases.nixos import build_plan

    params = InstallParams(NixosSettings(user=User(hashed_password=HASH), tmpfs_size="256M"))
    gp = guest_params(params, 512, tmp_path)
    assert gp.mountinfo == Path("/proc/self/mountinfo") and gp.resolve_labels is False
    plan = build_plan(gp)
    assert [s.name for s in plan] == ["mount tmpfs root", "mount partitions", "write configuration", "nixos-install",
                                     "grub-install", "rEFInd ext4 driver", "verify installed system"]
    with pytest.raises(InputError, match="RAM"):  # 2G of tmpfs in a 512 MiB installer VM
        build_plan(guest_params(InstallParams(NixosSettings(user=User(ssh_keys=(KEY,)), tmpfs_size="2G")), 512,
                                tmp_path))


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


def test_serial_host_on_a_host_pty(pty_shell: SerialShell, tmp_path: Path) -> None:
    """What the install's steps ask of a machine, over a line to busybox sh behind a pty (no QEMU): files
    written (base64 in short lines, sha256 read back) and read back, tests, links, patterns, commands with
    their exit status and timeout."""
    runner = pty_shell.runner
    assert runner is not None
    host = SerialHost(runner, pty_shell)
    root = tmp_path / "root"
    data = bytes(range(256)) * 20  # 5 KiB of binary: several lines
    with runner.step("write"):
        host.write_bytes(root / "etc" / "blob", data, mode=0o600)
    assert (root / "etc" / "blob").read_bytes() == data and (root / "etc" / "blob").stat().st_mode & 0o777 == 0o600
    assert not list((root / "etc").glob("*.labkit-part"))
    assert host.read_bytes(root / "etc" / "blob") == data and host.read_bytes(root / "nope") is None
    assert host.is_file(root / "etc" / "blob") and not host.is_file(root / "etc")
    os.symlink("/nix/store/abc-system", root / "system")
    assert host.readlink(root / "system") == "/nix/store/abc-system" and host.readlink(root / "etc") is None
    assert host.lexists(root / "system") and not host.lexists(root / "missing")
    (root / "s" / "x-grub-2" / "lib").mkdir(parents=True)
    assert host.glob(f"{root}/s/*-grub-*/lib") == [str(root / "s" / "x-grub-2" / "lib")]
    assert host.glob(f"{root}/none/*") == []
    assert host.which("busybox") and host.which("no-such-tool-here") is None
    res = host.run(["sh", "-c", "echo out; exit 0"], env={"A": "b c"})
    assert res.rc == 0 and "out" in res.stdout
    # a failing command: its step, command and exit status
    with runner.step("nixos-install"), pytest.raises(GuestInstallFailed) as exc:
        host.run(["sh", "-c", "echo 'no such option' >&2; exit 7"])
    assert exc.value.rc == 7 and exc.value.step == "nixos-install"
    assert "exit status 7" in str(exc.value) and "no such option" in str(exc.value)
    assert json.loads(host.session.as_json())["commands"][-1]["rc"] == 7
    # a timeout is reported as such
    with pytest.raises(GuestInstallFailed, match="timed out") as exc2:
        host.run(["sleep", "5"], timeout=0.5)
    assert exc2.value.rc is None


def test_a_secret_file_leaves_no_trace_in_the_logs(pty_shell: SerialShell, tmp_path: Path) -> None:
    """The module holding the password hash is sent with the echo off; neither the hash nor its base64
    lines reach the serial log, the session record or the runner's transcript; the file is 0600."""
    runner = pty_shell.runner
    assert runner is not None
    host = SerialHost(runner, pty_shell)
    target = tmp_path / "data" / "labkit.nix"
    data = ('users.users.lab.hashedPassword = "' + HASH + '";\n').encode() * 30  # several base64 lines
    host.write_bytes(target, data, mode=0o600, secret=True)
    assert target.read_bytes() == data and target.stat().st_mode & 0o777 == 0o600
    b64 = base64.b64encode(data).decode()
    chunks = [b64[i:i + 60] for i in range(0, len(b64), 60)]
    logs = {"serial log": pty_shell.transcript_text(), "session": host.session.as_json(),
            "transcript": (tmp_path / "t.jsonl").read_text()}
    for name, text in logs.items():
        assert HASH not in text, name
        assert not any(c in text for c in chunks), f"base64 of the secret in the {name}"
    assert "redacted" in logs["session"]
    # the echo is back on afterwards: an ordinary command is echoed again
    host.run(["echo", "visible-again"])
    assert "echo visible-again" in pty_shell.transcript_text()


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
    bad = dataclasses.replace(params, nixos_install_args=(FAIL_FLAG,))
    with pytest.raises(GuestInstallFailed) as exc:
        install_over_serial(runner, boot, image.path, bad, log_dir=tmp_path / "fail", accel=accel, memory_mib=512)
    assert exc.value.step == "nixos-install" and exc.value.rc == 1
    assert f"unknown option '{FAIL_FLAG}'" in str(exc.value) and "install.log" in str(exc.value)
    assert "exit status 1" in str(exc.value)
    assert "nixos-install (labkit rehearsal): unknown option" in (tmp_path / "fail" / "install.log").read_text()

    # 2. the install, again on the same disk (mounts and the generated config are already there)
    session = install_over_serial(runner, boot, image.path, params, log_dir=tmp_path / "ok", accel=accel,
                                  memory_mib=512)
    assert [r for r in session.records if r.rc != 0 and not r.query] == []  # a query's status is an answer
    assert any(r.query and r.rc != 0 for r in session.records)  # e.g. the system profile absent at first
    log = (tmp_path / "ok" / "install.log").read_text()
    assert "installation finished! (labkit rehearsal)" in log and "Installation finished. No error reported." in log
    # the first run wrote the configuration; the second finds labkit's configuration (the step's check holds)
    # and does not run nixos-generate-config again
    first = json.loads((tmp_path / "fail" / "install-commands.json").read_text())["commands"]
    cmds = json.loads((tmp_path / "ok" / "install-commands.json").read_text())["commands"]
    assert any(c["command"].startswith("nixos-generate-config") for c in first)
    assert not any(c["command"].startswith("nixos-generate-config") for c in cmds)
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

    assert checked_iso(iso, hashlib.sha256(b"x").hexdigest()) == iso


@pytest.mark.boot
def test_lab_run_with_the_rehearsal_installer_iso(
    rehearsal: tuple[GuestKernel, RehearsalInstallerIso], tmp_path: Path
) -> None:
    """``labkit lab --nixos-iso``: build the image (NixOS partitions empty), install over serial, boot."""
    from labkit.lab.run import LabParams, run_lab

    _kernel, iso = rehearsal
    run = run_lab(LabParams(out=tmp_path / "run", boots=1, max_boots=1, warmup=0, systems=("nixos",), report=False,
                            load_cost=False,
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
