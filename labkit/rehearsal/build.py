"""Populate the partition trees of the two rehearsal guests and describe how to boot them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from labkit.core.data import guest_data, probe_script
from labkit.core.errors import InputError
from labkit.core.layout import LAB_LAYOUT, Role
from labkit.core.pkgsets import rehearsal_payloads
from labkit.core.runner import Runner, atomic_write_text
from labkit.rehearsal.alpinerepo import write_real_alpine_repo
from labkit.rehearsal.apk import lab_key, obtain_minirootfs, unpack_minirootfs
from labkit.rehearsal.initramfs import build_initramfs, build_modloop
from labkit.rehearsal.kernel import GuestKernel
from labkit.rehearsal.payloads import (
    BASE_PACKAGE,
    Payload,
    alpine_base_payload,
    busybox_payload,
    collect,
    fix_mtimes,
    nix_base32,
    write_alpine_repo,
    write_store_path,
)
from labkit.rehearsal.systemd import write_systemd_store
from labkit.rehearsal.types import BootEntry, GuestBuild, PackageInfo
from labkit.systems.alpine.apkovl import DEFAULT_INTERFACES, AlpineLogin, ApkovlSpec, build_apkovl, write_apkovl

CONSOLE = "console=ttyS0,115200"
ALPINE_MODULES = "modules=virtio_pci,virtio_blk,ext4"
#: As Alpine's boot entries name it (relative to the boot medium; read by the modloop service).
MODLOOP_PATH = "boot/modloop-lts"


def resolve_world(world: Sequence[str] | str) -> list[str]:
    """A package-set name (:mod:`labkit.core.pkgsets`: its rehearsal payload) or an explicit list of Debian
    package names."""
    if isinstance(world, str):
        return list(rehearsal_payloads(world))
    return list(dict.fromkeys(world))


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _cmdline(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# -- Alpine ---------------------------------------------------------------------------------------
LAB_MEDIA = "vda4"  # the Alpine partition in the lab VM (virtio-blk, partition 4): LBU media and repository
POWEROFF_NAME = "zz-labkit-poweroff.start"
LAB_INTERFACES = "auto lo\niface lo inet loopback\n"
#: After the probe: poweroff (QEMU exits; -no-reboot). On Alpine, and in the rehearsal which runs the same
#: busybox init + OpenRC, busybox poweroff only signals init, which acts once ``openrc default`` (this
#: local.d script included) has returned, then runs ``openrc shutdown`` (busybox init/init.c l.1182-1186).
POWEROFF_SCRIPT = b"""#!/bin/sh
# labkit lab: the probe has printed its bundle; power off (QEMU exits, -no-reboot), unless an armed
# reboot loop is rebooting (the probe left /run/labkit-loop-rebooting)
[ -e /run/labkit-loop-rebooting ] || poweroff
"""


def lab_apkovl_spec(
    hostname: str,
    world: Sequence[str],
    *,
    os_id: str = "alpine",
    media: str = LAB_MEDIA,
    root_size: str | None = None,
    extra: Mapping[str, tuple[bytes, int]] | None = None,
    runlevels: bool = True,
    login: AlpineLogin | None = None,
) -> ApkovlSpec:
    """labkit's declarative apkovl for the lab: hostname, world, LBU media, the runlevel links of a
    diskless setup-alpine system plus ``local``, the probe as ``etc/local.d/labkit-probe.start``,
    ``etc/labkit-os`` and a poweroff script.

    It is a measurement-only overlay: root stays locked, there is no user and no key, so it is built
    with ``no_login=True`` (stated here, not defaulted: labkit refuses such an apkovl otherwise).

    The same overlay boots real Alpine media and the Alpine-style rehearsal: the init comes from the
    packages (alpine-base/openrc, or the rehearsal base package), never from the overlay.
    ``os_id`` is what a real system reports; the rehearsal's base package overrides it with its marker.
    ``runlevels=False`` leaves the runlevel links out but ``local`` (labkit's apkovl before they were
    written): what a real Alpine would boot without is then visible in the lab.

    ``login`` (a real disk, :class:`AlpineLogin`): the system is somebody's: root gets the hash and the keys
    (openssh joins the world when there are keys: setup-sshd's ``rc-update add sshd default`` follows from
    it), DHCP on eth0 as setup-alpine writes it, and no poweroff after the probe (the machine stays up).
    """
    files = {"etc/labkit-os": (f"{os_id}\n".encode(), 0o644)}
    if login is None:
        files[f"etc/local.d/{POWEROFF_NAME}"] = (POWEROFF_SCRIPT, 0o755)
    files.update({k.lstrip("/"): v for k, v in (extra or {}).items()})
    names = ["alpine-base", *world, *(["openssh"] if login is not None and login.ssh_keys else [])]
    return ApkovlSpec(
        hostname=hostname,
        # the lab VM has no network card (qemu -nic none): only the loopback, so networking starts cleanly
        interfaces=LAB_INTERFACES if login is None else DEFAULT_INTERFACES,
        world=tuple(dict.fromkeys(names)),
        media=media,
        data=f"LABEL={LAB_LAYOUT.partition(Role.DATA).label}",  # the probe saves its bundle on /data
        probe=probe_script().decode(),
        root_size=root_size,
        extra_files=tuple((path, data, mode) for path, (data, mode) in sorted(files.items())),
        # measurement-only without a login: nobody logs in to a lab guest (see the docstring)
        no_login=login is None,
        root_password_hash=login.root_password_hash if login is not None else "*",
        root_ssh_keys=login.ssh_keys if login is not None else (),
        runlevels=runlevels,
    )


def apkovl_bytes(hostname: str, world: Sequence[str], extra: Mapping[str, tuple[bytes, int]] | None = None) -> bytes:
    """The lab overlay (:func:`lab_apkovl_spec`) as written by :func:`labkit.systems.alpine.apkovl.build_apkovl`."""
    return build_apkovl(lab_apkovl_spec(hostname, world, extra=extra))


def alpine_entry(cmdline_extra: str = "", quiet: bool = True) -> BootEntry:
    """How rEFInd boots the Alpine-style rehearsal (kernel and initramfs on the Alpine partition).

    ``quiet=False`` is Alpine's verbose entry (labkit.systems.alpine.extract): the initramfs then runs apk without
    ``--quiet`` (mkinitfs 3.10.1 ``initramfs-init.in:913-936``), so apk's ``(i/n) Installing`` lines reach the
    console, where the per-package timing reads them. The kernel's own half of ``quiet`` is kept as
    ``loglevel=4`` (Linux init/main.c ``quiet_kernel``: console_loglevel = CONSOLE_LOGLEVEL_QUIET, 4 in Debian's
    config): the kernel then prints to the serial console what it prints under ``quiet``, as the NixOS-style entry
    does, so the two systems' kernel phases are timed alike (a verbose console costs time under TCG)."""
    return BootEntry(
        title="Alpine-style rehearsal",
        partition_role="alpine",
        kernel="boot/vmlinuz-lts",
        initrd="boot/initramfs-lts",
        cmdline=_cmdline(ALPINE_MODULES, f"modloop=/{MODLOOP_PATH}", CONSOLE, "quiet" if quiet else "loglevel=4",
                         cmdline_extra),
    )


