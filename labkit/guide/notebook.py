"""Helpers behind the guided notebooks (00_overview, 02_refind): host check, diagrams, rEFInd steps.

The notebooks stay thin: every table, figure and command list comes from a function here.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.core.layout import Layout, Role, human
from labkit.core.runner import TOOL_PACKAGES, Mode, PlannedCommand, Runner, which
from labkit.systems import bootchain

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Programs the lab and the install need, in the order the phases use them.
HOST_TOOLS: tuple[str, ...] = (
    "sgdisk", "mkfs.vfat", "mcopy", "mdir", "mke2fs", "dumpe2fs", "blkid", "grub-mkimage",
    "busybox", "cpio", "dpkg-deb", "apt-get", "qemu-system-x86_64", "xorriso", "nix-instantiate",
)
#: Files (not programs) the lab needs, with their Debian package.
HOST_FILES: dict[str, str] = {
    str(bootchain.REFIND_EFI): "refind",
    str(bootchain.REFIND_EXT4): "refind",
    "/usr/share/OVMF/OVMF_CODE_4M.fd": "ovmf",
    "/usr/share/OVMF/OVMF_VARS_4M.fd": "ovmf",
    str(bootchain.GRUB_MODDIR / "linux.mod"): "grub-efi-amd64-bin",
}
MIN_FREE_BYTES = 4 * 1024**3  # one lab run: a 2 GiB sparse image, guests, kernel cache


@dataclass(frozen=True)
class Check:
    item: str
    ok: bool
    found: str
    fix: str  # empty when ok


def host_checks(*, free_path: str | os.PathLike[str] = ".", min_free: int = MIN_FREE_BYTES,
                tools: tuple[str, ...] = HOST_TOOLS, files: dict[str, str] | None = None) -> list[Check]:
    """Tools, files, privileges, KVM and free space, each with the fix when it is missing.

    Read-only and fast: KVM is only looked at (``/dev/kvm``); the lab smoke-tests it for real
    before the first boot and falls back to TCG.
    """
    out: list[Check] = []
    for t in tools:
        path = which(t)
        pkg = TOOL_PACKAGES.get(t, "?")
        out.append(Check(f"tool {t}", path is not None, path or "missing",
                         "" if path else f"apt-get install {pkg}"))
    for f, pkg in (HOST_FILES if files is None else files).items():
        ok = Path(f).is_file()
        out.append(Check(f"file {f}", ok, "present" if ok else "missing", "" if ok else f"apt-get install {pkg}"))
    root = os.geteuid() == 0
    out.append(Check("root privileges", root, "uid 0" if root else f"uid {os.geteuid()}",
                     "" if root else "plan and lab modes work without root; the disk target needs it: sudo -i"))
    kvm = Path("/dev/kvm")
    kvm_ok = kvm.exists() and os.access(kvm, os.R_OK | os.W_OK)
    out.append(Check("KVM (/dev/kvm)", kvm_ok,
                     "present and writable: the lab smoke-tests it before booting" if kvm_ok
                     else ("present, not writable" if kvm.exists() else "absent: the lab will use TCG (~10x slower)"),
                     "" if kvm_ok else "enable VT-x/AMD-V in the firmware, modprobe kvm_intel (or kvm_amd), "
                     "add yourself to group kvm; TCG works without it, only slower"))
    target = Path(free_path)
    while not target.exists() and target != target.parent:
        target = target.parent
    free = shutil.disk_usage(target).free
    out.append(Check(f"free space in {Path(free_path).resolve()}", free >= min_free, human(free),
                     "" if free >= min_free else f"free at least {human(min_free)} or use --out on a bigger disk"))
    return out


def checks_table(checks: list[Check]) -> list[dict[str, str]]:
    return [{"check": c.item, "status": "ok" if c.ok else "MISSING", "found": c.found, "fix": c.fix or "—"}
            for c in checks]


# -- diagram ------------------------------------------------------------------------------------
_ROLE_COLORS = {
    Role.ESP: "#e9c46a", Role.NIXOS_BOOT: "#8ab6d6", Role.NIX_STORE: "#4c72b0",
    Role.ALPINE: "#55a868", Role.DATA: "#bbbbbb",
}


def _draw_disk(ax: Any, layout: Layout, *, detailed: bool) -> None:
    """The partitions side by side on ``ax``: widths ~ sqrt(size) (the 64 MiB ESP stays visible), a floor
    so no box is too narrow for its label, and labels alternating above/below the boxes when ``detailed``
    (four lines do not fit a narrow box: the ESP's and nixboot's would overlap)."""
    from matplotlib.patches import FancyBboxPatch

    rows = layout.extents()
    weights = [max(max(e.size, 1) ** 0.5, 0.09 * sum(max(r.size, 1) ** 0.5 for r in rows)) for e in rows]
    scale = 1.0 / sum(weights)
    x = 0.0
    for i, (e, w) in enumerate(zip(rows, weights, strict=True)):
        width = w * scale
        p = e.partition
        ax.add_patch(FancyBboxPatch((x + 0.004, 0.3), width - 0.008, 0.4, boxstyle="round,pad=0.003",
                                    fc=_ROLE_COLORS.get(p.role, "#ccc"), ec="black"))
        ax.text(x + width / 2, 0.5, f"{e.number}: {p.label}", ha="center", va="center", fontsize=11,
                fontweight="bold")
        if detailed:
            below = i % 2 == 1
            ax.text(x + width / 2, 0.22 if below else 0.78, f"{p.fs.value} {p.type_code}, {human(e.size)}\n"
                    f"{p.mount_point}", ha="center", va="top" if below else "bottom", fontsize=10)
        else:
            ax.text(x + width / 2, 0.22, human(e.size), ha="center", va="top", fontsize=10)
        x += width
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")


def layout_figure(layout: Layout) -> Figure:
    """The disk drawn from ``layout`` and, under it, the two boot chains with the file each stage reads;
    every text at least as large as the notebook's body text."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, (ax_disk, ax_boot) = plt.subplots(2, 1, figsize=(13, 8.5), gridspec_kw={"height_ratios": [1.2, 2.6]})
    _draw_disk(ax_disk, layout, detailed=True)
    ax_disk.set_title(f"GPT disk, layout '{layout.name}' ({human(layout.disk_size)}; box widths ~ sqrt(size))",
                      fontsize=12)

    def box(x0: float, y0: float, text: str, color: str) -> None:
        ax_boot.add_patch(FancyBboxPatch((x0, y0), 0.21, 0.26, boxstyle="round,pad=0.01", fc=color, ec="black"))
        ax_boot.text(x0 + 0.105, y0 + 0.13, text, ha="center", va="center", fontsize=10)

    def arrow(x0: float, y0: float, x1: float, y1: float) -> None:
        ax_boot.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=14))

    esp_c, boot_c, nix_c, alp_c = (_ROLE_COLORS[r] for r in (Role.ESP, Role.NIXOS_BOOT, Role.NIX_STORE, Role.ALPINE))
    box(0.0, 0.37, "UEFI firmware\n(OVMF in the lab)\nNVRAM or\nEFI/BOOT/BOOTX64.EFI", "#eeeeee")
    box(0.26, 0.37, "rEFInd (ESP)\nrefind.conf\n+ drivers_x64/\next4_x64.efi", esp_c)
    box(0.52, 0.7, "GRUB (ESP)\nEFI/NixOS/grubx64.efi\nreads /boot (nixboot)\ngrub/grub.cfg", boot_c)
    box(0.78, 0.7, "NixOS\n/ = tmpfs (RAM)\n/nix, /boot, /data\npersist", nix_c)
    box(0.52, 0.02, "Alpine partition\n(ext4, via rEFInd's\next4 driver)\nboot/vmlinuz-lts", alp_c)
    box(0.78, 0.02, "Alpine diskless\nruns from RAM;\napks/ + apkovl (LBU)\nreloaded every boot", alp_c)
    arrow(0.21, 0.5, 0.26, 0.5)
    arrow(0.47, 0.56, 0.52, 0.8)
    arrow(0.47, 0.44, 0.52, 0.18)
    arrow(0.73, 0.83, 0.78, 0.83)
    arrow(0.73, 0.15, 0.78, 0.15)
    ax_boot.set_xlim(-0.01, 1.0)
    ax_boot.set_ylim(0, 1)
    ax_boot.axis("off")
    ax_boot.set_title("Boot chains: rEFInd → GRUB → NixOS;  rEFInd → kernel on ext4 → Alpine", fontsize=12)
    fig.tight_layout()
    return fig


