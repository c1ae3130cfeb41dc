"""The metrics table — defined once here — and their computation from one probe bundle.

A metric that cannot be computed for a system (no marker, no host timestamps, no section) is
*absent* from the result: never reported as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from labkit.bundle import Bundle, BundleError, parse_df, parse_dmesg, parse_meminfo, parse_uptime

KERNEL_END_MARKER = "Run /init as init process"
ALPINE_PKG_START = "Installing packages to root filesystem..."
ALPINE_PKG_END = "Installing packages to root filesystem: ok."

#: kmsg text that ends the initramfs phase, per os id. The rehearsal inits write
#: ``labkit-rehearsal: switch_root``; real Alpine/NixOS have no such line yet: add theirs here
#: (the hook) when the real media are measured. No marker → initramfs_s is absent.
INITRAMFS_END_MARKERS: dict[str, str] = {
    "alpine-rehearsal": "labkit-rehearsal: switch_root",
    "nixos-rehearsal": "labkit-rehearsal: switch_root",
}


@dataclass(frozen=True)
class MetricDef:
    name: str
    unit: str
    definition: str
    source: str
    phase: bool = False  # one of the stacked boot phases (firmware → kernel → initramfs → userspace)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str
    source: str


METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "firmware_loaders_s", "s",
        "host time of the bundle's BEGIN line minus the guest uptime at probe start: when the kernel "
        "started, counted from QEMU start (firmware + boot loaders). Lab only.",
        "host serial timestamps + /proc/uptime", phase=True,
    ),
    MetricDef(
        "kernel_s", "s", f"dmesg time of '{KERNEL_END_MARKER}' (kernel start → /init).", "dmesg", phase=True,
    ),
    MetricDef(
        "initramfs_s", "s",
        "dmesg time of the initramfs-end marker (rehearsal: 'labkit-rehearsal: switch_root') minus kernel_s.",
        "dmesg", phase=True,
    ),
    MetricDef(
        "userspace_to_probe_s", "s",
        "guest uptime at probe start minus the dmesg time of the initramfs-end marker.",
        "/proc/uptime + dmesg", phase=True,
    ),
    MetricDef(
        "total_to_probe_s", "s", "host time of the bundle's BEGIN line since QEMU start. Lab only.",
        "host serial timestamps",
    ),
    MetricDef(
        "alpine_package_load_s", "s",
        f"gap between the kmsg lines '{ALPINE_PKG_START}' and '{ALPINE_PKG_END}' "
        "(the in-RAM package install of Alpine diskless). Alpine only.",
        "dmesg",
    ),
    MetricDef("ram_used_mib", "MiB", "MemTotal − MemAvailable at probe start.", "/proc/meminfo"),
    MetricDef("shmem_mib", "MiB", "Shmem (tmpfs and shared memory) at probe start.", "/proc/meminfo"),
    MetricDef("root_tmpfs_used_mib", "MiB", "Used KiB of the filesystem mounted on / (a tmpfs) per df -k.", "df -k"),
    MetricDef("mem_total_mib", "MiB", "MemTotal: RAM the guest kernel sees.", "/proc/meminfo"),
    MetricDef(
        "probe_s", "s",
        "the probe's own run time: guest uptime read last (section uptime_end) minus uptime read first "
        "(0.01 s resolution). Not part of any phase: the probe runs after the boot it measures.",
        "/proc/uptime",
    ),
)
METRIC_BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}
PHASES: tuple[str, ...] = tuple(m.name for m in METRICS if m.phase)


def metric_definitions() -> list[dict[str, str]]:
    """The table as plain rows (for the report)."""
    return [{"metric": m.name, "unit": m.unit, "definition": m.definition, "source": m.source} for m in METRICS]


def find_marker(dmesg: list[tuple[float, str]], marker: str) -> float | None:
    """Time of the first message whose text ends with ``marker`` (Alpine/labkit kmsg texts are verbatim)."""
    for t, text in dmesg:
        if text.strip().endswith(marker):
            return t
    return None


def _mib(kib: int) -> float:
    return kib / 1024.0


def metrics_from_bundle(
    bundle: Bundle,
    *,
    qemu_t0: float = 0.0,
    initramfs_markers: Mapping[str, str] | None = None,
) -> list[Metric]:
    """Compute every metric the bundle allows; the others are absent.

    ``qemu_t0`` is the host time of QEMU's start on the serial lines' clock (0 for labkit.qemu).
    Host-timed metrics need ``bundle.t_begin`` (serial capture in the lab).
    Raises :class:`labkit.bundle.BundleError` for an incomplete bundle or malformed section.
    """
    if not bundle.ok:
        raise BundleError(
            f"bundle of {bundle.os} is not complete/verified: {'; '.join(bundle.problems) or 'unknown problem'}",
            "metrics are computed only from verified bundles; boot the guest again",
        )
    markers = INITRAMFS_END_MARKERS if initramfs_markers is None else initramfs_markers
    values: dict[str, float] = {}

    uptime = parse_uptime(bundle.sections["uptime"]).uptime_s if "uptime" in bundle.sections else None
    dmesg = parse_dmesg(bundle.sections["dmesg"]) if "dmesg" in bundle.sections else []

    if bundle.t_begin is not None and bundle.t_begin == bundle.t_begin:  # not None, not NaN
        since_start = bundle.t_begin - qemu_t0
        values["total_to_probe_s"] = since_start
        if uptime is not None:
            values["firmware_loaders_s"] = since_start - uptime

    kernel_end = find_marker(dmesg, KERNEL_END_MARKER)
    if kernel_end is not None:
        values["kernel_s"] = kernel_end
    marker = markers.get(bundle.os)
    initramfs_end = find_marker(dmesg, marker) if marker else None
    if initramfs_end is not None:
        if kernel_end is not None:
            values["initramfs_s"] = initramfs_end - kernel_end
        if uptime is not None:
            values["userspace_to_probe_s"] = uptime - initramfs_end
    pkg_start, pkg_end = find_marker(dmesg, ALPINE_PKG_START), find_marker(dmesg, ALPINE_PKG_END)
    if pkg_start is not None and pkg_end is not None:
        values["alpine_package_load_s"] = pkg_end - pkg_start

    if uptime is not None and "uptime_end" in bundle.sections:
        values["probe_s"] = parse_uptime(bundle.sections["uptime_end"]).uptime_s - uptime

    if "meminfo" in bundle.sections:
        mem = parse_meminfo(bundle.sections["meminfo"])
        values["mem_total_mib"] = _mib(mem["MemTotal"])
        if "MemAvailable" in mem:
            values["ram_used_mib"] = _mib(mem["MemTotal"] - mem["MemAvailable"])
        if "Shmem" in mem:
            values["shmem_mib"] = _mib(mem["Shmem"])
    if "df" in bundle.sections:
        root = [r for r in parse_df(bundle.sections["df"]) if r.mounted_on == "/"]
        if root:
            values["root_tmpfs_used_mib"] = _mib(root[0].used_k)

    return [
        Metric(d.name, values[d.name], d.unit, d.source) for d in METRICS if d.name in values
    ]

