"""Reproducible busybox initramfs images for the rehearsal guests.

Contents: static busybox + applet links, the kernel modules that mount ext4 on virtio-blk
(decompressed, listed in load order in ``lib/modules/<ver>/labkit-load-order``) and the flavour's
``/init``. Packed with ``cpio -o -H newc -R 0:0 --reproducible`` and ``gzip -n``: sorted list,
fixed mtimes, so two builds are byte-identical.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from labkit.core.data import guest_data
from labkit.core.errors import LabkitError
from labkit.core.files import atomic_write_bytes
from labkit.core.runner import Runner, require_tool
from labkit.rehearsal.kernel import (
    GuestKernel,
    module_aliases,
    module_closure,
    module_name,
    read_module_bytes,
    read_modules_dep,
)
from labkit.rehearsal.payloads import EPOCH, fix_mtimes

Flavor = Literal["alpine", "nixos"]
#: Modules needed to mount ext4 on a virtio-blk disk (crc32c: ext4/jbd2 checksums).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
#: Per flavour. The Alpine-style initramfs also mounts FAT (nlplug-findfs scans the ESP too; vfat wants the
#: codepage 437 and ascii tables the Debian kernel defaults to) and loop, which Alpine's initramfs loads for
#: the modloop (mkinitfs 3.10.1 initramfs-init.in l.567 ``modprobe -a ... loop squashfs``).
FLAVOR_MODULES: dict[str, tuple[str, ...]] = {
    "alpine": (*BOOT_MODULES, "loop", "vfat", "nls_cp437", "nls_ascii"),
    # vfat: the reboot loop's probe mounts the ESP to set rEFInd's next default (labkit/data/guest/loop.sh),
    # as a real NixOS has it mounted at /boot/efi
    "nixos": (*BOOT_MODULES, "vfat", "nls_cp437", "nls_ascii"),
}
#: The rehearsal's modloop (``boot/modloop-lts``): the initramfs's modules again, plus the drivers of the lab
#: VM's devices (QEMU q35: ICH9 LPC, SMBus and AHCI, the PC speaker, fw_cfg), which hwdrivers loads.
MODLOOP_MODULES = (*FLAVOR_MODULES["alpine"], "lpc_ich", "i2c_i801", "ahci", "pcspkr", "qemu_fw_cfg")
LOAD_ORDER = "labkit-load-order"
#: Fixed, with -U clear and E2FSPROGS_FAKE_TIME: the modloop image is byte-reproducible
MODLOOP_HASH_SEED = "6c61626b-6974-2d6d-6f64-6c6f6f700001"



def static_busybox() -> Path:
    path = Path(os.path.realpath(require_tool("busybox")))
    head = path.read_bytes()[:4096]
    if b"ld-linux" in head or b"/lib64/ld" in head:
        raise LabkitError(f"{path} is dynamically linked; the initramfs needs a static busybox",
                          "apt-get install -y busybox-static")
    return path


def stage_modules(runner: Runner, kernel: GuestKernel, root: Path, roots: tuple[str, ...] = BOOT_MODULES) -> list[str]:
    """Copy the module closure of ``roots`` (decompressed) under ``root``; return the load order."""
    deps = read_modules_dep(kernel.modules_dir / "modules.dep")
    order = module_closure(deps, roots)
    dest_dir = root / "lib" / "modules" / kernel.version
    loaded: list[str] = []
    for rel in order:
        plain = rel[: rel.index(".ko") + 3]
        dest = dest_dir / plain
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(read_module_bytes(runner, kernel.modules_dir / rel))
        loaded.append(plain)
    (dest_dir / LOAD_ORDER).write_text("".join(f"{p}\n" for p in loaded))
    (dest_dir / "modules.dep").write_text(
        "".join(f"{rel[: rel.index('.ko') + 3]}: {' '.join(d[: d.index('.ko') + 3] for d in deps[rel])}".rstrip()
                + "\n" for rel in order)
    )
    return loaded


def link_applets(root: Path, listing: str) -> None:
    """A ``/bin/busybox`` link under ``root`` for every applet of ``busybox --list-full`` (``listing``) not
    already there."""
    for applet in listing.split():
        rel = applet.strip("/")
        if rel == "bin/busybox":
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.symlink("/bin/busybox", dest)


def stage_busybox(runner: Runner, root: Path) -> None:
    bb = static_busybox()
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bb, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    link_applets(root, runner.run([bb, "--list-full"], query=True).stdout)


def stage_alpine_busybox(runner: Runner, alpine_root: Path, root: Path) -> None:
    """The minirootfs's own busybox (Alpine's, linked against its musl, which :func:`stage_apk` copies) and its
    applet links, instead of Debian's static one: the initramfs then runs Alpine's userland, as Alpine's does."""
    src = alpine_root / "bin" / "busybox"
    loader = alpine_root / "lib" / "ld-musl-x86_64.so.1"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, root / "bin" / "busybox")
    applets = runner.run([loader, "--library-path", alpine_root / "lib", src, "--list-full"], query=True).stdout
    link_applets(root, applets)