# -- rEFInd ---------------------------------------------------------------------------------------
ESP_MOUNT = "/boot/efi"
REFIND_INSTALLED_DRIVER = "EFI/refind/drivers_x64/ext4_x64.efi"


def refind_install_plan(esp_mount: str = ESP_MOUNT, *, alpine_dev: str = "/dev/sda4") -> list[PlannedCommand]:
    """The seed's rEFInd install on a real machine, with the ext4 driver fix, as a plan.

    Nothing runs: a plan-mode :class:`Runner` records each command. ``refind-install`` copies
    rEFInd to ``EFI/refind/`` and registers it in NVRAM; it adds the ext4 driver only when it
    sees an ext4 ``/boot``, which a live system does not have — hence the explicit copy.
    """
    r = Runner(mode=Mode.PLAN, progress=None)
    # the seed runs this from the NixOS live system under `nix-shell -p refind`: the driver comes from that
    # package ($out/share/refind/drivers_x64/), not from Debian's /usr/share/refind/refind/drivers_x64/
    found = bootchain.refind_ext4_driver(which("refind-install"))
    driver = str(found) if found is not None and found.is_relative_to("/nix/store") else \
        bootchain.REFIND_NIX_EXT4_PLACEHOLDER
    with r.step("install rEFInd on the ESP (nix-shell -p refind)"):
        r.run(["refind-install"])
    with r.step("the seed's pitfall: add the ext4 driver refind-install left out"):
        r.run(["mkdir", "-p", f"{esp_mount}/EFI/refind/drivers_x64"])
        r.run(["cp", driver, f"{esp_mount}/{REFIND_INSTALLED_DRIVER}"])
    with r.step("check: the driver and refind.conf are on the ESP"):
        r.run(["ls", "-l", f"{esp_mount}/EFI/refind/drivers_x64/", f"{esp_mount}/EFI/refind/refind.conf"])
    with r.step("Alpine's kernel options, read by rEFInd from the Alpine partition"):
        r.run(["mount", alpine_dev, "/mnt"])
        r.run(["sh", "-c", "cat > /mnt/boot/refind_linux.conf <<'EOF'\n"
               '"Alpine Linux" "initrd=boot\\initramfs-lts modules=loop,squashfs,sd-mod,usb-storage quiet"\nEOF'])
        r.run(["umount", "/mnt"])
    return list(r.planned)


def disk_bar(layout: Layout) -> Figure:
    """The partitions side by side (labels in MiB/GiB, never overlapping): the layout at a glance."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 2.2))
    _draw_disk(ax, layout, detailed=False)
    ax.set_title(f"layout '{layout.name}' on a {human(layout.disk_size)} disk (box widths ~ sqrt(size))", fontsize=12)
    fig.tight_layout()
    return fig
