"""The NixOS real-media lab path: install from the installer ISO over the serial console, then boot it.

1. :func:`iso_boot_files` reads the ISO's loader config (``isolinux/isolinux.cfg``, else
   ``EFI/boot/grub.cfg``) with xorriso (no mount), takes the kernel, initrd and command line
   (``init=/nix/store/…/init root=LABEL=…``) of the default entry and extracts the two files.
2. :func:`target_image` builds the empty lab disk: the ESP with rEFInd, its ext4 driver and a
   refind.conf whose NixOS stanza chainloads ``EFI/NixOS/grubx64.efi`` (which the install writes),
   empty ext4 nixboot / nix / data (and alpine) filesystems.
3. :func:`install_over_serial` boots the ISO's kernel/initrd in QEMU (``-kernel/-initrd -append
   "… console=ttyS0,115200n8"``, lab disk and ISO as virtio disks), waits for the prompt (the live ISO
   logs in user ``nixos``), becomes root with ``sudo -i`` and runs the NixOS install's own steps
   (:func:`labkit.phases.nixos.build_plan`) on a :class:`SerialHost`: every command, file read and file
   write of those steps goes over the serial line (each command's exit status checked, files sent base64
   and read back by sha256, everything in the transcript). There is no second description of the
   install: the steps that run on a NixOS installer run here, unchanged. Then ``poweroff``.
4. :func:`boot_installed` boots the disk through OVMF → rEFInd → GRUB → the installed system with
   :func:`labkit.lab.run.run_boot` and collects the probe's bundle.

The real ISO needs network for ``nixos-install`` (``network=True`` gives the installer VM a user-mode
NIC) and more memory; this machine has neither the ISO nor network, so the path is proven with
``tests/rehearsal_nixos_iso.py`` (labelled rehearsal; its tools are stand-ins, not NixOS's).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from labkit.core.errors import LabkitError
from labkit.core.host import Host
from labkit.core.layout import LAB_LAYOUT, Layout, Role
from labkit.core.runner import CommandResult, Runner, atomic_write_text
from labkit.lab import qemu
from labkit.lab.serialshell import (
    SerialCommandFailed,
    SerialError,
    SerialShell,
    SerialTimeout,
    ShellResult,
    spawn_serial,
)
from labkit.phases.install import build_image
from labkit.phases.nixos import InstallParams
from labkit.rehearsal.types import BootEntry, GuestBuild
from labkit.systems import bootchain
from labkit.systems.nixos.iso import IsoBootFiles
from labkit.targets.image import ImageInfo

if TYPE_CHECKING:
    from labkit.lab.boot import BootRecord
    from labkit.measure.results import ResultRow

CHUNK = 600  # base64 characters per command line (busybox ash's line editor holds 1024)


class GuestInstallFailed(LabkitError):
    """A command of the install failed (or timed out) in the installer guest."""

    def __init__(self, step: str, command: str, rc: int | None, output: str, transcript: Path | None = None) -> None:
        self.step, self.command, self.rc, self.output = step, command, rc, output
        status = "timed out" if rc is None else f"failed with exit status {rc}"
        tail = "\n    ".join(output.strip().splitlines()[-6:])
        super().__init__(
            f"install step {step!r}: guest command {status}: {command}" + (f"\n    {tail}" if tail else ""),
            f"read the serial transcript{f' ({transcript})' if transcript else ''}; fix the cause and run it again",
        )


# -- 2. the target disk ----------------------------------------------------------------------------
def target_image(runner: Runner, out: Path, title: str, *, layout: Layout = LAB_LAYOUT) -> ImageInfo:
    """The lab disk before the install: ESP with rEFInd (+ ext4 driver, refind.conf with the NixOS
    stanza chainloading ``EFI/NixOS/grubx64.efi``), every ext4 filesystem empty."""
    entry = BootEntry(title, Role.NIXOS_BOOT.value, "", "", "")
    files = bootchain.esp_files([entry], title, grub_efi=Path("/dev/null"), layout=layout)
    files.pop(bootchain.ESP_GRUB)  # grub-install writes it
    trees: dict[Role, Path | None] = {p.role: None for p in layout.partitions if p.role is not Role.ESP}
    return build_image(runner, layout, out, trees, files)


# -- 3. the install over the serial console --------------------------------------------------------
@dataclass
class CommandRecord:
    step: str
    command: str
    rc: int | None
    duration_s: float
    query: bool = False  # a read-only question (test -f, readlink, base64 of a file): a non-zero status is an answer


@dataclass
class InstallSession:
    records: list[CommandRecord] = field(default_factory=list)
    login_s: float = 0.0
    install_s: float = 0.0

    def as_json(self) -> str:
        return json.dumps({"login_s": round(self.login_s, 3), "install_s": round(self.install_s, 3),
                           "commands": [vars(r) for r in self.records]}, indent=2) + "\n"


class SerialHost(Host):
    """The installer VM, through its root shell on the serial console: what :class:`~labkit.core.host.Host`
    asks, done with shell commands (``test``, ``base64``, ``readlink``, a ``for`` over a pattern)."""

    name = "the installer VM"

    def __init__(self, runner: Runner, shell: SerialShell, session: InstallSession | None = None) -> None:
        super().__init__(runner)
        self.shell = shell
        self.session = session if session is not None else InstallSession()

    @property
    def step(self) -> str:
        return self.runner.step_name.rsplit(" / ", 1)[-1] or "install"

    def _line(self, command: str, timeout: float, *, check: bool = True, shown: str | None = None,
              query: bool = False) -> ShellResult:
        """Run one guest command line; ``shown`` is what the records and errors say instead (a secret)."""
        label = shown or command
        try:
            res = self.shell.run(command, timeout=timeout, check=check)
        except SerialCommandFailed as exc:
            self.session.records.append(CommandRecord(self.step, label, exc.result.rc, exc.result.duration_s, query))
            raise GuestInstallFailed(self.step, label, exc.result.rc, self.shell.redact(exc.result.output)) from None
        except SerialTimeout as exc:
            self.session.records.append(CommandRecord(self.step, label, None, timeout, query))
            raise GuestInstallFailed(self.step, label, None,
                                     f"timed out after {timeout:g} s; {self.shell.redact(exc.tail[-300:])}") from None
        self.session.records.append(CommandRecord(self.step, label, res.rc, res.duration_s, query))
        return res

    def run(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
            check: bool = True, timeout: float | None = None, query: bool = False) -> CommandResult:
        args = [os.fspath(a) for a in argv]
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()))
        line = (envs + " " if envs else "") + shlex.join(args)
        res = self._line(line, timeout or 60.0, check=check, query=query)
        return CommandResult(tuple(args), None, res.rc, res.duration_s, res.output, "", executed=True)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes | None:
        q = shlex.quote(os.fspath(path))
        res = self._line(f"test -f {q} && base64 {q}", 60.0, check=False, query=True)
        return base64.b64decode("".join(res.output.split())) if res.rc == 0 else None

    def write_bytes(self, path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                    secret: bool = False) -> None:
        """Send ``data`` base64 in short lines to ``path.labkit-part``, check its sha256, rename it.

        ``secret``: the terminal echo is off while the lines are sent (``stty -echo``), each base64 line is
        redacted from the serial log, the runner's transcript and the session record, and the file is created
        with mode 0600 before anything is written to it."""
        path = os.fspath(path)
        part = f"{path}.labkit-part"
        q, qp = shlex.quote(path), shlex.quote(part)
        create = f"( umask 077; : > {qp} )" if secret else f": > {qp}"
        self._line(f"mkdir -p {shlex.quote(str(PurePosixPath(path).parent))} && {create}", 30.0)
        b64 = base64.b64encode(data).decode()
        if secret:
            self._line("stty -echo 2>/dev/null || true", 30.0)
        try:
            for i in range(0, len(b64), CHUNK):
                chunk = b64[i:i + CHUNK]
                if secret:
                    self.shell.add_secret(chunk)
                self._line(f"echo {chunk} | base64 -d >> {qp}", 30.0,
                           shown=f"echo <{len(chunk)} base64 characters, redacted> | base64 -d >> {qp}"
                           if secret else None)
        finally:
            if secret:
                self._line("stty echo 2>/dev/null || true", 30.0)
        got = self._line(f"sha256sum {qp}", 30.0).output.split()
        want = hashlib.sha256(data).hexdigest()
        if want not in got:
            raise GuestInstallFailed(self.step, f"sha256sum {part}", 1, f"expected {want}, the guest has {got[:1]}")
        self._line(f"chmod {mode:o} {qp} && mv -f {qp} {q}", 30.0)

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        return self._line(f"test -f {shlex.quote(os.fspath(path))}", 30.0, check=False, query=True).rc == 0

    def lexists(self, path: str | os.PathLike[str]) -> bool:
        q = shlex.quote(os.fspath(path))
        return self._line(f"test -e {q} || test -L {q}", 30.0, check=False, query=True).rc == 0

    def readlink(self, path: str | os.PathLike[str]) -> str | None:
        q = shlex.quote(os.fspath(path))
        res = self._line(f"test -L {q} && readlink {q}", 30.0, check=False, query=True)
        return res.output.strip() if res.rc == 0 else None

    def glob(self, pattern: str) -> list[str]:
        # the pattern is labkit's own (store paths, a '*'): the shell expands it; only existing paths print
        res = self._line(f'for f in {pattern}; do [ -e "$f" ] && echo "$f"; done; true', 30.0, query=True)
        return sorted(ln.strip() for ln in res.output.splitlines() if ln.strip())

    def which(self, tool: str) -> str | None:
        res = self._line(f"command -v {shlex.quote(tool)}", 30.0, check=False, query=True)
        out = res.output.strip().splitlines()
        return out[-1] if res.rc == 0 and out else None


def login(shell: SerialShell, timeout: float = 120.0) -> float:
    """Wait for the live system's prompt; become root with ``sudo -i`` unless already root."""
    start = time.monotonic()
    shell.wait_for_prompt(timeout)
    shell.send("sudo -i\n")
    shell.wait_for(r"#\s*$", 30.0, "the root prompt after sudo -i")
    res = shell.run("id -u", timeout=30.0)
    if res.output.strip().splitlines()[-1:] != ["0"]:
        raise LabkitError(f"`sudo -i` did not give a root shell (id -u: {res.output.strip()!r})",
                          "look at the serial transcript")
    return time.monotonic() - start


