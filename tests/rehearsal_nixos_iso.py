"""A rehearsal installer ISO in the NixOS minimal ISO's layout, built by labkit. It is not NixOS.

This machine cannot download the NixOS ISO, and NixOS's real ``nixos-install``,
``nixos-generate-config`` and ``grub-install`` cannot exist here (they need Nix and a NixOS
store). So the real-media NixOS lab path (:mod:`labkit.lab.nixos_install`) is proven end to end
on an ISO labkit builds itself, labelled *rehearsal* everywhere: the volume id, the boot menu
titles, the console banner, the tools' messages and the os id the installed guest reports
(``nixos-rehearsal``).

Layout (the paths a real ``nixos-minimal-*.iso`` uses)::

    boot/bzImage                 the Debian kernel (real: NixOS's kernel)
    boot/initrd                  a busybox initrd (real: NixOS stage 1): loads virtio/ext4/vfat/isofs,
                                 makes /dev/disk/by-label links, mounts the ISO by root=LABEL= on /iso
                                 and offers an automatically logged-in shell on ttyS0
    isolinux/isolinux.cfg        DEFAULT/LABEL/LINUX/APPEND init=/nix/store/…/init root=LABEL=…/INITRD
    EFI/boot/grub.cfg            the same entry in GRUB syntax (``${isoboot}`` as on the real ISO)
    labkit-rehearsal/INSTALLER   marker: os id and rEFInd title of what it installs
    labkit-rehearsal/bin/        busybox-script stand-ins: nixos-install, nixos-generate-config,
                                 grub-install, sudo
    labkit-rehearsal/share/      the generated-style configuration.nix / hardware-configuration.nix
    labkit-rehearsal/payload/    what the stand-in nixos-install copies: nix/ (the NixOS-style
                                 rehearsal store from :func:`labkit.rehearsal.build.build_nixos_trees`,
                                 with a ``*-grub-*/lib/grub/x86_64-efi`` holding modinfo.sh and the
                                 grubx64.efi labkit builds on the host with ``grub-mkimage``) and
                                 boot/ (kernels + grub/grub.cfg)
    nix/store/<hash>-labkit-rehearsal-installer/init   the path init= names (a note; the initrd ignores it)

plus ``<iso>.sha256`` beside it (``<hex>  <name>``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.core.download import sha256_file as file_sha256
from labkit.core.layout import LAB_LAYOUT, Layout
from labkit.core.runner import Runner, atomic_write_text
from labkit.rehearsal.build import build_nixos_trees, tree_hash, write_store_sizes
from labkit.rehearsal.initramfs import BOOT_MODULES, pack_cpio, stage_busybox, stage_modules
from labkit.rehearsal.kernel import GuestKernel
from labkit.rehearsal.payloads import EPOCH, fix_mtimes
from labkit.rehearsal.types import GuestBuild
from labkit.systems import bootchain

VOLUME_ID = "labkit-rehearsal-installer"
REHEARSAL_DIR = "labkit-rehearsal"
MARKER = f"{REHEARSAL_DIR}/INSTALLER"
#: Modules the installer needs beyond the boot set: the ESP (vfat; a module in Debian's kernel) and the ISO.
INSTALLER_MODULES = (*BOOT_MODULES, "vfat", "nls_cp437", "nls_utf8", "nls_ascii", "isofs")
FAIL_FLAG = "--labkit-rehearsal-fail"  # any unknown option makes the stand-ins exit 1, like the real tools

NIXOS_INSTALL = r"""#!/bin/sh
# labkit rehearsal stand-in for nixos-install: NOT NixOS's tool (that needs Nix). It checks its
# arguments and NIXOS_CONFIG like the real one, then copies labkit's NixOS-style rehearsal system
# from the ISO into <root>/nix and <root>/boot and points the system profile at it.
fail() { echo "nixos-install (labkit rehearsal): $*" >&2; exit 1; }
root=/mnt
while [ $# -gt 0 ]; do
	case "$1" in
		--root) root=$2; shift 2 ;;
		--no-root-passwd|--no-root-password|--no-channel-copy) shift ;;
		*) echo "nixos-install (labkit rehearsal): unknown option '$1'" >&2; exit 1 ;;
	esac
