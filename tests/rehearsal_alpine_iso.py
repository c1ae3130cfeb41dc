"""A rehearsal ISO in Alpine's real ISO layout, built by labkit from the Alpine-style rehearsal guest.

This machine cannot download an Alpine ISO, so the real-media lab path (``labkit lab --alpine-iso``)
is proven end to end on an ISO labkit builds itself, labelled *rehearsal* everywhere: the volume id,
``.alpine-release`` (``labkit-rehearsal ...``), the kernel and initramfs (a Debian kernel and the
rehearsal busybox initramfs), the packages (Debian payloads repacked as gzip tarballs) and the
os id the guest reports (``alpine-rehearsal``). It is not Alpine Linux.

Layout (the same paths as ``alpine-standard-*.iso``)::

    .alpine-release                 "labkit-rehearsal ..." (real: "3.20.3")
    apks/.boot_repository           the hidden marker that makes apks/ a boot repository
    apks/x86_64/*.apk               rehearsal payloads (gzip tarballs; no .PKGINFO, no signature)
    apks/x86_64/APKINDEX.tar.gz     real APKINDEX format (P/V/A/S/I/T/D/p records), unsigned
    apks/x86_64/LABKIT-INDEX        the index the rehearsal initramfs reads
    boot/vmlinuz-lts                the Debian kernel
    boot/initramfs-lts              the rehearsal's Alpine-style initramfs
    boot/modloop-lts                the rehearsal's modloop (labkit.rehearsal.initramfs.build_modloop): an
                                    ext4 image of modules/<version>/, not a squashfs (squashfs-tools is not
                                    a labkit dependency); the guest's modloop service finds and mounts it
    boot/config-lts, System.map-lts the Debian kernel's config and System.map
    boot/syslinux/, boot/grub/, efi/  loader placeholders (text): the extraction must drop them; the
                                    ISO itself is not bootable (no El Torito image)

plus ``<iso>.sha256`` beside it in the published format (``<hex>  <name>``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.core.download import sha256_file as file_sha256
from labkit.core.runner import Runner, atomic_write_bytes, atomic_write_text
from labkit.rehearsal.build import alpine_payloads, resolve_world
from labkit.rehearsal.initramfs import build_initramfs, build_modloop
from labkit.rehearsal.kernel import GuestKernel
from labkit.rehearsal.payloads import BASE_PACKAGE, EPOCH, fix_mtimes, write_alpine_repo
from labkit.rehearsal.types import PackageInfo
from labkit.systems.alpine.media import REHEARSAL_RELEASE
from labkit.systems.alpine.targz import Entry, targz_bytes

RELEASE_TEXT = f"{REHEARSAL_RELEASE} (Alpine-style rehearsal ISO built by labkit; not Alpine Linux)\n"
VOLUME_ID = "labkit-rehearsal x86_64"
LOADER_PLACEHOLDERS = {
    "boot/syslinux/syslinux.cfg": "# labkit rehearsal placeholder (real: SYSLINUX config); rEFInd does not use it\n",
    "boot/syslinux/isolinux.bin": "labkit rehearsal placeholder for isolinux.bin\n",
    "boot/grub/grub.cfg": "# labkit rehearsal placeholder (real media: GRUB config); rEFInd does not use it\n",
    "efi/boot/bootx64.efi": "labkit rehearsal placeholder for the ISO's EFI loader (not an EFI binary)\n",
}


@dataclass(frozen=True)
class RehearsalIso:
    path: Path
    sha256: str
    sha256_file: Path
    packages: tuple[PackageInfo, ...]
    build_s: float


def apkindex_bytes(infos: Sequence[PackageInfo]) -> bytes:
    """An unsigned ``APKINDEX.tar.gz`` (DESCRIPTION + APKINDEX) for the rehearsal repository, in the
    real record format; the base package provides ``alpine-base``."""
    records = []
    for i in infos:
        lines = [f"P:{i.name}", f"V:{i.version}", "A:x86_64", f"S:{i.compressed_size}", f"I:{i.installed_size}",
                 f"T:labkit rehearsal payload (Debian package {i.name}, repacked)"]
        if i.name == BASE_PACKAGE:
            lines += ["p:alpine-base"]
        records.append("\n".join(lines) + "\n")
    text = "\n".join(records) + "\n"
    return targz_bytes([Entry("DESCRIPTION", "file", 0o644, b"labkit rehearsal repository\n"),
                        Entry("APKINDEX", "file", 0o644, text.encode())])


def build_rehearsal_iso(
    runner: Runner,
    kernel: GuestKernel,
    out_iso: Path,
    *,
    world: Sequence[str] | str = "default",
) -> RehearsalIso:
    """Build the rehearsal ISO at ``out_iso`` (and ``out_iso.sha256``); ``world`` picks the payloads."""
    out_iso = Path(out_iso)
    out_iso.parent.mkdir(parents=True, exist_ok=True)
    names = resolve_world(world)
    started = time.monotonic()
    with runner.step(f"rehearsal ISO {out_iso.name}"), \
            tempfile.TemporaryDirectory(prefix=".rehearsal-iso-", dir=out_iso.parent) as tmp:
        stage = Path(tmp) / "iso"
        stage.mkdir()
        atomic_write_text(stage / ".alpine-release", RELEASE_TEXT)
        infos = write_alpine_repo(alpine_payloads(runner, names), stage)
        atomic_write_bytes(stage / "apks" / "x86_64" / "APKINDEX.tar.gz", apkindex_bytes(infos))
        boot = stage / "boot"
        boot.mkdir(exist_ok=True)
        shutil.copyfile(kernel.vmlinuz, boot / "vmlinuz-lts")
        build_initramfs(runner, kernel, "alpine", boot / "initramfs-lts")
        build_modloop(runner, kernel, boot / "modloop-lts")
        kboot = kernel.vmlinuz.parent
        for src, dest in ((f"config-{kernel.version}", "config-lts"),
                          (f"System.map-{kernel.version}", "System.map-lts")):
            if (kboot / src).is_file():
                shutil.copyfile(kboot / src, boot / dest)
            else:
                atomic_write_text(boot / dest, f"labkit rehearsal placeholder: the kernel has no {src}\n")
        for rel, text in LOADER_PLACEHOLDERS.items():
            atomic_write_text(stage / rel, text)
        fix_mtimes(stage)
        part = out_iso.with_name(f".{out_iso.name}.tmp-{os.getpid()}")
        part.unlink(missing_ok=True)
        date = time.strftime("%Y%m%d%H%M%S00", time.gmtime(EPOCH))
        runner.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", VOLUME_ID,
                    "--modification-date=" + date, "-o", str(part), str(stage)])
        os.replace(part, out_iso)
    digest = file_sha256(out_iso)
    sidecar = out_iso.with_name(out_iso.name + ".sha256")
    atomic_write_text(sidecar, f"{digest}  {out_iso.name}\n")
    packages = tuple(PackageInfo(i.name, i.version, i.installed_size, i.compressed_size, i.file) for i in infos)
    runner.note(f"rehearsal ISO {out_iso} ({out_iso.stat().st_size / 2**20:.1f} MiB, {len(packages)} packages, "
                f"sha256 {digest[:12]}…)")
    return RehearsalIso(out_iso, digest, sidecar, packages, time.monotonic() - started)

