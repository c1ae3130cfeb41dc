"""systemd in the NixOS-style rehearsal store: Debian's package, labkit's probe unit as NixOS renders it.

Stage 2 of the NixOS-style guest ends as NixOS's ``stage-2-init.sh`` does, with ``exec systemd``
(``exec @systemdExecutable@``, i.e. ``${systemd}/lib/systemd/systemd``). The systemd is Debian's
(packages ``systemd`` and ``libsystemd-shared`` as installed on this host), put in the store in Nix's layout
(``bin/``, ``lib/systemd/...``; :func:`labkit.rehearsal.payloads.nix_layout`) with the glibc libraries its
programs load (``ldd``). Debian builds systemd for the usual file system paths (``/lib/systemd/system``,
``/lib64/ld-linux-x86-64.so.2``, libraries found in ``/lib/x86_64-linux-gnu``) where nixpkgs patches its
systemd to the store; so the rehearsal system carries an FHS view, a store path of links
(``fhs/usr/{bin,lib,lib64,share}`` → the store paths), which stage 2 links as ``/usr``, ``/bin``, ``/lib``...
A real NixOS has no such view: this is the one place the rehearsal departs from NixOS's layout.

``/etc/systemd/system`` is a store path of units, as NixOS's ``generateUnits`` makes it: labkit's probe
unit rendered from the module's own attributes (:mod:`labkit.systems.nixos.units`), its
``multi-user.target.wants`` link, ``default.target`` → ``multi-user.target``; plus, rehearsal-only and
named so, a unit that powers the VM off once the probe has exited, and masks for the units of Debian's
systemd that cannot run in this guest (:data:`REHEARSAL_MASKS`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import LabkitError
from labkit.core.runner import Runner
from labkit.rehearsal.payloads import (
    EPOCH,
    Payload,
    PkgEntry,
    fix_mtimes,
    host_package,
    nix_base32,
    nix_layout,
    shared_libraries,
)
from labkit.systems.nixos.config import PROBE_NAME, NixosSettings, probe_service
from labkit.systems.nixos.units import RenderedUnit, render_service

SYSTEMD_PACKAGES = ("systemd", "libsystemd-shared")
#: Units of Debian's systemd that cannot run in the rehearsal guest, masked (``-> /dev/null``) in its unit
#: directory: the login/getty stack (no dbus daemon for logind, no agetty: util-linux's login tools are not
#: in the store), the serial getty the getty generator would add for console=ttyS0, and
#: systemd-firstboot, which would stop the boot at an interactive prompt on a root without /etc/machine-id,
#: and systemd-sysusers: NixOS has neither (its users come from the activation script; sysusers only with
#: systemd.sysusers.enable).
REHEARSAL_MASKS = ("systemd-logind.service", "getty.target", "serial-getty@.service", "getty@.service",
                   "systemd-user-sessions.service", "dbus.socket", "dbus.service", "systemd-firstboot.service",
                   "systemd-sysusers.service")
#: The packages of the probe service's ``path`` (and NixOS's stage-2 defaults), as the rehearsal store
#: provides them: busybox's applets for coreutils & co, Debian's systemd for systemd. No Nix is in the
#: rehearsal store (``config.nix.package``, ``nix``): the probe then reads the sizes registered at build time.
BUSYBOX_STANDS_FOR = ("coreutils", "findutils", "gnugrep", "gnused", "gawk", "util-linux", "procps")
NO_NIX = ("config.nix.package", "nix", "pkgs.nix")
POWEROFF_UNIT = "labkit-rehearsal-poweroff.service"


@dataclass(frozen=True)
class SystemdStore:
    systemd: str  # store names (no /nix/store/ prefix)
    libs: str
    fhs: str
    units: str
    probe_unit: RenderedUnit


def systemd_payloads(runner: Runner) -> tuple[Payload, Payload]:
    """Debian's systemd (both packages, in Nix's layout) and the glibc libraries its programs load."""
    pkgs = [host_package(runner, n) for n in SYSTEMD_PACKAGES]
    entries: dict[str, PkgEntry] = {}
    for p in pkgs:
        for e in p.entries:
            if not e.path.startswith("usr/share/"):  # man pages, docs, completions, locales
                entries.setdefault(e.path, e)
    merged = Payload("systemd", pkgs[0].version, tuple(entries[k] for k in sorted(entries)))
    sd = nix_layout(merged)
    own = {e.path for e in merged.entries}
    libs = [e for e in shared_libraries(runner, [e.source for e in merged.entries if e.source is not None])
            if e.path not in own]
    return sd, nix_layout(Payload("glibc-runtime-debian", "12", tuple(libs)))


class StoreResolver:
    """The rehearsal store standing in for Nix evaluation (:class:`labkit.systems.nixos.units.NixResolver`)."""

    def __init__(self, store: Path, busybox: str, systemd: str, probe_file: str) -> None:
        self.store, self.busybox, self.systemd, self.probe_file = store, busybox, systemd, probe_file

    def package(self, expr: str) -> str | None:
        name = expr.removeprefix("pkgs.")
        if name in BUSYBOX_STANDS_FOR:
            return f"/nix/store/{self.busybox}"
        if name == "systemd":
            return f"/nix/store/{self.systemd}"
        if expr in NO_NIX:
            return None
        raise LabkitError(f"the rehearsal store has no stand-in for the package {expr!r}",
                          "add it to labkit.rehearsal.systemd.StoreResolver")

    def interpolate(self, expr: str) -> str:
        if expr == "pkgs.runtimeShell":
            return f"/nix/store/{self.busybox}/bin/sh"
        if expr == f"./{PROBE_NAME}":
            return f"/nix/store/{self.probe_file}"
        raise LabkitError(f"the rehearsal store cannot evaluate ${{{expr}}}",
                          "add it to labkit.rehearsal.systemd.StoreResolver")

    def job_script(self, name: str, text: str) -> str:
        with tempfile.TemporaryDirectory(dir=self.store) as tmp:
            build = Path(tmp) / "s"
            (build / "bin").mkdir(parents=True)
            (build / "bin" / name).write_text(text)
            os.chmod(build / "bin" / name, 0o755)
            return f"/nix/store/{add_store_dir(self.store, f'unit-script-{name}', build)}"


def store_hash(salt: str, root: Path) -> str:
    import hashlib

    h = hashlib.sha256(salt.encode())
    for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
        rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
        if p.is_symlink():
            h.update(f"L{rel}\0{os.readlink(p)}\0".encode())
        elif p.is_file():
            h.update(f"F{rel}\0{os.stat(p).st_mode & 0o777:o}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
        else:
            h.update(f"D{rel}\0".encode())
    return nix_base32(h.digest()[:20])


def add_store_dir(store: Path, name: str, build: Path) -> str:
    """Move ``build`` (a directory or a file) into the store under its content hash; return the store name."""
    if build.is_dir():
        fix_mtimes(build)
    full = f"{store_hash(name, build)}-{name}"
    final = store / full
    if final.exists() or final.is_symlink():
        shutil.rmtree(build) if build.is_dir() else build.unlink()
    else:
        os.replace(build, final)
    return full


def write_fhs(store: Path, layers: Sequence[tuple[Payload, str]]) -> str:
    """A store path of links ``usr/<path>`` → ``/nix/store/<layer>/<path>``: the FHS view of the store paths
    Debian's programs expect (the first layer wins a name)."""
    with tempfile.TemporaryDirectory(dir=store) as tmp:
        root = Path(tmp) / "fhs"
        for payload, name in layers:
            for e in payload.entries:
                if e.kind == "dir":
                    continue
                dest = root / "usr" / e.path
                if dest.exists() or dest.is_symlink():
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(f"/nix/store/{name}/{e.path}", dest)
        return add_store_dir(store, "labkit-fhs-debian", root)