done
P=/iso/labkit-rehearsal/payload
cfg=${NIXOS_CONFIG:-$root/etc/nixos/configuration.nix}
[ -f "$cfg" ] || { echo "configuration file $cfg doesn't exist" >&2; exit 1; }
grep -q 'labkit.nix' "$cfg" || fail "$cfg does not import labkit.nix"
for mp in /nix /boot /boot/efi; do
	grep -q " $root$mp " /proc/mounts || fail "$root$mp is not mounted"
done
[ -d "${TMPDIR:-/tmp}" ] || { echo "TMPDIR ${TMPDIR} does not exist" >&2; exit 1; }
echo "copying the labkit rehearsal system (not NixOS) to $root/nix ..."
cp -a "$P/nix/." "$root/nix/" || exit 1
cp -a "$P/boot/." "$root/boot/" || exit 1
system=$(cat "$P/system-path") || exit 1
mkdir -p "$root/nix/var/nix/profiles" && ln -sfn "$system" "$root/nix/var/nix/profiles/system" || exit 1
mkdir -p "$root/etc" && cp "$cfg" "$root/nix/var/nix/labkit-configuration.nix"
# what the real build keeps in the system (copySystemConfiguration: configuration.nix; labkit.nix links itself
# and the probe into it): copies of the files on /data
d=$(dirname "$cfg")
for f in configuration.nix labkit.nix labkit-probe.sh; do
	cp "$d/$f" "$root$system/$f" || fail "cannot keep $f in the system"
done
sync
echo "installation finished! (labkit rehearsal)"
"""

NIXOS_GENERATE_CONFIG = r"""#!/bin/sh
# labkit rehearsal stand-in for nixos-generate-config: NOT NixOS's tool. Writes the pair the real one
# writes on a UEFI machine (configuration.nix enabling systemd-boot, hardware-configuration.nix).
root=; dir=; force=
while [ $# -gt 0 ]; do
	case "$1" in
		--root) root=$2; shift 2 ;;
		--dir) dir=$2; shift 2 ;;
		--force) force=1; shift ;;
		*) echo "nixos-generate-config (labkit rehearsal): unknown option '$1'" >&2; exit 1 ;;
	esac
done
[ -n "$dir" ] || dir=$root/etc/nixos
S=/iso/labkit-rehearsal/share
mkdir -p "$dir" || exit 1
echo "writing $dir/hardware-configuration.nix..."
cp "$S/hardware-configuration.nix" "$dir/hardware-configuration.nix" || exit 1
if [ -e "$dir/configuration.nix" ] && [ -z "$force" ]; then
	echo "warning: not overwriting existing $dir/configuration.nix"
else
	echo "writing $dir/configuration.nix..."
	cp "$S/configuration.nix" "$dir/configuration.nix" || exit 1
fi
"""

GRUB_INSTALL = r"""#!/bin/sh
# labkit rehearsal stand-in for grub-install: NOT GRUB's tool. Checks the options labkit passes, the
# x86_64-efi module directory (modinfo.sh), then installs the grubx64.efi labkit built on the host
# with grub-mkimage (kept in that directory) as <efi>/EFI/<id>/grubx64.efi. No NVRAM entry, ever.
fail() { echo "grub-install: error: $* (labkit rehearsal)" >&2; exit 1; }
target=; efi=; bootdir=; id=grub; dir=; nvram=1
for a in "$@"; do
	case "$a" in
		--target=*) target=${a#*=} ;;
		--efi-directory=*) efi=${a#*=} ;;
		--boot-directory=*) bootdir=${a#*=} ;;
		--bootloader-id=*) id=${a#*=} ;;
		--directory=*) dir=${a#*=} ;;
		--no-nvram) nvram=0 ;;
		*) echo "grub-install (labkit rehearsal): unrecognized option '$a'" >&2; exit 1 ;;
	esac
