"""Reproducible busybox initramfs images for the rehearsal guests.

Contents: static busybox + applet links, the kernel modules that mount ext4 on virtio-blk
(decompressed, listed in load order in ``lib/modules/<ver>/labkit-load-order``) and the flavour's
``/init``. Packed with ``cpio -o -H newc -R 0:0 --reproducible`` and ``gzip -n``: sorted list,
fixed mtimes, so two builds are byte-identical.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from labkit.core.data import guest_data
from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, require_tool
from labkit.rehearsal.kernel import GuestKernel, module_closure, read_module_bytes, read_modules_dep
from labkit.rehearsal.payloads import EPOCH, fix_mtimes

Flavor = Literal["alpine", "nixos"]
#: Modules needed to mount ext4 on a virtio-blk disk (crc32c: ext4/jbd2 checksums).
BOOT_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")
LOAD_ORDER = "labkit-load-order"



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


def stage_busybox(runner: Runner, root: Path) -> None:
    bb = static_busybox()
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bb, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in runner.run([bb, "--list-full"], query=True).stdout.split():
        rel = applet.strip("/")
        if rel == "bin/busybox":
            continue
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            os.symlink("/bin/busybox", dest)


def pack_cpio(runner: Runner, root: Path, out: Path) -> Path:
    """Pack ``root`` as a reproducible gzip newc cpio at ``out``."""
    fix_mtimes(root)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    listing = ("\n".join(names) + "\n").encode()
    raw = out.with_name(f".{out.name}.cpio-{os.getpid()}")
    try:
        runner.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--reproducible", "--quiet"],
                   cwd=root, input=listing, stdout_path=raw, env={"LC_ALL": "C"})
        runner.run(["gzip", "-n", "-9", "-c", raw], stdout_path=out)
    finally:
        raw.unlink(missing_ok=True)
    return out


def build_initramfs(runner: Runner, kernel: GuestKernel, flavor: Flavor, out: Path) -> Path:
    """Build the ``flavor`` ("alpine" or "nixos") initramfs at ``out``."""
    if flavor not in ("alpine", "nixos"):
        raise LabkitError(f"unknown guest flavor {flavor!r}", "use 'alpine' or 'nixos'")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".initramfs-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        for d in ("dev", "proc", "sys", "tmp", "media", "sysroot", "mnt-root", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        stage_busybox(runner, root)
        stage_modules(runner, kernel, root)
        init = root / "init"
        init.write_bytes(guest_data(f"{flavor}-init.sh"))
        os.chmod(init, 0o755)
        (root / "etc" / "labkit-initramfs").write_text(f"{flavor} {kernel.version}\n")
        for p in root.rglob("*"):
            if not p.is_symlink() and p.is_dir():
                os.chmod(p, 0o755)
            elif not p.is_symlink() and p.name != "init" and p.name != "busybox":
                os.chmod(p, 0o644)
        pack_cpio(runner, root, out)
    os.utime(out, (EPOCH, EPOCH))
    return out