#: ``gzip -9`` output of the cpio archives packed in this process, by the cpio's sha256 (at most
#: _PACKED_MAX): the lab packs the same Alpine-style initramfs for its main image and again for every
#: load-cost image (~2.5 s of ``gzip -9`` each under this host's CPU); the bytes are the same, gzip -n being
#: deterministic for the same input.
_PACKED: dict[str, bytes] = {}
_PACKED_MAX = 4


def pack_cpio(runner: Runner, root: Path, out: Path) -> Path:
    """Pack ``root`` as a reproducible gzip newc cpio at ``out`` (the gzip step is skipped, and said so, when this
    process already compressed the very same cpio)."""
    fix_mtimes(root)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    listing = ("\n".join(names) + "\n").encode()
    raw = out.with_name(f".{out.name}.cpio-{os.getpid()}")
    try:
        runner.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--reproducible", "--quiet"],
                   cwd=root, input=listing, stdout_path=raw, env={"LC_ALL": "C"})
        digest = hashlib.sha256(raw.read_bytes()).hexdigest() if raw.is_file() else ""
        if digest and digest in _PACKED:
            atomic_write_bytes(out, _PACKED[digest])
            runner.note(f"{out.name}: the same cpio as one compressed before in this run (sha256 {digest[:16]}): "
                        "its gzip -n -9 output reused")
        else:
            runner.run(["gzip", "-n", "-9", "-c", raw], stdout_path=out)
            if digest and out.is_file() and len(_PACKED) < _PACKED_MAX:
                _PACKED[digest] = out.read_bytes()
    finally:
        raw.unlink(missing_ok=True)
    return out


#: What the Alpine-style initramfs takes from the minirootfs to run the real ``apk add`` as Alpine's initramfs does
#: (mkinitfs 3.10.1 ``initramfs-init.in:913-936``): the musl loader (also ``libc.musl-x86_64.so.1``), apk-tools'
#: library and the libraries it loads, and ``sbin/apk``.
APK_FILES = ("lib/ld-musl-x86_64.so.1", "lib/libc.musl-x86_64.so.1", "lib/libapk.so.2.14.0", "lib/libcrypto.so.3",
             "lib/libssl.so.3", "lib/libz.so.1", "lib/libz.so.1.3.1", "sbin/apk")


def stage_apk(alpine_root: Path, root: Path, keys: tuple[Path, ...]) -> list[str]:
    """Copy :data:`APK_FILES` (symlinks kept) and the public ``keys`` (``etc/apk/keys/``, copied into the new
    root before ``apk add``: mkinitfs 3.10.1 ``initramfs-init.in:867-869``, ``mkinitfs.in:149-153``); return
    the executables' paths (their modes are kept)."""
    for rel in APK_FILES:
        src, dest = alpine_root / rel, root / rel
        if not src.exists() and not src.is_symlink():
            raise LabkitError(f"the Alpine minirootfs {alpine_root} has no {rel}",
                              "give the official alpine-minirootfs-3.20.x (apk-tools 2.14) tarball")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest)
        else:
            shutil.copyfile(src, dest)
    (root / "etc" / "apk" / "keys").mkdir(parents=True, exist_ok=True)
    for key in keys:
        shutil.copyfile(key, root / "etc" / "apk" / "keys" / key.name)
    return ["lib/ld-musl-x86_64.so.1", "sbin/apk"]


