"""Synthetic probe bundles and serial logs, written by hand exactly as the probe would.

Deliberately independent of ``labkit.measure.bundle.format_bundle`` (the md5 is computed here with
hashlib) so the parser is tested against the contract, not against itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from labkit.core.console import SerialLine

KERNEL = "Linux (none) 6.1.0-28-amd64 #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22) x86_64 GNU/Linux"

MEMINFO = """\
MemTotal:         492304 kB
MemFree:          401232 kB
MemAvailable:     431120 kB
Buffers:               0 kB
Cached:            52344 kB
SwapCached:            0 kB
Active:             8812 kB
Inactive:          47204 kB
Shmem:             {shmem} kB
Slab:              12432 kB
SwapTotal:             0 kB
SwapFree:              0 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap4k:       14204 kB
DirectMap2M:      510976 kB"""

DF_ALPINE = """\
Filesystem           1K-blocks      Used Available Use% Mounted on
tmpfs                   246152     {used}    {avail}   {pct}% /
devtmpfs                 10240         0     10240   0% /dev
/dev/vda4              1015704     61440    884296   6% /media/vda4"""

DF_NIXOS = """\
Filesystem     1K-blocks  Used Available Use% Mounted on
none              262144  {used}    {avail}   {pct}% /
/dev/disk/by-label/nix-store-of-the-rehearsal-guest
                  999320 300120    630388  33% /nix"""


def dmesg_alpine(kernel_s: float, pkg_start: float, pkg_end: float, switch_root: float) -> str:
    return "\n".join(
        [
            "[    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14) "
            "12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)",
            "[    0.000000] Command line: console=ttyS0,115200 quiet modules=loop,squashfs,sd-mod,usb-storage",
            "[    0.012345] BIOS-provided physical RAM map:",
            f"[{kernel_s - 0.01:12.6f}] Freeing unused kernel image (initmem) memory: 2920K",
            f"[{kernel_s:12.6f}] Run /init as init process",
            f"[{kernel_s:12.6f}]   with arguments:",
            f"[{kernel_s:12.6f}]     /init",
            f"[{kernel_s + 0.3:12.6f}] virtio_blk virtio1: [vda] 4194304 512-byte logical blocks (2.15 GB/2.00 GiB)",
            "  continuation line without a timestamp",
            f"[{kernel_s + 0.4:12.6f}] Alpine Init 3.13.0",
            f"[{kernel_s + 0.5:12.6f}] Loading user settings from /media/vda4/alpinelab.apkovl.tar.gz: ok.",
            f"[{pkg_start:12.6f}] Installing packages to root filesystem...",
            f"[{pkg_end:12.6f}] Installing packages to root filesystem: ok.",
            f"[{switch_root:12.6f}] labkit-rehearsal: switch_root",
        ]
    )


def dmesg_nixos(kernel_s: float, switch_root: float) -> str:
    return "\n".join(
        [
            "[    0.000000] Linux version 6.1.0-28-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC",
            f"[{kernel_s:12.6f}] Run /init as init process",
            f"[{kernel_s + 0.2:12.6f}] EXT4-fs (vda3): mounted filesystem with ordered data mode. Quota mode: none.",
            f"[{switch_root:12.6f}] labkit-rehearsal: switch_root",
        ]
    )


def bundle_lines(os_id: str, guest: str, sections: dict[str, str], *, md5: str | None = None) -> list[str]:
    """The serial lines of one bundle, BEGIN to END, as the probe prints them."""
    body: list[str] = []
    for name, raw in sections.items():
        body.append(f"@@SECTION {name}@@")
        body.extend(raw.split("\n"))
    digest = hashlib.md5("".join(line + "\n" for line in body).encode("latin-1")).hexdigest()
    return [
        f"@@LABKIT-BUNDLE-BEGIN v=1 os={os_id} guest={guest}@@",
        *body,
        f"@@LABKIT-BUNDLE-END sections={len(sections)} md5={md5 or digest}@@",
    ]


def alpine_sections(uptime: float = 7.12, *, shmem: int = 18234, pkg_s: float = 1.75) -> dict[str, str]:
    used = shmem
    avail = 246152 - used
    return {
        "uptime": f"{uptime:.2f} {uptime * 0.9:.2f}",
        "meminfo": MEMINFO.format(shmem=shmem),
        "dmesg": dmesg_alpine(2.356789, 3.5, 3.5 + pkg_s, 5.3),
        "df": DF_ALPINE.format(used=used, avail=avail, pct=round(100 * used / 246152)),
        "cmdline": "console=ttyS0,115200 quiet modules=loop,squashfs,sd-mod ",
        "kernel": KERNEL,
    }


def nixos_sections(uptime: float = 6.40, *, shmem: int = 30210) -> dict[str, str]:
    return {
        "uptime": f"{uptime:.2f} {uptime * 0.9:.2f}",
        "meminfo": MEMINFO.format(shmem=shmem),
        "dmesg": dmesg_nixos(2.201, 3.9),
        "df": DF_NIXOS.format(used=shmem, avail=262144 - shmem, pct=round(100 * shmem / 262144)),
        "cmdline": 'init=/init console=ttyS0,115200 quiet root=tmpfs label="nix store"',
        "kernel": KERNEL,
    }


def serial_log(bundle: list[str], *, t_begin: float, step: float = 0.002) -> list[SerialLine]:
    """A realistic serial log: firmware/rEFInd noise, a kernel message before BEGIN, the bundle,
    power-off noise after it."""
    before = [
        (0.41, "BdsDxe: loading Boot0001 \"UEFI Misc Device\" from PciRoot(0x0)/Pci(0x4,0x0)"),
        (1.90, "Starting rEFInd 0.13.2"),
        (2.50, "Booting default: labkit rehearsal"),
        (t_begin - 3.0, "[    6.120345] random: crng init done"),
        (t_begin - 0.2, "labkit probe: writing bundle"),
    ]
    lines = [SerialLine(t, text) for t, text in before]
    lines += [SerialLine(t_begin + i * step, text) for i, text in enumerate(bundle)]
    t_end = lines[-1].t
    lines += [SerialLine(t_end + 0.05, "[    9.876543] reboot: Power down"), SerialLine(t_end + 0.06, "")]
    return lines


def write_serial_log(path: Path, lines: list[SerialLine]) -> Path:
    path.write_text("".join(f"{ln.t:.6f}\t{ln.text}\n" for ln in lines), encoding="utf-8")
    return path


def make_run_dir(run_dir: Path, *, boots: int = 4, accel: str = "tcg", run_id: str = "synthetic-run") -> Path:
    """A run directory as the benchmark writes it: results.csv + environment.json, from bundles
    extracted out of synthetic serial logs by labkit's own functions. Boot 0 is a warm-up."""
    from labkit.measure.bundle import extract_bundles
    from labkit.measure.environment import capture_environment, guest_kernels, write_environment
    from labkit.measure.results import rows_from_bundle, write_results_csv

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    bundles = []
    for boot in range(boots):
        jitter = 0.07 * ((boot * 7) % 5 - 2)  # deterministic spread
        for os_id, sections, t_begin in (
            ("alpine-rehearsal", alpine_sections(7.12 + jitter, pkg_s=1.75 + jitter / 2), 11.9 + jitter),
            ("nixos-rehearsal", nixos_sections(6.40 + jitter), 12.4 + 1.3 * jitter),
        ):
            log = serial_log(bundle_lines(os_id, "rehearsal", sections), t_begin=t_begin)
            path = write_serial_log(run_dir / f"serial-{os_id}-{boot}.log", log)
            from labkit.core.console import read_serial_log

            (bundle,) = extract_bundles(read_serial_log(path))
            bundles.append(bundle)
            rows += rows_from_bundle(bundle, run_id=run_id, boot=boot, warmup=boot == 0, accel=accel)
    write_results_csv(rows, run_dir / "results.csv")
    env = capture_environment(
        {"target": "lab", "boots": boots, "memory_mib": 512},
        {"accel": accel, "guest_kernel": guest_kernels(bundles)},
    )
    write_environment(env, run_dir)
    return run_dir


#: an impermanence pin as a user would give it (labkit ships none): master of 2026-01-27, its hash computed as
#: `nix hash path` over `git archive` of that commit (the method that reproduces home-manager's published
#: flake.lock narHashes, and that Nix 2.8's fetchTarball accepted for home-manager 2777de38)
IMPERMANENCE_PIN_REV = "7b1d382faf603b6d264f58627330f9faa5cba149"
IMPERMANENCE_PIN_SHA256 = "sha256-03+JxvzmfwRu+5JafM0DLbxgHttOQZkUtDWBmeUkN8Y="