done
[ "$target" = x86_64-efi ] || { echo "grub-install (labkit rehearsal): only --target=x86_64-efi" >&2; exit 1; }
[ -f "$dir/modinfo.sh" ] || fail "$dir/modinfo.sh doesn't exist. Please specify --target or --directory."
[ "$nvram" = 0 ] || fail "refusing to write an NVRAM entry without --no-nvram (rEFInd stays first)"
grep -q " $efi vfat " /proc/mounts || fail "$efi doesn't look like an EFI partition."
echo "Installing for x86_64-efi platform. (labkit rehearsal)"
mkdir -p "$efi/EFI/$id" "$bootdir/grub/x86_64-efi" || exit 1
cp "$dir/labkit-grubx64.efi" "$efi/EFI/$id/grubx64.efi" || exit 1
cp "$dir/modinfo.sh" "$bootdir/grub/x86_64-efi/modinfo.sh" || exit 1
sync
echo "Installation finished. No error reported."
"""

SUDO = r"""#!/bin/sh
# labkit rehearsal stand-in for sudo: the rehearsal shell already runs as root (the real ISO logs in
# user nixos with passwordless sudo); `sudo -i` starts a root login shell with root's prompt.
if [ "$1" = -i ]; then
	export PS1='[root@labkit-rehearsal:~]# '
	cd /root 2>/dev/null
	exec sh
fi
exec "$@"
"""

GENERATED_CONFIGURATION = """\
# Edit this configuration file to define what should be installed on
# your system. (labkit rehearsal: the shape nixos-generate-config writes on UEFI; not NixOS's tool)

{ config, lib, pkgs, ... }:

{
  imports =
    [ # Include the results of the hardware scan.
      ./hardware-configuration.nix
    ];

  # Use the systemd-boot EFI boot loader.
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;

  # networking.hostName = "nixos"; # Define your hostname.

  system.stateVersion = "24.11"; # Did you read the comment?
}
"""

GENERATED_HARDWARE = """\
# Do not modify this file!  (labkit rehearsal: the shape nixos-generate-config writes; not NixOS's tool)
{ config, lib, pkgs, modulesPath, ... }:

{
  imports =
    [ (modulesPath + "/profiles/qemu-guest.nix")
    ];

  boot.initrd.availableKernelModules = [ "virtio_pci" "virtio_blk" ];
  boot.initrd.kernelModules = [ ];
  boot.kernelModules = [ ];
  boot.extraModulePackages = [ ];

  nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";
}
"""


@dataclass(frozen=True)
class RehearsalInstallerIso:
    path: Path
    sha256: str
    sha256_file: Path
    guest: GuestBuild  # what the stand-in nixos-install installs (os id nixos-rehearsal)
    build_s: float


def installer_initrd(runner: Runner, kernel: GuestKernel, out: Path, layout: Layout = LAB_LAYOUT) -> Path:
    """The rehearsal installer's busybox initrd (``nixos-installer-init.sh`` as /init)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".installer-initrd-", dir=out.parent) as tmp:
        root = Path(tmp) / "root"
        for d in ("dev", "proc", "sys", "tmp", "iso", "mnt", "root", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        stage_busybox(runner, root)
        stage_modules(runner, kernel, root, INSTALLER_MODULES)
        labels = " ".join(p.label for p in layout.partitions)
        init = (Path(__file__).resolve().parent / "data" / "nixos-installer-init.sh").read_text()
        (root / "init").write_text(init.replace("@labels@", labels))
        os.chmod(root / "init", 0o755)
        (root / "etc" / "labkit-initramfs").write_text(f"nixos-installer-rehearsal {kernel.version}\n")
        pack_cpio(runner, root, out)
    os.utime(out, (EPOCH, EPOCH))
    return out


def _exe(path: Path, text: str) -> None:
    atomic_write_text(path, text, mode=0o755)


def build_rehearsal_installer_iso(
    runner: Runner,
    kernel: GuestKernel,
    out_iso: Path,
    *,
    packages: str = "small",
    layout: Layout = LAB_LAYOUT,
) -> RehearsalInstallerIso:
    """Build the rehearsal installer ISO at ``out_iso`` (and ``out_iso.sha256``)."""
    out_iso = Path(out_iso)
    out_iso.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with runner.step(f"rehearsal installer ISO {out_iso.name}"), \
            tempfile.TemporaryDirectory(prefix=".nixos-rehearsal-iso-", dir=out_iso.parent) as tmp:
        stage = Path(tmp) / "iso"
        rd = stage / REHEARSAL_DIR
        payload = rd / "payload"
        guest = build_nixos_trees(runner, kernel, payload / "boot", payload / "nix", Path(tmp) / "data",
                                  packages=packages)
        atomic_write_text(payload / "boot" / "grub" / "grub.cfg", bootchain.grub_cfg(guest.entry))
        # GRUB's EFI modules directory, as grub2_efi has it in the store: modinfo.sh + labkit's image
        grub_build = Path(tmp) / "grub"
        moddir = grub_build / "lib" / "grub" / "x86_64-efi"
        moddir.mkdir(parents=True)
        bootchain.build_grub_efi(runner, moddir / "labkit-grubx64.efi", label=_label(layout, "nixos-boot"))
        (moddir / "labkit-grubx64.efi.embedded.cfg").unlink(missing_ok=True)
        (moddir / "modinfo.sh").write_text("# labkit rehearsal: stands for GRUB's x86_64-efi modinfo.sh\n"
                                           "grub_modinfo_target_cpu=x86_64\ngrub_modinfo_platform=efi\n")
        fix_mtimes(grub_build)
        store = payload / "nix" / "store"
        grub_name = f"{tree_hash(grub_build, 'grub-2.12-labkit-rehearsal')}-grub-2.12-labkit-rehearsal"
        os.replace(grub_build, store / grub_name)
        write_store_sizes(payload / "nix")
        atomic_write_text(payload / "system-path", "/nix/store/" + guest.file("system").removeprefix("store/"))
        for name, text in (("nixos-install", NIXOS_INSTALL), ("nixos-generate-config", NIXOS_GENERATE_CONFIG),
                           ("grub-install", GRUB_INSTALL), ("sudo", SUDO)):
            _exe(rd / "bin" / name, text)
        atomic_write_text(rd / "share" / "configuration.nix", GENERATED_CONFIGURATION)
        atomic_write_text(rd / "share" / "hardware-configuration.nix", GENERATED_HARDWARE)
        atomic_write_text(stage / MARKER, f"os_id={guest.os_id}\ntitle={guest.entry.title}\n"
                          "labkit rehearsal installer ISO: NixOS-style, not NixOS\n")
        # the live system's boot files and loader configs, where the real ISO has them
        boot = stage / "boot"
        boot.mkdir()
        shutil.copyfile(kernel.vmlinuz, boot / "bzImage")
        installer_initrd(runner, kernel, boot / "initrd", layout)
        live = f"{tree_hash(rd / 'bin', 'labkit-rehearsal-installer')}-labkit-rehearsal-installer"
        atomic_write_text(stage / "nix" / "store" / live / "init",
                          "# labkit rehearsal: the path init= names; the rehearsal initrd does not run it\n")
        append = f"init=/nix/store/{live}/init root=LABEL={VOLUME_ID} boot.shell_on_fail loglevel=4"
        atomic_write_text(stage / "isolinux" / "isolinux.cfg", (
            "SERIAL 0 115200\nTIMEOUT 10\nDEFAULT boot\n\n"
            "LABEL boot\nMENU LABEL labkit rehearsal installer (NixOS-style, not NixOS)\n"
            f"LINUX /boot/bzImage\nAPPEND {append}\nINITRD /boot/initrd\n"))
        atomic_write_text(stage / "EFI" / "boot" / "grub.cfg", (
            "# labkit rehearsal installer (NixOS-style, not NixOS)\nset timeout=1\n"
            "menuentry 'labkit rehearsal installer (NixOS-style, not NixOS)' --class installer {\n"
            f"  linux /boot/bzImage ${{isoboot}} {append}\n  initrd /boot/initrd\n}}\n"))
        fix_mtimes(stage)
        part = out_iso.with_name(f".{out_iso.name}.tmp-{os.getpid()}")
        part.unlink(missing_ok=True)
        date = time.strftime("%Y%m%d%H%M%S00", time.gmtime(EPOCH))
        runner.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-joliet-long", "-V", VOLUME_ID,
                    "--modification-date=" + date, "-o", str(part), str(stage)])
        os.replace(part, out_iso)
    digest = file_sha256(out_iso)
    sidecar = out_iso.with_name(out_iso.name + ".sha256")
    atomic_write_text(sidecar, f"{digest}  {out_iso.name}\n")
    runner.note(f"rehearsal installer ISO {out_iso} ({out_iso.stat().st_size / 2**20:.1f} MiB, "
                f"sha256 {digest[:12]}…); installs {guest.os_id}, not NixOS")
    return RehearsalInstallerIso(out_iso, digest, sidecar, guest, time.monotonic() - started)


def _label(layout: Layout, role: str) -> str:
    from labkit.core.layout import Role

    return layout.partition(Role(role)).label