def build_alpine_tree(
    runner: Runner,
    kernel: GuestKernel,
    tree: Path,
    world: Sequence[str] | str = "default",
    hostname: str = "alpinelab",
    cmdline_extra: str = "",
    extra_overlay: Mapping[str, tuple[bytes, int]] | None = None,
    media: str = LAB_MEDIA,
    runlevels: bool = True,
    apk_cache: Path | None = None,
    login: AlpineLogin | None = None,
    alpine_rootfs: Path | None = None,
) -> GuestBuild:
    """Fill ``tree`` (the Alpine partition's root) with boot/ (kernel, initramfs, modloop), apks/ and
    ``<hostname>.apkovl.tar.gz``.

    ``extra_overlay`` adds files to the apkovl: ``{"etc/local.d/x.start": (data, 0o755)}``;
    ``runlevels=False`` writes an apkovl without the runlevel links (see :func:`lab_apkovl_spec`). ``apk_cache``:
    a directory where each repacked .apk is kept by content (:func:`labkit.rehearsal.payloads.write_apk`).

    ``alpine_rootfs`` (the official Alpine minirootfs tarball): the repository is real signed apk-tools
    packages (:mod:`labkit.rehearsal.alpinerepo`) and the initramfs installs them with the minirootfs's real
    ``apk`` (GuestBuild file ``packages`` = ``apk-tools``); without it, labkit's own tarballs and install
    (``packages`` = ``labkit-tarballs``: the load is labkit's imitation, and the report says so).
    """
    tree = Path(tree)
    names = resolve_world(world)
    if login is not None and login.ssh_keys:
        if login.root_password_hash in ("*", "!", "!!"):
            raise InputError("the Alpine-style rehearsal has no SSH server, so SSH keys cannot log in to it",
                             "give alpine_root_password_hash_file (a console login), or an Alpine ISO (alpine_iso)")
        runner.note("the Alpine-style rehearsal has no SSH server: root logs in on the console with its password; "
                    "the SSH keys are not installed")
        login = AlpineLogin(login.root_password_hash)
    with runner.step("rehearsal guest: Alpine-style tree"):
        _copy(kernel.vmlinuz, tree / "boot" / "vmlinuz-lts")
        if alpine_rootfs is not None or apk_cache is not None:
            alpine_rootfs, how = obtain_minirootfs(runner, alpine_rootfs, (apk_cache or tree.parent) / "alpine-rootfs")
            runner.note(f"Alpine minirootfs: {how}")
        if alpine_rootfs is not None:
            work = apk_cache if apk_cache is not None else tree.parent / f".{tree.name}-apk"
            tool = unpack_minirootfs(runner, Path(alpine_rootfs), work)
            key = lab_key(runner, work)
            build_initramfs(runner, kernel, "alpine", tree / "boot" / "initramfs-lts", alpine_root=tool.root,
                            keys=(key.public,))
            infos = write_real_alpine_repo(runner, tool, key, names, tree, cache=work / "data")
        else:
            runner.note("warning: no Alpine minirootfs (alpine_rootfs): the Alpine-style rehearsal installs its "
                        "packages with labkit's own tarball install, not apk-tools (manifest: package_install "
                        "labkit-tarballs)")
            build_initramfs(runner, kernel, "alpine", tree / "boot" / "initramfs-lts")
            infos = write_alpine_repo(alpine_payloads(runner, names), tree, cache=apk_cache)
        build_modloop(runner, kernel, tree / MODLOOP_PATH)
        spec = lab_apkovl_spec(hostname, [n for n in names if n != BASE_PACKAGE], extra=extra_overlay, media=media,
                               runlevels=runlevels, login=login)
        ovl = write_apkovl(spec, tree / spec.filename).name
    entry = alpine_entry(cmdline_extra, quiet=alpine_rootfs is None)
    files = (("apkovl", ovl), ("kernel", entry.kernel), ("initrd", entry.initrd), ("repository", "apks"),
             ("modloop", MODLOOP_PATH), ("packages", "apk-tools" if alpine_rootfs is not None else "labkit-tarballs"))
    return GuestBuild("alpine-rehearsal", entry, tuple(infos), kernel.version, files)