def build_initramfs(runner: Runner, kernel: GuestKernel, flavor: Flavor, out: Path,
                    alpine_root: Path | None = None, keys: tuple[Path, ...] = ()) -> Path:
    """Build the ``flavor`` ("alpine" or "nixos") initramfs at ``out``; with ``alpine_root`` (an unpacked Alpine
    minirootfs, Alpine-style only) it carries the minirootfs's busybox (:func:`stage_alpine_busybox`) instead of
    Debian's static one, the real apk (:func:`stage_apk`) and the public ``keys``."""
    if flavor not in ("alpine", "nixos"):
        raise LabkitError(f"unknown guest flavor {flavor!r}", "use 'alpine' or 'nixos'")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".initramfs-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        for d in ("dev", "proc", "sys", "tmp", "media", "sysroot", "mnt-root", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        if alpine_root is not None and flavor == "alpine":
            stage_alpine_busybox(runner, alpine_root, root)
        else:
            stage_busybox(runner, root)
        stage_modules(runner, kernel, root, FLAVOR_MODULES[flavor])
        executables = {"init", "bin/busybox"}
        if alpine_root is not None and flavor == "alpine":
            executables.update(stage_apk(alpine_root, root, keys))
        init = root / "init"
        init.write_bytes(guest_data(f"{flavor}-init.sh"))
        os.chmod(init, 0o755)
        (root / "etc" / "labkit-initramfs").write_text(f"{flavor} {kernel.version}\n")
        for p in root.rglob("*"):
            if not p.is_symlink() and p.is_dir():
                os.chmod(p, 0o755)
            elif not p.is_symlink():
                os.chmod(p, 0o755 if p.relative_to(root).as_posix() in executables else 0o644)
        pack_cpio(runner, root, out)
    os.utime(out, (EPOCH, EPOCH))
    return out


def build_modloop(runner: Runner, kernel: GuestKernel, out: Path, roots: tuple[str, ...] = MODLOOP_MODULES) -> Path:
    """The rehearsal's modloop at ``out``: a read-only image holding ``modules/<version>/`` (the modules of
    ``roots`` with their dependencies, decompressed, ``modules.dep`` and ``modules.alias`` as depmod writes
    them), as Alpine's ``boot/modloop-<flavor>`` does (a squashfs there; ext4 here: the host has mke2fs,
    not mksquashfs). The ``modloop`` service loop-mounts it on ``/.modloop`` and links ``/lib/modules`` to it.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".modloop-", dir=out.parent) as tmp:
        tree = Path(tmp) / "tree"
        loaded = stage_modules(runner, kernel, tree, roots)
        kdir = tree / "lib" / "modules" / kernel.version
        aliases = []
        for rel in loaded:
            name = module_name(rel)
            aliases += [f"alias {a} {name}\n" for a in module_aliases((kdir / rel).read_bytes())]
        (kdir / "modules.alias").write_text("".join(aliases))
        (kdir / LOAD_ORDER).unlink()
        final = Path(tmp) / "modloop"
        (final / "modules").mkdir(parents=True)
        os.replace(kdir, final / "modules" / kernel.version)
        fix_mtimes(final)
        size_kib = 1024 + 2 * sum(p.stat().st_size for p in final.rglob("*") if p.is_file()) // 1024
        tmp_img = out.with_name(out.name + ".tmp")
        runner.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "modloop", "-U", "clear",
                    "-E", f"root_owner=0:0,hash_seed={MODLOOP_HASH_SEED}", "-d", final, tmp_img, f"{size_kib}k"],
                   env={"E2FSPROGS_FAKE_TIME": str(EPOCH)})
        # mke2fs -d copies each file's times (e2fsprogs misc/create_inode.c set_inode_extra): ctime, which no one
        # can set on the host, and atime, which reading the file may just have moved: fix both in the image, so
        # the modloop is byte-reproducible
        script = Path(tmp) / "times.debugfs"
        paths = ["/", *sorted("/" + p.relative_to(final).as_posix() for p in final.rglob("*"))]
        script.write_text("".join(f'set_inode_field "{p}" {field} @{EPOCH}\n' for p in paths
                                  for field in ("ctime", "atime")))
        runner.run(["debugfs", "-w", "-f", script, tmp_img], env={"E2FSPROGS_FAKE_TIME": str(EPOCH)})
        os.replace(tmp_img, out)
    os.utime(out, (EPOCH, EPOCH))
    return out
