"""The metrics table — defined once here — and their computation from one probe bundle.

A metric that cannot be computed for a system (no marker, no host timestamps, no section) is
*absent* from the values, never reported as zero; :func:`measure_bundle` names every metric that
applies to the bundle's system and has no value, with the reason (:class:`Missing`).

Where the initramfs ends (``initramfs_s`` / ``userspace_to_probe_s``), per system:

- rehearsal guests: their own kmsg line ``labkit-rehearsal: switch_root``;
- Alpine: mkinitfs ``initramfs-init.in`` writes ``Installing packages to root filesystem: ok.`` as its
  last kmsg line before ``switch_root`` (3.10 l.938, 3.13 l.1074; only console output follows);
- NixOS, scripted stage 1: ``stage-2-init.sh`` writes ``booting system configuration <toplevel>`` to
  /dev/kmsg first thing after the switch (L58-60); without that line, systemd's first line as PID 1
  (``systemd NNN running in system mode``), which comes after stage 2's activation script;
- NixOS, systemd stage 1 (``boot.initrd.systemd.enable``): ``systemd-analyze time``'s kernel + initrd
  parts (analyze-time-data.c: kernel ends when the initrd's systemd starts, initrd ends when the
  system's systemd starts), else the first ``running in system mode`` line after the initrd's
  ``Running in initrd.``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from labkit.measure.bundle import (
    Bundle,
    BundleError,
    check_dmesg,
    dmesg_marker_find,
    dmesg_marker_time,
    meminfo_values,
    parse_df,
    parse_dmesg,
    parse_uptime,
)
from labkit.measure.parsers.apk import parse_apk_installed, parse_apk_world, world_missing_names
from labkit.measure.parsers.mkinitfs import INSTALL_ERRORS_WARNING
from labkit.measure.parsers.nix import parse_du_k, parse_nix_path_info
from labkit.measure.parsers.system import parse_rc_log
from labkit.measure.parsers.systemd import SystemdTime, parse_systemd_time

KERNEL_END_MARKER = "Run /init as init process"
ALPINE_INIT = "Alpine Init "
ALPINE_PKG_START = "Installing packages to root filesystem..."
ALPINE_PKG_END = "Installing packages to root filesystem: ok."
#: nixpkgs nixos/modules/system/boot/stage-2-init.sh (L58-60) writes this straight to /dev/kmsg, before
#: its kmsg mirror starts: the first kernel-log line after the scripted stage 1's switch_root.
NIXOS_STAGE2_START = "booting system configuration "
#: systemd's first log line as PID 1 (src/core/main.c log_execution_mode(): "systemd " GIT_VERSION " running
#: in %ssystem mode (%s)"; older: PACKAGE_STRING " running in %ssystem mode. ("), in kmsg as "systemd[1]: ...".
SYSTEMD_START_RE = re.compile(r"(?:^|\s|\]: )systemd (\S+) running in (?:test )?system mode")
#: what systemd logs right after that line when it is PID 1 of an initrd (main.c: "Running in initrd." in
#: current systemd, "Running in initial RAM disk." in older ones)
SYSTEMD_IN_INITRD_RE = re.compile(r"Running in (?:initrd|initial RAM disk)\.")

#: kmsg text that ends the initramfs phase of a rehearsal guest: its inits write
#: ``labkit-rehearsal: switch_root`` just before switch_root. Real systems: see :func:`initramfs_end`.
INITRAMFS_END_MARKERS: dict[str, str] = {
    "alpine-rehearsal": "labkit-rehearsal: switch_root",
    "nixos-rehearsal": "labkit-rehearsal: switch_root",
}
#: ``systemd-analyze time`` parts (src/analyze/analyze-time-data.c) → metric
SYSTEMD_PARTS: dict[str, str] = {
    "firmware": "systemd_firmware_s", "loader": "systemd_loader_s", "kernel": "systemd_kernel_s",
    "initrd": "systemd_initrd_s", "userspace": "systemd_userspace_s",
}


@dataclass(frozen=True)
class MetricDef:
    name: str
    unit: str
    definition: str
    source: str
    phase: bool = False  # one of the stacked boot phases (firmware → kernel → initramfs → userspace)
    applies_to: str = "all"  # "all", "alpine" or "nixos": elsewhere the metric is "n/a", not "missing"


class Metric(NamedTuple):
    """One computed metric (a named tuple: thousands are made when many bundles are read)."""

    name: str
    value: float
    unit: str
    source: str


@dataclass(frozen=True)
class Missing:
    """A metric that applies to the bundle's system but has no value in it, and why."""

    name: str
    reason: str