def alpine_payloads(runner: Runner, names: Sequence[str]) -> list[Payload]:
    """The rehearsal repository's packages: the base package (busybox + the rehearsal init) first."""
    return [alpine_base_payload(runner), *collect(runner, [n for n in names if n != BASE_PACKAGE])]


# -- NixOS ----------------------------------------------------------------------------------------
def tree_hash(root: Path, salt: str) -> str:
    h = hashlib.sha256(salt.encode())
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            h.update(f"L{rel}\0{os.readlink(p)}\0".encode())
        elif p.is_file():
            h.update(f"F{rel}\0{os.stat(p).st_mode & 0o777:o}\0".encode() + hashlib.sha256(p.read_bytes()).digest())
        else:
            h.update(f"D{rel}\0".encode())
    return nix_base32(h.digest()[:20])


def _add_store_dir(store: Path, name: str, build: Path) -> str:
    """Move a built directory into the store under its content hash; return the store name."""
    fix_mtimes(build)
    full = f"{tree_hash(build, name)}-{name}"
    final = store / full
    if final.exists():
        shutil.rmtree(build)
    else:
        os.replace(build, final)
    return full


BIN_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")
#: The rehearsal system's /etc/os-release (systemd greets with PRETTY_NAME): never NixOS's.
NIXOS_REHEARSAL_OS_RELEASE = ('NAME="labkit rehearsal"\nID=labkit-rehearsal\nVARIANT_ID=nixos-style\n'
                              'PRETTY_NAME="labkit NixOS-style rehearsal (not NixOS)"\n')