def _unit_text_poweroff(busybox: str, systemd: str) -> str:
    """Waits for the probe's job script by reading /proc with busybox's grep (static: polling with systemctl
    would take the guest's one CPU from the probe under TCG); ``star[t]`` keeps grep from matching this
    shell's own command line; ``$$`` is how a unit file writes the shell's ``$`` (systemd.service(5))."""
    bb = f"/nix/store/{busybox}/bin"
    running = f'{bb}/grep -qs "unit-script-labkit-probe-star[t]" /proc/[0-9]*/cmdline'
    return (
        "# labkit rehearsal only (not part of labkit's NixOS module): power the VM off once the probe has\n"
        "# printed its bundle and exited, so QEMU exits (-no-reboot); not when an armed reboot loop is rebooting\n"
        "# (the probe's /run/labkit-loop-rebooting). Type=simple: it never holds the boot open.\n"
        "# After=multi-user.target too, as the probe: multi-user.target then does not order itself after this unit\n"
        "# (systemd adds a wanted unit's After= to a target unless that would loop: unit.c\n"
        "# unit_add_default_target_dependency), so there is no ordering cycle.\n"
        "[Unit]\nAfter=multi-user.target labkit-probe.service\n"
        "Description=labkit rehearsal: power off after the probe\n\n[Service]\n"
        f"ExecStart={bb}/sh -c 'n=0; until {running} || [ $$n -ge 100 ]; do {bb}/sleep 0.2; n=$$((n+1)); done; "
        f"while {running}; do {bb}/sleep 0.5; done; [ -e /run/labkit-loop-rebooting ] || "
        f"exec /nix/store/{systemd}/bin/systemctl --no-block poweroff'\n"
        "Type=simple\n\n[Install]\nWantedBy=multi-user.target\n"
    )


