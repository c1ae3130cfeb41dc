"""The NixOS real-media lab path: install from the installer ISO over the serial console, then boot it.

1. :func:`iso_boot_files` reads the ISO's loader config (``isolinux/isolinux.cfg``, else
   ``EFI/boot/grub.cfg``) with xorriso (no mount), takes the kernel, initrd and command line
   (``init=/nix/store/…/init root=LABEL=…``) of the default entry and extracts the two files.
2. :func:`target_image` builds the empty lab disk: the ESP with rEFInd, its ext4 driver and a
   refind.conf whose NixOS stanza chainloads ``EFI/NixOS/grubx64.efi`` (which the install writes),
   empty ext4 nixboot / nix / data (and alpine) filesystems.
3. :func:`install_over_serial` boots the ISO's kernel/initrd in QEMU (``-kernel/-initrd -append
   "… console=ttyS0,115200n8"``, lab disk and ISO as virtio disks) and :func:`drive_install` drives
   the install: wait for the prompt (the live ISO logs in user ``nixos``), ``sudo -i``, then the
   commands of :func:`labkit.phases.nixos.build_plan` (:func:`serial_actions`), each with its
   exit status checked and its own timeout, files sent base64 over the line and read back by
   sha256, everything in the transcript; then ``poweroff``.
4. :func:`boot_installed` boots the disk through OVMF → rEFInd → GRUB → the installed system with
   :func:`labkit.lab.run.run_boot` and collects the probe's bundle.

The real ISO needs network for ``nixos-install`` (``network=True`` gives the installer VM a user-mode
NIC) and more memory; this machine has neither the ISO nor network, so the path is proven with
``tests/rehearsal_nixos_iso.py`` (labelled rehearsal; its tools are stand-ins, not NixOS's).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import shlex
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from labkit.core.errors import LabkitError
from labkit.core.layout import LAB_LAYOUT, Layout, Role
from labkit.core.runner import Mode, Runner, atomic_write_text
from labkit.lab import qemu
from labkit.lab.serialshell import SerialCommandFailed, SerialError, SerialShell, SerialTimeout, spawn_serial
from labkit.phases.install import build_image
from labkit.phases.nixos import GRUB_EFI_BINARY, GRUB_EFI_SUBDIR, REFIND_EXT4_DRIVER, InstallParams, build_plan
from labkit.rehearsal.types import BootEntry, GuestBuild
from labkit.systems import bootchain
from labkit.systems.nixos.config import MODULE_NAME, PROBE_NAME, probe_script
from labkit.systems.nixos.generate import edit_generated
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
@dataclass(frozen=True)
class Run:
    step: str
    line: str
    timeout: float = 60.0


@dataclass(frozen=True)
class Put:
    """Write ``data`` to ``path`` in the guest (base64 over the line; sha256 read back)."""

    step: str
    path: str
    data: bytes = field(repr=False)
    mode: int = 0o644
    #: the data holds a secret (the module with the password hash): the terminal echo is turned off
    #: while it is sent, and its base64 never reaches the transcripts or an error message
    redact: bool = False


@dataclass(frozen=True)
class Edit:
    """Read ``path`` from the guest, transform it on the host, write it back."""

    step: str
    path: str
    edit: Callable[[str], str]
    describe: str = ""


Action = Run | Put | Edit


def _mounted_guard(argv: Sequence[str]) -> str | None:
    """``mount ... <mp>``: the mount point, so the command can skip an existing mount (the step's check)."""
    return argv[-1] if argv and argv[0] == "mount" else None


def serial_actions(params: InstallParams, *, guest_memory_mib: int = 2048,
                   nixos_install_args: Sequence[str] = ()) -> list[Action]:
    """The install plan of :func:`labkit.phases.nixos.build_plan` as guest command lines.

    The plan's commands (recorded in plan mode) run as they are, each ``mount`` guarded by a
    /proc/mounts check (the step's check, so a retried install skips what is done); the config
    step's file writes become :class:`Edit`/:class:`Put`; grub-install finds its EFI modules in
    the store in the guest; the rEFInd driver and final checks become ``test``/``grep`` lines.
    The tmpfs size is checked against ``guest_memory_mib`` (the installer VM's RAM).
    """
    with tempfile.TemporaryDirectory(prefix="labkit-serial-plan-") as tmp:
        t = Path(tmp)
        (t / "meminfo").write_text(f"MemTotal: {guest_memory_mib * 1024} kB\n")
        (t / "mountinfo").write_text("")
        p = InstallParams(params.settings, root=params.root, layout=params.layout, mountinfo=t / "mountinfo",
                          meminfo=t / "meminfo", store_dirs=(t / "nostore",),
                          install_timeout_s=params.install_timeout_s, resolve_labels=False)
        plan = build_plan(p)
        runner = Runner(Mode.PLAN, transcript=t / "plan.jsonl", progress=None)
        recorded: dict[str, list[tuple[list[str], dict[str, str]]]] = {}
        for step in plan:
            before = len(runner.planned)
            with runner.step(step.name):
                step.apply(runner)
            # host-side reads (query commands) are not guest commands
            recorded[step.name] = [(list(c.argv), dict(c.env)) for c in runner.planned[before:] if not c.query]
    root = str(p.root)
    cfg_dir = str(p.config_dir)
    esp = str(p.at("/boot/efi"))
    out: list[Action] = []

    def line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()))
        return (envs + " " if envs else "") + shlex.join(argv)

    for name in ("mount tmpfs root", "mount partitions"):
        for argv, env in recorded[name]:
            mp = _mounted_guard(argv)
            cmd = line(argv, env)
            out.append(Run(name, f"grep -q ' {mp} ' /proc/mounts || {cmd}" if mp else cmd))
    cstep = "write configuration"
    gen = next((a for a, _ in recorded[cstep] if a[0] == "nixos-generate-config"),
               ["nixos-generate-config", "--root", root, "--dir", cfg_dir])
    out.append(Run(cstep, line(gen), 120.0))
    out.append(Edit(cstep, f"{cfg_dir}/configuration.nix", lambda text: edit_generated(text).text,
                    f"remove the systemd-boot lines, import ./{MODULE_NAME}"))
    out.append(Put(cstep, f"{cfg_dir}/{MODULE_NAME}", plan.module_file.encode(),
                   0o600 if params.settings.user.hashed_password is not None else 0o644,
                   redact=params.settings.user.hashed_password is not None))
    out.append(Put(cstep, f"{cfg_dir}/{PROBE_NAME}", probe_script()))
    for argv, env in recorded["nixos-install"]:
        out.append(Run("nixos-install", line([*argv, *nixos_install_args], env), p.install_timeout_s))
    stores = [f"{root}/nix/store", "/nix/store"]
    globs = " ".join(f"{s}/*-grub-*/{GRUB_EFI_SUBDIR}/modinfo.sh" for s in stores)
    grub_args = next(a for a, _ in recorded["grub-install"] if "--no-nvram" in a)[1:]
    grub_args = [a for a in grub_args if not a.startswith("--directory=")]
    out.append(Run("grub-install", (
        f"m=$(ls -d {globs} 2>/dev/null | head -n 1); d=${{m%/modinfo.sh}}; "
        f"if [ -z \"$m\" ]; then echo 'GRUB EFI modules (modinfo.sh) not found in: {globs}; "
        "nix-shell -p grub2_efi' >&2; false; else g=${d%/lib/grub/x86_64-efi}/sbin/grub-install; "
        "[ -x \"$g\" ] || g=grub-install; echo \"using $g --directory=$d\"; "
        f"\"$g\" {shlex.join(grub_args)} \"--directory=$d\"; fi"), 300.0))
    drivers = [f"{esp}/{REFIND_EXT4_DRIVER}", f"{esp}/{bootchain.ESP_EXT4_DRIVER}"]
    out.append(Run("rEFInd ext4 driver", " || ".join(f"test -f {shlex.quote(d)}" for d in drivers)))
    checks = [f"test -f {shlex.quote(esp + '/' + GRUB_EFI_BINARY)}",
              f"grep -q menuentry {shlex.quote(str(p.at('/boot/grub/grub.cfg')))}",
              f"grep -q ' {root}/data ' /proc/mounts",
              f"grep -qF ./{MODULE_NAME} {shlex.quote(cfg_dir + '/configuration.nix')}"]
    if params.settings.user.hashed_password is not None:
        # the module on /data is the one labkit wrote (it carries the hash); compared by sha256 so that
        # the hash itself never appears in a command, the serial log or the transcript
        want = hashlib.sha256(plan.module_file.encode()).hexdigest()
        checks.append(f"sha256sum {shlex.quote(cfg_dir + '/' + MODULE_NAME)} | grep -q '^{want} '")
    out.append(Run("verify installed system", " && ".join(checks)))
    out.append(Run("finish", "sync", 120.0))
    return out


