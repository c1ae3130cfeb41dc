"""The metrics table — defined once here — and their computation from one probe bundle.

A metric that cannot be computed for a system (no marker, no host timestamps, no section) is
*absent* from the result: never reported as zero.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from labkit.measure.bundle import Bundle, BundleError, parse_df, parse_dmesg, parse_meminfo, parse_uptime

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
    applies_to: str = "all"  # "all", "alpine" or "nixos": elsewhere the metric is "n/a", not "missing"


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
        "dmesg", applies_to="alpine",
    ),
    MetricDef(
        "ram_used_mib", "MiB",
        "MemTotal − MemAvailable after a fixed settle: the probe sleeps labkit.settle seconds (kernel command "
        "line, default 2 s) after collecting everything else, then reads /proc/meminfo again. Bundles without "
        "that section (settle 0, older probes) give the value at probe start, and their source says so.",
        "/proc/meminfo after the settle",
    ),
    MetricDef("shmem_mib", "MiB", "Shmem (tmpfs and shared memory) at probe start.", "/proc/meminfo"),
    MetricDef("root_tmpfs_used_mib", "MiB", "Used KiB of the filesystem mounted on / (a tmpfs) per df -k.", "df -k"),
    MetricDef("mem_total_mib", "MiB", "MemTotal: RAM the guest kernel sees.", "/proc/meminfo"),
    MetricDef(
        "package_count", "packages",
        "Alpine: records in /lib/apk/db/installed. NixOS: store paths in the closure of /run/current-system "
        "(nix path-info -rS; rehearsal: the store's top-level paths, du -sk).",
        "apk db / nix path-info / du",
    ),
    MetricDef(
        "installed_size_mib", "MiB",
        "Alpine: sum of I: (installed bytes) over /lib/apk/db/installed. NixOS: closure size (the same "
        "number as closure_size_mib: a store path is stored unpacked).",
        "apk db / nix path-info / du",
    ),
    MetricDef(
        "compressed_size_mib", "MiB", "Alpine: sum of S: (bytes of the .apk files) over /lib/apk/db/installed.",
        "apk db", applies_to="alpine",
    ),
    MetricDef(
        "closure_size_mib", "MiB",
        "NixOS: closure size of /run/current-system (nix path-info -rS, the largest closure size; rehearsal: "
        "sum of du -sk over /nix/store/*).",
        "nix path-info / du", applies_to="nixos",
    ),
    MetricDef(
        "alpine_load_cost_s_per_mib", "s/MiB",
        "alpine_package_load_s / installed_size_mib for one boot (an average that includes the fixed cost; the "
        "load-cost fit's slope is the marginal cost).", "derived", applies_to="alpine",
    ),
    MetricDef(
        "alpine_load_cost_ram_mib_per_mib", "MiB/MiB",
        "root_tmpfs_used_mib / installed_size_mib for one boot: RAM held by the tmpfs root per MiB of packages.",
        "derived", applies_to="alpine",
    ),
    MetricDef(
        "probe_s", "s",
        "the probe's own run time: guest uptime read last (section uptime_end) minus uptime read first "
        "(0.01 s resolution). Not part of any phase: the probe runs after the boot it measures.",
        "/proc/uptime",
    ),
    MetricDef(
        "probe_timing_s", "s",
        "the part of the probe that reads timings, RAM and disk use (section uptime_mid minus uptime); the "
        "package inventory (apk db, store sizes) follows it. 0.01 s resolution.",
        "/proc/uptime",
    ),
)
METRIC_BY_NAME: dict[str, MetricDef] = {m.name: m for m in METRICS}
PHASES: tuple[str, ...] = tuple(m.name for m in METRICS if m.phase)


def metric_definitions() -> list[dict[str, str]]:
    """The table as plain rows (for the report)."""
    return [{"metric": m.name, "unit": m.unit, "definition": m.definition, "source": m.source,
             "applies to": m.applies_to} for m in METRICS]


def os_family(os_id: str) -> str:
    """``alpine-rehearsal`` → ``alpine``; ``nixos`` → ``nixos``."""
    return os_id.split("-", 1)[0]


def applies(metric: str, os_id: str) -> bool:
    """Whether ``metric`` is defined for ``os_id`` (a metric that applies but is absent is *missing*)."""
    d = METRIC_BY_NAME.get(metric)
    return d is None or d.applies_to == "all" or d.applies_to == os_family(os_id)


def package_values(sections: Mapping[str, str]) -> dict[str, float]:
    """package_count / installed / compressed / closure sizes from the apk or nix sections present."""
    from labkit.measure.parsers.apk import parse_apk_installed
    from labkit.measure.parsers.nix import parse_du_k, parse_nix_path_info

    values: dict[str, float] = {}
    if "apk_installed" in sections:
        pkgs = parse_apk_installed(sections["apk_installed"])
        values["package_count"] = float(len(pkgs))
        if pkgs and all(p.installed_size is not None for p in pkgs):
            values["installed_size_mib"] = sum(p.installed_size or 0 for p in pkgs) / 1024**2
        if pkgs and all(p.size is not None for p in pkgs):
            values["compressed_size_mib"] = sum(p.size or 0 for p in pkgs) / 1024**2
    elif "nix_path_info" in sections:
        paths = parse_nix_path_info(sections["nix_path_info"], "nix_path_info")
        closures = [p.closure_size for p in paths if p.closure_size is not None]
        values["package_count"] = float(len(paths))
        if closures:
            values["closure_size_mib"] = values["installed_size_mib"] = max(closures) / 1024**2
    elif "nix_store_du" in sections:
        du = parse_du_k(sections["nix_store_du"])
        values["package_count"] = float(len(du))
        if du:
            values["closure_size_mib"] = values["installed_size_mib"] = sum(k for _, k in du) / 1024
    return values


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

    ``qemu_t0`` is the host time of QEMU's start on the serial lines' clock (0 for labkit.lab.qemu).
    Host-timed metrics need ``bundle.t_begin`` (serial capture in the lab).
    Raises :class:`labkit.measure.bundle.BundleError` for an incomplete bundle or malformed section.
    """
    if not bundle.ok:
        raise BundleError(
            f"bundle of {bundle.os} is not complete/verified: {'; '.join(bundle.problems) or 'unknown problem'}",
            "metrics are computed only from verified bundles; boot the guest again",
        )
    markers = INITRAMFS_END_MARKERS if initramfs_markers is None else initramfs_markers
    values: dict[str, float] = {}
    sources: dict[str, str] = {}  # a row whose source differs from the definition's says so

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
    if uptime is not None and "uptime_mid" in bundle.sections:
        values["probe_timing_s"] = parse_uptime(bundle.sections["uptime_mid"]).uptime_s - uptime

    if "meminfo" in bundle.sections:
        mem = parse_meminfo(bundle.sections["meminfo"])
        values["mem_total_mib"] = _mib(mem["MemTotal"])
        if "MemAvailable" in mem:
            values["ram_used_mib"] = _mib(mem["MemTotal"] - mem["MemAvailable"])
            sources["ram_used_mib"] = "/proc/meminfo at probe start (no settle section)"
        if "Shmem" in mem:
            values["shmem_mib"] = _mib(mem["Shmem"])
    if "meminfo_settled" in bundle.sections:
        settled = parse_meminfo(bundle.sections["meminfo_settled"])
        if "MemAvailable" in settled:
            values["ram_used_mib"] = _mib(settled["MemTotal"] - settled["MemAvailable"])
            sources.pop("ram_used_mib", None)
    if "df" in bundle.sections:
        root = [r for r in parse_df(bundle.sections["df"]) if r.mounted_on == "/"]
        if root:
            values["root_tmpfs_used_mib"] = _mib(root[0].used_k)
    values.update(package_values(bundle.sections))
    installed = values.get("installed_size_mib")
    if installed:
        if "alpine_package_load_s" in values:
            values["alpine_load_cost_s_per_mib"] = values["alpine_package_load_s"] / installed
        if "root_tmpfs_used_mib" in values and os_family(bundle.os) == "alpine":
            values["alpine_load_cost_ram_mib_per_mib"] = values["root_tmpfs_used_mib"] / installed

    return [
        Metric(d.name, values[d.name], d.unit, sources.get(d.name, d.source)) for d in METRICS if d.name in values
    ]