def _sw_links(busybox: Payload, bb_store: str, pkgs: Sequence[tuple[Payload, str]]) -> dict[str, str]:
    links = {PurePosixPath(e.path).name: f"/nix/store/{bb_store}/{e.path}" for e in busybox.entries
             if str(PurePosixPath(e.path).parent) == "bin"}
    for payload, store_name in pkgs:  # real packages win over busybox applets, as in a buildEnv
        for e in payload.entries:
            if str(PurePosixPath(e.path).parent) in BIN_DIRS:
                links[PurePosixPath(e.path).name] = f"/nix/store/{store_name}/{e.path}"
    return links


def write_store_sizes(store_tree: Path) -> Path:
    """Register each store path's size at build time, as Nix does in its database (narSize), so the
    probe reads one small file instead of walking the store with ``du`` during the measured boot.

    Format: ``du -sk`` lines (``<KiB>\t/nix/store/<name>``, 4 KiB blocks per file, like du on ext4).
    """
    lines = []
    store = store_tree / "store"
    for path in sorted(store.iterdir()):
        blocks = 4  # the directory itself
        for f in path.rglob("*"):
            st = f.lstat()
            blocks += 4 * -(-st.st_size // 4096) if f.is_file() and not f.is_symlink() else 0
            blocks += 4 if f.is_dir() and not f.is_symlink() else 0
        lines.append(f"{blocks}\t/nix/store/{path.name}")
    out = store_tree / "var" / "nix" / "labkit-store-sizes"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def build_nixos_trees(
    runner: Runner,
    kernel: GuestKernel,
    boot_tree: Path,
    store_tree: Path,
    data_tree: Path,
    packages: Sequence[str] | str = "default",
    hostname: str = "nixoslab",
    cmdline_extra: str = "",
) -> GuestBuild:
    """Fill the NixOS /boot tree (``kernels/``), the /nix tree (``store/``) and create /data's tree."""
    boot_tree, store_tree, data_tree = Path(boot_tree), Path(store_tree), Path(data_tree)
    names = [n for n in resolve_world(packages) if n != "busybox-static"]
    store = store_tree / "store"
    with runner.step("rehearsal guest: NixOS-style trees"):
        store.mkdir(parents=True, exist_ok=True)
        data_tree.mkdir(parents=True, exist_ok=True)
        bb = busybox_payload(runner, store_layout=True)
        bb_info = write_store_path(bb, store)
        bb_name = PurePosixPath(bb_info.file).name
        payloads = collect(runner, names)
        infos: list[PackageInfo] = [bb_info]
        pkg_names: list[tuple[Payload, str]] = []
        for p in payloads:
            info = write_store_path(p, store)
            infos.append(info)
            pkg_names.append((p, PurePosixPath(info.file).name))
        for info in infos:
            fix_mtimes(store_tree / info.file)
        sd = write_systemd_store(runner, store, (bb, bb_name))
        for name in (sd.systemd, sd.libs):
            size = sum(f.stat().st_size for f in (store / name).rglob("*") if f.is_file() and not f.is_symlink())
            infos.append(PackageInfo(name.split("-", 1)[1], "debian", size, 0, f"store/{name}"))
        with tempfile.TemporaryDirectory(dir=store) as tmp:
            probe_dir = Path(tmp) / "probe"
            (probe_dir / "bin").mkdir(parents=True)
            (probe_dir / "bin" / "labkit-probe").write_bytes(probe_script())
            os.chmod(probe_dir / "bin" / "labkit-probe", 0o755)
            probe_name = _add_store_dir(store, "labkit-probe", probe_dir)

            system = Path(tmp) / "system"
            (system / "etc").mkdir(parents=True)
            (system / "sw" / "bin").mkdir(parents=True)
            (system / "etc" / "labkit-os").write_text("nixos-rehearsal\n")
            (system / "etc" / "hostname").write_text(f"{hostname}\n")
            (system / "etc" / "os-release").write_text(NIXOS_REHEARSAL_OS_RELEASE)
            (system / "etc" / "systemd").mkdir()
            os.symlink(f"/nix/store/{sd.units}", system / "etc" / "systemd" / "system")  # environment.etc
            os.symlink(f"/nix/store/{sd.systemd}", system / "systemd")  # toplevel's systemd link
            os.symlink(f"/nix/store/{sd.fhs}", system / "fhs")  # rehearsal only: see labkit.rehearsal.systemd
            links = _sw_links(bb, bb_name, pkg_names)
            links["labkit-probe"] = f"/nix/store/{probe_name}/bin/labkit-probe"
            for link, target in sorted(links.items()):
                os.symlink(target, system / "sw" / "bin" / link)
            # The init names its own store path: hash the template with the inputs, like a derivation.
            template = guest_data("nixos-stage2.sh").decode()
            drv = hashlib.sha256(f"{template}\0{bb_name}\0{probe_name}\0{sorted(links.items())}\0{sd}".encode())
            sys_name = f"{nix_base32(drv.digest()[:20])}-labkit-system"
            init = (template.replace("@busybox@", f"/nix/store/{bb_name}").replace("@system@", f"/nix/store/{sys_name}")
                    .replace("@systemd@", f"/nix/store/{sd.systemd}"))
            (system / "init").write_text(init)
            os.chmod(system / "init", 0o755)
            fix_mtimes(system)
            final = store / sys_name
            if final.exists():
                shutil.rmtree(final)
            os.replace(system, final)
        write_store_sizes(store_tree)
        ver = kernel.version
        _copy(kernel.vmlinuz, boot_tree / "kernels" / f"bzImage-{ver}")
        build_initramfs(runner, kernel, "nixos", boot_tree / "kernels" / f"initrd-{ver}")
    entry = BootEntry(
        title="NixOS-style rehearsal",
        partition_role="nixos-boot",
        kernel=f"kernels/bzImage-{ver}",
        initrd=f"kernels/initrd-{ver}",
        cmdline=_cmdline(f"init=/nix/store/{sys_name}/init", CONSOLE, "quiet", cmdline_extra),
    )
    files = (("system", f"store/{sys_name}"), ("kernel", entry.kernel), ("initrd", entry.initrd),
             ("probe", f"store/{probe_name}"), ("systemd", f"store/{sd.systemd}"), ("units", f"store/{sd.units}"))
    return GuestBuild("nixos-rehearsal", entry, tuple(infos), kernel.version, files)