def actions_text(actions: Sequence[Action]) -> str:
    """The guest session as readable lines (plan mode for the serial install)."""
    lines = []
    for a in actions:
        if isinstance(a, Run):
            lines.append(f"[{a.step}] $ {a.line}")
        elif isinstance(a, Put):
            lines.append(f"[{a.step}] > {a.path} ({len(a.data)} bytes, base64 over the serial line)")
        else:
            lines.append(f"[{a.step}] ~ {a.path}: {a.describe or 'edited on the host'}")
    return "\n".join(lines) + "\n"


@dataclass
class CommandRecord:
    step: str
    command: str
    rc: int | None
    duration_s: float


@dataclass
class InstallSession:
    records: list[CommandRecord] = field(default_factory=list)
    login_s: float = 0.0
    install_s: float = 0.0

    def as_json(self) -> str:
        return json.dumps({"login_s": round(self.login_s, 3), "install_s": round(self.install_s, 3),
                           "commands": [vars(r) for r in self.records]}, indent=2) + "\n"


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


def _run(shell: SerialShell, session: InstallSession, step: str, command: str, timeout: float,
         shown: str | None = None) -> str:
    """Run one guest command; ``shown`` is what the records and errors say instead (a secret's base64)."""
    label = shown or command
    try:
        res = shell.run(command, timeout=timeout)
    except SerialCommandFailed as exc:
        session.records.append(CommandRecord(step, label, exc.result.rc, exc.result.duration_s))
        raise GuestInstallFailed(step, label, exc.result.rc, shell.redact(exc.result.output)) from None
    except SerialTimeout as exc:
        session.records.append(CommandRecord(step, label, None, timeout))
        raise GuestInstallFailed(step, label, None,
                                 f"timed out after {timeout:g} s; {shell.redact(exc.tail[-300:])}") from None
    session.records.append(CommandRecord(step, label, res.rc, res.duration_s))
    return res.output