def write_systemd_store(runner: Runner, store: Path, busybox: tuple[Payload, str]) -> SystemdStore:
    """Debian's systemd, its libraries, the FHS view and the unit directory in ``store``."""
    sd, libs = systemd_payloads(runner)
    from labkit.rehearsal.payloads import write_store_path

    sd_name = Path(write_store_path(sd, store).file).name
    libs_name = Path(write_store_path(libs, store).file).name
    for n in (sd_name, libs_name):
        fix_mtimes(store / n)
    fhs = write_fhs(store, [(sd, sd_name), (libs, libs_name), busybox])
    bb_name = busybox[1]
    # the probe script as Nix copies ./labkit-probe.sh into the store: a file <hash>-labkit-probe.sh
    from labkit.core.data import probe_script

    with tempfile.TemporaryDirectory(dir=store) as tmp:
        f = Path(tmp) / PROBE_NAME
        f.write_bytes(probe_script())
        os.chmod(f, 0o444)
        os.utime(f, (EPOCH, EPOCH))
        probe_file = add_store_dir(store, PROBE_NAME, f)
    resolver = StoreResolver(store, bb_name, sd_name, probe_file)
    unit = render_service("labkit-probe", probe_service(NixosSettings()), resolver)
    with tempfile.TemporaryDirectory(dir=store) as tmp:
        u = Path(tmp) / "u"
        u.mkdir()
        (u / unit.name).write_text(unit.text)
        unit_store = add_store_dir(store, f"unit-{unit.name}", u)
        units = Path(tmp) / "units"
        units.mkdir()
        os.symlink(f"/nix/store/{unit_store}/{unit.name}", units / unit.name)
        for target in unit.wanted_by:  # generateUnits: <target>.wants/<unit> -> ../<unit>
            (units / f"{target}.wants").mkdir(exist_ok=True)
            os.symlink(f"../{unit.name}", units / f"{target}.wants" / unit.name)
        os.symlink("multi-user.target", units / "default.target")  # systemd.defaultUnit's default
        (units / POWEROFF_UNIT).write_text(_unit_text_poweroff(bb_name, sd_name))
        (units / "multi-user.target.wants").mkdir(exist_ok=True)
        os.symlink(f"../{POWEROFF_UNIT}", units / "multi-user.target.wants" / POWEROFF_UNIT)
        for masked in REHEARSAL_MASKS:
            os.symlink("/dev/null", units / masked)
        units_name = add_store_dir(store, "system-units", units)
    return SystemdStore(sd_name, libs_name, fhs, units_name, unit)