def guest_params(params: InstallParams, guest_memory_mib: int, work: Path) -> InstallParams:
    """The install's parameters for the installer VM: its RAM bounds the tmpfs (the plan is validated
    against it), its own /proc/self/mountinfo tells what is mounted there (read through the host), and its
    partitions keep their /dev/disk/by-label paths (the VM's only disk is the lab disk)."""
    meminfo = work / "guest-meminfo"
    atomic_write_text(meminfo, f"MemTotal: {guest_memory_mib * 1024} kB\n")
    return dataclasses.replace(params, meminfo=meminfo, mountinfo=Path("/proc/self/mountinfo"),
                               store_dirs=None, resolve_labels=False)


def installer_argv(boot: IsoBootFiles, disk: Path, *, accel: str = "tcg", memory_mib: int = 2048,
                   network: bool = False) -> list[str]:
    """QEMU for the installer: the ISO's kernel/initrd, serial on stdio, lab disk (vda) + ISO (vdb)."""
    argv = [qemu.QEMU, "-machine", "q35", "-accel", accel, "-m", str(memory_mib), "-nographic", "-no-reboot",
            "-nodefaults", "-serial", "stdio", "-kernel", str(boot.kernel), "-initrd", str(boot.initrd),
            "-append", f"{boot.append} panic=-1",
            "-drive", f"file={disk},format=raw,if=virtio",
            "-drive", f"file={boot.iso},format=raw,if=virtio,readonly=on"]
    argv += ["-nic", "user,model=virtio-net-pci"] if network else ["-nic", "none"]
    return argv