def put_file(shell: SerialShell, session: InstallSession, step: str, path: str, data: bytes,
             mode: int = 0o644, *, redact: bool = False) -> None:
    """Send ``data`` base64 in short lines to ``path.labkit-part``, check its sha256, rename it.

    ``redact`` (the data holds a secret): the terminal echo is off while the lines are sent (``stty -echo``),
    each base64 line is redacted from the serial log, the runner's transcript and the session record, and the
    file is created with mode 0600 before anything is written to it.
    """
    part = f"{path}.labkit-part"
    q, qp = shlex.quote(path), shlex.quote(part)
    create = f"( umask 077; : > {qp} )" if redact else f": > {qp}"
    _run(shell, session, step, f"mkdir -p {shlex.quote(str(PurePosixPath(path).parent))} && {create}", 30.0)
    b64 = base64.b64encode(data).decode()
    if redact:
        _run(shell, session, step, "stty -echo 2>/dev/null || true", 30.0)
    try:
        for i in range(0, len(b64), CHUNK):
            chunk = b64[i:i + CHUNK]
            if redact:
                shell.add_secret(chunk)
            _run(shell, session, step, f"echo {chunk} | base64 -d >> {qp}", 30.0,
                 shown=f"echo <{len(chunk)} base64 characters, redacted> | base64 -d >> {qp}" if redact else None)
    finally:
        if redact:
            _run(shell, session, step, "stty echo 2>/dev/null || true", 30.0)
    got = _run(shell, session, step, f"sha256sum {qp}", 30.0).split()
    want = hashlib.sha256(data).hexdigest()
    if want not in got:
        raise GuestInstallFailed(step, f"sha256sum {part}", 1, f"expected {want}, the guest has {got[:1]}")
    _run(shell, session, step, f"chmod {mode:o} {qp} && mv -f {qp} {q}", 30.0)


def get_file(shell: SerialShell, session: InstallSession, step: str, path: str) -> bytes:
    out = _run(shell, session, step, f"base64 {shlex.quote(path)}", 60.0)
    return base64.b64decode("".join(out.split()))


def drive_install(shell: SerialShell, actions: Sequence[Action], *, login_timeout: float = 120.0,
                  logged_in: bool = False, session: InstallSession | None = None) -> InstallSession:
    """Log in (unless ``logged_in``) and run ``actions``; raise :class:`GuestInstallFailed` at the first
    failure (its step, command and exit status, or the timeout)."""
    session = session or InstallSession()
    if not logged_in:
        session.login_s = login(shell, login_timeout)
    start = time.monotonic()
    for a in actions:
        if isinstance(a, Run):
            _run(shell, session, a.step, a.line, a.timeout)
        elif isinstance(a, Put):
            put_file(shell, session, a.step, a.path, a.data, a.mode, redact=a.redact)
        else:
            old = get_file(shell, session, a.step, a.path).decode()
            put_file(shell, session, a.step, a.path, a.edit(old).encode())
    session.install_s += time.monotonic() - start
    return session


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
    actions: Sequence[Action],
    *,
    log_dir: Path,
    accel: str = "tcg",
    memory_mib: int = 2048,
    network: bool = False,
    login_timeout: float = 180.0,
    poweroff_timeout: float = 60.0,
) -> InstallSession:
    """Boot the installer, drive ``actions``, power off; the console goes to ``log_dir/install.log``
    and the per-command record to ``log_dir/install-commands.json`` (also on failure)."""
    argv = installer_argv(boot, disk, accel=accel, memory_mib=memory_mib, network=network)
    session = InstallSession()
    log_dir.mkdir(parents=True, exist_ok=True)
    with runner.step(f"install from {boot.iso.name} over the serial console"), spawn_serial(runner, argv) as shell:
        try:
            drive_install(shell, actions, login_timeout=login_timeout, session=session)
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