@dataclass(frozen=True)
class BundleMetrics:
    metrics: list[Metric]
    missing: list[Missing]  # every applicable metric without a value, in table order

    def reasons(self) -> dict[str, str]:
        return {m.name: m.reason for m in self.missing}


def _systemd_defs() -> tuple[MetricDef, ...]:
    what = {
        "firmware": "time in the firmware before the boot loader (only when the loader sets LoaderTimeInitUSec; "
                    "systemd-boot does, GRUB and rEFInd do not)",
        "loader": "time in the boot loader (LoaderTimeExecUSec; systemd-boot only)",
        "kernel": "kernel start → systemd's start (with a scripted stage 1 this includes the whole initrd, "
                  "stage-2-init.sh and the activation script; with a systemd initrd: → the initrd's systemd)",
        "initrd": "the systemd initrd (initrd systemd start → the system's systemd start; only with "
                  "boot.initrd.systemd.enable)",
        "userspace": "systemd's start → the end of the boot transaction (FinishTimestamp)",
    }
    return tuple(
        MetricDef(name, "s", f"systemd-analyze time, the '({part})' part: {what[part]}.", "systemd-analyze time",
                  applies_to="nixos")
        for part, name in SYSTEMD_PARTS.items()
    )


METRICS: tuple[MetricDef, ...] = (
    MetricDef(
        "firmware_loaders_s", "s",
        "host time of the bundle's BEGIN line minus the guest uptime at probe start: when the kernel "
        "started, counted from QEMU start (firmware + boot loaders). Lab only.",
        "host serial timestamps + /proc/uptime", phase=True,
    ),
    MetricDef(
        "firmware_s", "s",
        "time in the firmware before the boot loader starts, on the machine's own clock, as systemd-analyze "
        "counts it: the ACPI FPDT's bootloader_launch_ns (else the loader's LoaderTimeInitUSec). Hardware and lab.",
        "ACPI FPDT (/sys/firmware/acpi/fpdt/boot)",
    ),
    MetricDef(
        "loader_s", "s",
        "time from the boot loader's start to the kernel's ExitBootServices, as systemd-analyze counts it: "
        "FPDT exitbootservice_end_ns - bootloader_launch_ns (rEFInd, its menu timeout, GRUB for NixOS and the "
        "kernel's EFI stub reading the initrd; else LoaderTimeExecUSec - LoaderTimeInitUSec).",
        "ACPI FPDT (/sys/firmware/acpi/fpdt/boot)",
    ),
    MetricDef(
        "kernel_s", "s", f"dmesg time of '{KERNEL_END_MARKER}' (kernel start → /init).", "dmesg", phase=True,
    ),
    MetricDef(
        "initramfs_s", "s",
        "end of the initramfs minus kernel_s. The end: Alpine: the kmsg line 'Installing packages to root "
        "filesystem: ok.' (initramfs-init's last before switch_root); NixOS scripted stage 1: stage 2's first "
        "kmsg line 'booting system configuration …' (else systemd's 'running in system mode' line, which comes "
        "after stage 2's activation); NixOS systemd stage 1: systemd-analyze's kernel + initrd parts; rehearsal "
        "guests: 'labkit-rehearsal: switch_root'.",
        "dmesg (systemd-analyze time for a systemd initrd)", phase=True,
    ),
    MetricDef(
        "userspace_to_probe_s", "s",
        "guest uptime at probe start minus the end of the initramfs (as for initramfs_s).",
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
    *_systemd_defs(),
    MetricDef(
        "openrc_boot_s", "s",
        "OpenRC's boot runlevel: 'rc boot logging stopped at' minus 'rc boot logging started at' in "
        "/var/log/rc.log (rc_logger=\"YES\"; ctime stamps, 1 s resolution). OpenRC cannot log sysinit.",
        "rc.log", applies_to="alpine",
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
        "(nix path-info -rS; without nix: nix-store -qR; rehearsal: the store paths the rehearsal store "
        "registered).",
        "apk db / nix path-info",
    ),
    MetricDef(
        "installed_size_mib", "MiB",
        "Alpine: sum of I: (installed bytes) over /lib/apk/db/installed. NixOS: closure size (the same "
        "number as closure_size_mib: a store path is stored unpacked).",
        "apk db / nix path-info",
    ),
    MetricDef(
        "compressed_size_mib", "MiB", "Alpine: sum of S: (bytes of the .apk files) over /lib/apk/db/installed.",
        "apk db", applies_to="alpine",
    ),
    MetricDef(
        "packages_missing", "count",
        "Alpine: entries of /etc/apk/world that no package in /lib/apk/db/installed provides after the boot's "
        "install. The diskless boot's apk add implies APK_FORCE_BROKEN_WORLD and drops them silently; a boot "
        "with any is an incomplete install, left out of the load-cost fit.",
        "apk world vs apk db", applies_to="alpine",
    ),
    MetricDef(
        "apk_install_errors", "flag",
        "Alpine: 1 when the initramfs wrote 'WARNING: apkovl packages install completed with errors...' to the "
        "kernel log (mkinitfs >= 3.13.0 initramfs-init.in l.1072), else 0. Older mkinitfs leaves no trace.",
        "dmesg", applies_to="alpine",
    ),
    MetricDef(
        "closure_size_mib", "MiB",
        "NixOS: closure size of /run/current-system: nix path-info -rS (NAR bytes, the toplevel's closure "
        "size); without nix: du -sk over nix-store -qR /run/current-system (disk usage); rehearsal: sizes the "
        "rehearsal store registered at build time. Never the whole /nix/store (old generations, .drv files).",
        "nix path-info", applies_to="nixos",
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
        "guest_gunzip_mib_s", "MiB/s",
        "the guest's own decompression rate: `gzip -dc` of the installed packages' .apk files to /dev/null, "
        "timed by /proc/uptime after everything else the probe does (files read once before, so from the page "
        "cache); MiB of uncompressed data (gzip trailers) per second. Alpine only.",
        "apk_gunzip section", applies_to="alpine",
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


@functools.lru_cache(maxsize=256)
def os_family(os_id: str) -> str:
    """``alpine-rehearsal`` → ``alpine``; ``nixos`` → ``nixos``; a merged report's group label
    (``alpine-rehearsal | memory_mib=384``, :mod:`labkit.report.merge`) → ``alpine``."""
    return _FAMILY_END.split(os_id, maxsplit=1)[0]


_FAMILY_END = re.compile(r"[^A-Za-z0-9_]")


def applies(metric: str, os_id: str) -> bool:
    """Whether ``metric`` is defined for ``os_id`` (a metric that applies but is absent is *missing*)."""
    d = METRIC_BY_NAME.get(metric)
    return d is None or d.applies_to == "all" or d.applies_to == os_family(os_id)


@functools.lru_cache(maxsize=64)
def _applicable(os_id: str) -> tuple[MetricDef, ...]:
    """The table's metrics that apply to ``os_id``, in table order (asked once per bundle)."""
    return tuple(d for d in METRICS if applies(d.name, os_id))


class _Values:
    """Values, their sources where they differ from the definition's, and the reasons of the absent ones."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.sources: dict[str, str] = {}
        self.why: dict[str, str] = {}

    def set(self, name: str, value: float, source: str | None = None) -> None:
        self.values[name] = value
        self.why.pop(name, None)
        if source is not None:
            self.sources[name] = source

    def absent(self, name: str, reason: str) -> None:
        if name not in self.values:
            self.why.setdefault(name, reason)


def _tool_error(text: str, prefixes: tuple[str, ...] = ("error:",)) -> str | None:
    """The first error line a tool wrote into its section (the probe keeps stderr), if any."""
    for line in text.splitlines():
        if line.strip().startswith(prefixes):
            return line.strip()
    return None


#: one record of the probe's /lib/apk/db/installed (P, V, S, I and an optional p: line), with its name (when
#: it has no white space, as _INSTALLED_NAMES reads it), S, I and the p: line as groups; or else, where no
#: record starts, a character that is not white space (the last group), taken with all the rest of the text:
#: one such match rules the fast path out, so a section of junk gives one match, not one per character
_APK_RECORD_OR_OTHER = re.compile(
    r"^P:(?:(\S+)|[^\n]+)\nV:[^\n]+\nS:(\d+)\nI:(\d+)(?:\np:([^\n]*))?$|(\S)[\s\S]*", re.M)


#: above this many characters the apk database is read match by match (finditer: sums kept as they come, no
#: list of every record), so a huge section costs about its names, not several times its size
_APK_STREAM_CHARS = 1 << 20


class _ApkFast(NamedTuple):
    n_packages: float
    installed_mib: float
    compressed_mib: float
    names: set[str]  # names and what the packages provide, as _installed_names reads them


def _provided(p_line: str) -> Iterator[str]:
    """The names a ``p:`` line provides, without their versions."""
    return (t.split("=", 1)[0] for t in p_line.split())


def _apk_sums(text: str) -> _ApkFast | None:
    """(count, installed MiB, compressed MiB, names) when the section is exactly the probe's P/V/S/I[/p]
    records separated by white space (one regex pass: a record where one starts, else a character that is
    not white space, which rules the fast path out); None otherwise (then :func:`parse_apk_installed` reads it
    line by line)."""
    if len(text) > _APK_STREAM_CHARS:
        return _apk_sums_streamed(text)
    found = _APK_RECORD_OR_OTHER.findall(text)
    if not found:
        return None
    names, sizes, installed, provides, other = zip(*found, strict=True)
    if any(other):
        return None
    have = set(names)
    have.discard("")
    for p_line in provides:
        if p_line:
            have.update(_provided(p_line))
    return _ApkFast(float(len(found)), sum(map(int, installed)) / 1024**2, sum(map(int, sizes)) / 1024**2, have)


def _apk_sums_streamed(text: str) -> _ApkFast | None:
    """:func:`_apk_sums` match by match (the same result, memory about the names only)."""
    count = size = installed = 0
    have: set[str] = set()
    for m in _APK_RECORD_OR_OTHER.finditer(text):
        name, s, i, p_line, other = m.groups()
        if other is not None:
            return None
        count += 1
        size += int(s)
        installed += int(i)
        if name:
            have.add(name)
        if p_line:
            have.update(_provided(p_line))
    if not count:
        return None
    return _ApkFast(float(count), installed / 1024**2, size / 1024**2, have)


def _package_values(v: _Values, bundle: Bundle) -> None:
    sections = bundle.sections
    nix_names = ("closure_size_mib", "package_count", "installed_size_mib")
    fast = _apk_sums(sections["apk_installed"]) if "apk_installed" in sections else None
    if fast is not None:
        v.set("package_count", fast.n_packages)
        v.set("installed_size_mib", fast.installed_mib)
        v.set("compressed_size_mib", fast.compressed_mib)
    elif "apk_installed" in sections:
        pkgs = parse_apk_installed(sections["apk_installed"])
        v.set("package_count", float(len(pkgs)))
        if not pkgs:
            v.absent("installed_size_mib", "/lib/apk/db/installed has no package")
            v.absent("compressed_size_mib", "/lib/apk/db/installed has no package")
        if pkgs and all(p.installed_size is not None for p in pkgs):
            v.set("installed_size_mib", sum(p.installed_size or 0 for p in pkgs) / 1024**2)
        elif pkgs:
            v.absent("installed_size_mib", "a record of /lib/apk/db/installed has no I: field")
        if pkgs and all(p.size is not None for p in pkgs):
            v.set("compressed_size_mib", sum(p.size or 0 for p in pkgs) / 1024**2)
        elif pkgs:
            v.absent("compressed_size_mib", "a record of /lib/apk/db/installed has no S: field")
    elif "nix_path_info" in sections:
        err = _tool_error(sections["nix_path_info"])
        if err:
            for n in nix_names:
                v.absent(n, f"nix path-info failed in the guest: {err[:160]}")
            return
        paths = parse_nix_path_info(sections["nix_path_info"], "nix_path_info")
        closures = [p.closure_size for p in paths if p.closure_size is not None]
        v.set("package_count", float(len(paths)))
        if closures:
            v.set("closure_size_mib", max(closures) / 1024**2)
            v.set("installed_size_mib", max(closures) / 1024**2)
        else:
            for n in ("closure_size_mib", "installed_size_mib"):
                v.absent(n, "nix path-info printed no closure size (run without -S?)")
    elif "nix_closure_du" in sections:
        err = _tool_error(sections["nix_closure_du"], ("error:", "du:"))
        if err:
            for n in nix_names:
                v.absent(n, f"measuring the closure with nix-store -qR and du failed in the guest: {err[:160]}")
            return
        du = parse_du_k(sections["nix_closure_du"], "nix_closure_du")
        src = "du -sk over nix-store -qR /run/current-system (disk usage, not NAR size)"
        v.set("package_count", float(len(du)), src)
        v.set("closure_size_mib", sum(k for _, k in du) / 1024, src)
        v.set("installed_size_mib", sum(k for _, k in du) / 1024, src)
    elif "nix_store_du" in sections and bundle.guest == "rehearsal":
        du = parse_du_k(sections["nix_store_du"])
        src = "rehearsal store: sizes registered at build time (du -sk lines)"
        v.set("package_count", float(len(du)), src)
        v.set("closure_size_mib", sum(k for _, k in du) / 1024, src)
        v.set("installed_size_mib", sum(k for _, k in du) / 1024, src)
    elif "nix_store_du" in sections:
        for n in nix_names:
            v.absent(n, "the bundle's nix_store_du comes from an older probe that may have measured the whole "
                        "/nix/store (every generation, .drv files): not used as the closure")
    elif os_family(bundle.os) == "nixos":
        for n in nix_names:
            v.absent(n, "no nix_path_info section: neither nix nor nix-store was on the probe's PATH (the "
                        "probe unit's path must hold config.nix.package)")
    else:
        for n in ("package_count", "installed_size_mib", "compressed_size_mib"):
            v.absent(n, "no apk_installed section: /lib/apk/db/installed was not found")
    if os_family(bundle.os) == "alpine":
        _world_values(v, sections, fast.names if fast is not None else None)


_INSTALLED_NAMES = re.compile(r"^P:(\S+)$|^p:(.*)$", re.M)


def _installed_names(text: str) -> set[str]:
    """The names in /lib/apk/db/installed and what its packages provide (p: tokens without their versions),
    read with _INSTALLED_NAMES (when :func:`_apk_sums` did not read the section)."""
    have: set[str] = set()
    for name, p_line in _INSTALLED_NAMES.findall(text):
        if name:
            have.add(name)
        else:
            have.update(_provided(p_line))
    return have


def _world_values(v: _Values, sections: Mapping[str, str], names: set[str] | None = None) -> None:
    """packages_missing (world vs installed) and apk_install_errors (the initramfs's warning)."""
    if "apk_world" not in sections or "apk_installed" not in sections:
        what = "apk_world" if "apk_world" not in sections else "apk_installed"
        v.absent("packages_missing", f"no {what} section in the bundle")
    else:
        have = names if names is not None else _installed_names(sections["apk_installed"])
        lost = world_missing_names(parse_apk_world(sections["apk_world"]), have)
        v.set("packages_missing", float(len(lost)),
              "apk world vs apk db" + (f": {', '.join(lost[:8])}{' ...' if len(lost) > 8 else ''}" if lost else ""))
    if "dmesg" in sections:
        v.set("apk_install_errors", 1.0 if INSTALL_ERRORS_WARNING in sections["dmesg"] else 0.0)
    else:
        v.absent("apk_install_errors", "no dmesg section")


class RawDmesg:
    """The dmesg section as raw text: a marker is found with ``str.find`` (:func:`dmesg_marker_find`); the
    ``(t, text)`` messages are parsed only when something iterates them (the NixOS and real-Alpine rules).

    Every marker but the kernel's own is looked for after the kernel's ``Run /init as init process`` line
    when there is one: the initramfs writes them, and it runs after that line (a marker cannot come earlier
    in a boot's log), so the search skips the kernel's hundreds of lines once instead of for each marker."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._parsed: list[tuple[float, str]] | None = None
        found = dmesg_marker_find(text, KERNEL_END_MARKER) if text else None
        self.kernel_end = found[0] if found is not None else None
        self._after_kernel = found[1] if found is not None else 0
        self._memo: dict[str, float | None] = {KERNEL_END_MARKER: self.kernel_end}

    def marker_time(self, marker: str) -> float | None:
        if marker not in self._memo:
            self._memo[marker] = dmesg_marker_time(self.text, marker, self._after_kernel)
        return self._memo[marker]

    def __bool__(self) -> bool:
        return bool(self.text.strip())

    def __iter__(self) -> Iterator[tuple[float, str]]:
        if self._parsed is None:
            self._parsed = parse_dmesg(self.text)
        return iter(self._parsed)


def find_marker(dmesg: Iterable[tuple[float, str]], marker: str) -> float | None:
    """Time of the first message whose text ends with ``marker`` (Alpine/labkit kmsg texts are verbatim)."""
    if isinstance(dmesg, RawDmesg):
        return dmesg.marker_time(marker)
    for t, text in dmesg:
        if text.strip().endswith(marker):
            return t
    return None


@dataclass(frozen=True)
class Boundary:
    """When the initramfs ended, on the guest's clock (seconds since kernel start), and what says so."""

    t: float | None
    source: str  # the row's source when t is known
    reason: str = ""  # why t is unknown


def _systemd_time(bundle: Bundle) -> tuple[SystemdTime | None, str]:
    """The parsed ``systemd_time`` section, or None and why not."""
    text = bundle.sections.get("systemd_time")
    if text is None:
        return None, "no systemd_time section: systemd-analyze was not on the probe's PATH"
    if "Bootup is not yet finished" in text:
        return None, "systemd-analyze time: 'Bootup is not yet finished' when the probe ran"
    if _tool_error(text) or text.strip().startswith("Failed to"):
        return None, f"systemd-analyze time failed: {text.strip().splitlines()[0][:160]}"
    return parse_systemd_time(text), ""


def initramfs_end(bundle: Bundle, dmesg: Iterable[tuple[float, str]],
                  markers: Mapping[str, str] | None = None) -> Boundary:
    """Where the initramfs phase of ``bundle``'s boot ended (see the module docstring for the rules)."""
    markers = INITRAMFS_END_MARKERS if markers is None else markers
    if bundle.os in markers:
        t = find_marker(dmesg, markers[bundle.os])
        return Boundary(t, f"dmesg: '{markers[bundle.os]}'",
                        "" if t is not None else f"no '{markers[bundle.os]}' line in dmesg")
    family = os_family(bundle.os)
    if family == "alpine":
        t = find_marker(dmesg, ALPINE_PKG_END)
        if t is not None:
            return Boundary(t, f"dmesg: '{ALPINE_PKG_END}' (initramfs-init's last kmsg line before switch_root)")
        if not any(text.startswith(ALPINE_INIT) for _, text in dmesg):
            return Boundary(None, "", "no 'Alpine Init' line in dmesg: Alpine's initramfs did not run (or the "
                                      "kernel log wrapped)")
        return Boundary(None, "", f"no '{ALPINE_PKG_END}' in dmesg: the initramfs did not finish its package "
                                  "install (not a diskless boot, or it stopped in the recovery shell)")
    if family == "nixos":
        for t, text in dmesg:
            if text.startswith(NIXOS_STAGE2_START):
                return Boundary(t, "dmesg: stage 2's first line 'booting system configuration …' "
                                   "(scripted stage 1)")
        st, st_why = _systemd_time(bundle)
        if st is not None and "initrd" in st.phases and "kernel" in st.phases:
            return Boundary(st.phases["kernel"] + st.phases["initrd"],
                            "systemd-analyze time: kernel + initrd parts (systemd stage 1)")
        starts = [(i, t) for i, (t, text) in enumerate(dmesg) if SYSTEMD_START_RE.search(text)]
        in_initrd = [i for i, (_, text) in enumerate(dmesg) if SYSTEMD_IN_INITRD_RE.search(text)]
        if in_initrd:
            after = [t for i, t in starts if i > in_initrd[0]]
            if after:
                return Boundary(after[0], "dmesg: the system's systemd 'running in system mode' after the "
                                          "initrd's (systemd stage 1)")
            return Boundary(None, "", "systemd ran in the initrd, but neither systemd-analyze's initrd part nor a "
                                      f"second 'running in system mode' line is there ({st_why or 'no initrd part'})")
        if starts:
            return Boundary(starts[0][1], "dmesg: systemd's 'running in system mode' (no stage-2 kmsg line: "
                                          "includes stage-2-init.sh and the activation script)")
        return Boundary(None, "", "dmesg has neither stage 2's 'booting system configuration' nor systemd's "
                                  "'running in system mode' line (the kernel log wrapped?)")
    return Boundary(None, "", f"no initramfs-end rule for os {bundle.os!r}")


#: Metric(*fields) without the named tuple's Python-level __new__ (the same object; made ~20 times a bundle)
_new_metric = tuple.__new__


#: the /proc/meminfo keys the metrics read
_MEMINFO_READ = ("MemTotal", "MemAvailable", "Shmem")


def _mib(kib: int) -> float:
    return kib / 1024.0


def measure_bundle(
    bundle: Bundle,
    *,
    qemu_t0: float = 0.0,
    initramfs_markers: Mapping[str, str] | None = None,
) -> BundleMetrics:
    """Every metric the bundle allows, and every metric that applies but is absent, with the reason.

    ``qemu_t0`` is the host time of QEMU's start on the serial lines' clock (0 for labkit.lab.qemu).
    Host-timed metrics need ``bundle.t_begin`` (serial capture in the lab).
    Raises :class:`labkit.measure.bundle.BundleError` for an incomplete bundle or malformed section.
    """
    if not bundle.ok:
        raise BundleError(
            f"bundle of {bundle.os} is not complete/verified: {'; '.join(bundle.problems) or 'unknown problem'}",
            "metrics are computed only from verified bundles; boot the guest again",
        )
    v = _Values()
    secs = bundle.sections

    uptime = parse_uptime(secs["uptime"]).uptime_s if "uptime" in secs else None
    dmesg = RawDmesg(secs.get("dmesg", ""))
    check_dmesg(dmesg.text)
    if uptime is None:
        for n in ("firmware_loaders_s", "userspace_to_probe_s", "probe_s", "probe_timing_s"):
            v.absent(n, "no uptime section")
    if "dmesg" not in secs:
        for n in ("kernel_s", "initramfs_s", "userspace_to_probe_s", "alpine_package_load_s"):
            v.absent(n, "no dmesg section")

    stage = None
    if "probe_stage" in secs:
        from labkit.measure.parsers.system import parse_probe_stage

        stage = parse_probe_stage(secs["probe_stage"])

    if bundle.t_begin is not None and bundle.t_begin == bundle.t_begin:  # not None, not NaN
        since_start = bundle.t_begin - qemu_t0
        if stage is None:
            v.set("total_to_probe_s", since_start)
        if uptime is not None:
            v.set("firmware_loaders_s", since_start - uptime)
    else:
        for n in ("total_to_probe_s", "firmware_loaders_s"):
            v.absent(n, "no host timestamp of the bundle's BEGIN line (read from a file, not from the lab's "
                        "serial console)")

    if "firmware" in secs:
        from labkit.measure.parsers.firmware import firmware_times, parse_firmware

        fw = firmware_times(parse_firmware(secs["firmware"]))
        if fw.firmware_s is not None and fw.loader_s is not None:
            v.set("firmware_s", fw.firmware_s, fw.source)
            v.set("loader_s", fw.loader_s, fw.source)
        else:
            v.absent("firmware_s", fw.why)
            v.absent("loader_s", fw.why)
    else:
        for n in ("firmware_s", "loader_s"):
            v.absent(n, "no firmware section (a probe older than the FPDT reader)")

    kernel_end = find_marker(dmesg, KERNEL_END_MARKER)
    if kernel_end is not None:
        v.set("kernel_s", kernel_end)
    elif dmesg:
        v.absent("kernel_s", f"no '{KERNEL_END_MARKER}' line in dmesg (the kernel log wrapped?)")
        v.absent("initramfs_s", "kernel_s is missing")
    end = initramfs_end(bundle, dmesg, initramfs_markers)
    if stage is not None:
        # the probe ran before the system's own userspace (labkit.probe=initramfs): nothing after the
        # initramfs was booted, and the initramfs itself had not ended
        why = (f"the probe ran in the {stage}, right after the package install (labkit.probe={stage}: a load-cost "
               "boot), so no userspace was booted")
        for n in ("total_to_probe_s", "initramfs_s", "userspace_to_probe_s", "openrc_boot_s"):
            v.absent(n, why)
    elif end.t is not None:
        if kernel_end is not None:
            v.set("initramfs_s", end.t - kernel_end, end.source)
        if uptime is not None:
            v.set("userspace_to_probe_s", uptime - end.t, f"/proc/uptime − {end.source}")
    elif dmesg:
        v.absent("initramfs_s", end.reason)
        v.absent("userspace_to_probe_s", end.reason)

    pkg_start, pkg_end = find_marker(dmesg, ALPINE_PKG_START), find_marker(dmesg, ALPINE_PKG_END)
    if pkg_start is not None and pkg_end is not None:
        v.set("alpine_package_load_s", pkg_end - pkg_start)
    elif dmesg:
        v.absent("alpine_package_load_s", f"dmesg lacks '{ALPINE_PKG_START}' or '{ALPINE_PKG_END}'")

    if os_family(bundle.os) == "nixos":
        st, st_why = _systemd_time(bundle)
        for part, name in SYSTEMD_PARTS.items():
            if st is not None and part in st.phases:
                v.set(name, st.phases[part])
            elif st is not None:
                v.absent(name, {
                    "firmware": "systemd-analyze time has no firmware part: the boot loader does not set "
                                "LoaderTimeInitUSec (GRUB and rEFInd do not; systemd-boot does)",
                    "loader": "systemd-analyze time has no loader part: the boot loader does not set "
                              "LoaderTimeExecUSec (GRUB and rEFInd do not; systemd-boot does)",
                    "initrd": "systemd-analyze time has no initrd part: systemd did not run in the initrd "
                              "(scripted stage 1: its time is inside the kernel part)",
                    "kernel": "systemd-analyze time has no kernel part (a container?)",
                    "userspace": "systemd-analyze time has no userspace part",
                }[part])
            else:
                v.absent(name, st_why)
    if os_family(bundle.os) == "alpine" and stage is None:
        if "rc_log" in secs:
            rc = parse_rc_log(secs["rc_log"])
            boot_s = rc.duration_s("boot")
            if boot_s is not None:
                v.set("openrc_boot_s", boot_s)
            else:
                v.absent("openrc_boot_s", "rc.log has no finished boot runlevel ('rc boot logging started/stopped')")
        else:
            v.absent("openrc_boot_s", "no rc_log section: /var/log/rc.log was not written (rc_logger=\"YES\" "
                                      "missing from /etc/rc.conf, or OpenRC did not run)")

    if uptime is not None and "uptime_end" in secs:
        v.set("probe_s", parse_uptime(secs["uptime_end"]).uptime_s - uptime)
    else:
        v.absent("probe_s", "no uptime_end section")
    if uptime is not None and "uptime_mid" in secs:
        v.set("probe_timing_s", parse_uptime(secs["uptime_mid"]).uptime_s - uptime)
    else:
        v.absent("probe_timing_s", "no uptime_mid section (an older probe)")

    if "meminfo" in secs:
        mem = meminfo_values(secs["meminfo"], _MEMINFO_READ)
        v.set("mem_total_mib", _mib(mem["MemTotal"]))
        if "MemAvailable" in mem:
            v.set("ram_used_mib", _mib(mem["MemTotal"] - mem["MemAvailable"]),
                  "/proc/meminfo at probe start (no settle section)")
        else:
            v.absent("ram_used_mib", "/proc/meminfo has no MemAvailable line")
        if "Shmem" in mem:
            v.set("shmem_mib", _mib(mem["Shmem"]))
        else:
            v.absent("shmem_mib", "/proc/meminfo has no Shmem line")
    else:
        for n in ("mem_total_mib", "ram_used_mib", "shmem_mib"):
            v.absent(n, "no meminfo section")
    if "meminfo_settled" in secs:
        settled = meminfo_values(secs["meminfo_settled"], _MEMINFO_READ)
        if "MemAvailable" in settled:
            v.set("ram_used_mib", _mib(settled["MemTotal"] - settled["MemAvailable"]))
            v.sources.pop("ram_used_mib", None)
    if "df" in secs:
        root = [r for r in parse_df(secs["df"]) if r.mounted_on == "/"]
        if root:
            v.set("root_tmpfs_used_mib", _mib(root[0].used_k))
        else:
            v.absent("root_tmpfs_used_mib", "df -k has no line for /")
    else:
        v.absent("root_tmpfs_used_mib", "no df section")
    _package_values(v, bundle)
    if "apk_gunzip" in secs:
        from labkit.measure.parsers.apk_timing import parse_apk_gunzip

        gz = parse_apk_gunzip(secs["apk_gunzip"])
        if gz.status == 0 and gz.seconds > 0:
            v.set("guest_gunzip_mib_s", gz.mib_s)
        else:
            v.absent("guest_gunzip_mib_s", f"gzip -dc exited {gz.status} after {gz.seconds:g} s in the guest")
    else:
        v.absent("guest_gunzip_mib_s", "no apk_gunzip section: the probe found no .apk file of the installed packages "
                                       "under /media/*/apks, or the boot had labkit.gunzip=0 (a load-cost replicate)")
    installed = v.values.get("installed_size_mib")
    if installed:
        if "alpine_package_load_s" in v.values:
            v.set("alpine_load_cost_s_per_mib", v.values["alpine_package_load_s"] / installed)
        else:
            v.absent("alpine_load_cost_s_per_mib", "alpine_package_load_s is missing")
        if "root_tmpfs_used_mib" in v.values and os_family(bundle.os) == "alpine":
            v.set("alpine_load_cost_ram_mib_per_mib", v.values["root_tmpfs_used_mib"] / installed)
        else:
            v.absent("alpine_load_cost_ram_mib_per_mib", "root_tmpfs_used_mib is missing")
    else:
        for n in ("alpine_load_cost_s_per_mib", "alpine_load_cost_ram_mib_per_mib"):
            v.absent(n, "installed_size_mib is missing or 0")

    values, sources = v.values, v.sources
    metrics = [_new_metric(Metric, (d.name, values[d.name], d.unit, sources.get(d.name, d.source)))
               for d in METRICS if d.name in values]
    missing = [Missing(d.name, v.why.get(d.name, "no source for it in this bundle"))
               for d in _applicable(bundle.os) if d.name not in v.values]
    return BundleMetrics(metrics, missing)


def metrics_from_bundle(
    bundle: Bundle,
    *,
    qemu_t0: float = 0.0,
    initramfs_markers: Mapping[str, str] | None = None,
) -> list[Metric]:
    """The values of :func:`measure_bundle` (absent metrics give no entry)."""
    return measure_bundle(bundle, qemu_t0=qemu_t0, initramfs_markers=initramfs_markers).metrics


def missing_json(missing: list[Missing]) -> str:
    """``{metric: reason}`` as one JSON text (the ``missing`` column of boots.csv)."""
    return json.dumps({m.name: m.reason for m in missing}, sort_keys=False) if missing else ""