def install_over_serial(
    runner: Runner,
    boot: IsoBootFiles,
    disk: Path,
    params: InstallParams,
    *,
    log_dir: Path,
    accel: str = "tcg",
    memory_mib: int = 2048,
    network: bool = False,
    login_timeout: float = 180.0,
    poweroff_timeout: float = 60.0,
) -> InstallSession:
    """Boot the installer, run the NixOS install's steps in it (:class:`SerialHost`), power off; the console goes
    to ``log_dir/install.log`` and the per-command record to ``log_dir/install-commands.json`` (also on
    failure)."""
    from labkit.phases.nixos import build_plan, run_plan

    log_dir.mkdir(parents=True, exist_ok=True)
    plan = build_plan(guest_params(params, memory_mib, log_dir))  # refuses a tmpfs the VM's RAM cannot hold
    argv = installer_argv(boot, disk, accel=accel, memory_mib=memory_mib, network=network)
    session = InstallSession()
    with runner.step(f"install from {boot.iso.name} over the serial console"), spawn_serial(runner, argv) as shell:
        host = SerialHost(runner, shell, session)
        try:
            session.login_s = login(shell, login_timeout)
            start = time.monotonic()
            run_plan(host, plan)
            host.run(["sync"], timeout=120.0)
            session.install_s = time.monotonic() - start
            shell.send("poweroff\n")
            try:
                shell.wait_for(r"(?!x)x", poweroff_timeout, "the installer to power off")
            except SerialError:
                pass  # the console closed: QEMU exited after the poweroff
            except SerialTimeout:
                runner.note(f"warning: the installer did not power off within {poweroff_timeout:g} s (synced; killed)")
        except GuestInstallFailed as exc:
            with contextlib.suppress(LabkitError):  # keep what was written (QEMU is killed next)
                shell.run("sync", timeout=60.0, check=False)
            raise GuestInstallFailed(exc.step, exc.command, exc.rc, exc.output, log_dir / "install.log") from None
        finally:
            atomic_write_text(log_dir / "install.log", shell.transcript_text())
            atomic_write_text(log_dir / "install-commands.json", session.as_json())
        runner.note(f"installed in {session.install_s:.1f} s ({len(session.records)} guest commands; "
                    f"login {session.login_s:.1f} s)")
    return session


# -- 4. the installed system ------------------------------------------------------------------------
def installed_guest(boot: IsoBootFiles, kernel_version: str = "?") -> GuestBuild:
    """What run_boot expects of the installed system: its os id and rEFInd title."""
    return GuestBuild(boot.os_id, BootEntry(boot.title, Role.NIXOS_BOOT.value, "", "", ""), (), kernel_version)


def boot_installed(
    runner: Runner,
    image: ImageInfo,
    guest: GuestBuild,
    *,
    run_id: str,
    run_dir: Path,
    accel: str,
    memory_mib: int = 512,
    timeout_s: float = 120.0,
    index: int = 0,
) -> tuple[BootRecord, list[ResultRow]]:
    """Boot the installed disk through OVMF → rEFInd → GRUB and collect the probe's bundle."""
    from labkit.lab.boot import LabImage, run_boot

    run_dir.mkdir(parents=True, exist_ok=True)
    lab = LabImage(image, {"nixos": guest}, {"nixos": guest.entry.title}, image.offset(Role.ESP))
    return run_boot(runner, lab, "nixos", index, False, run_id=run_id, run_dir=run_dir, accel=accel,
                    memory_mib=memory_mib, timeout_s=timeout_s)
