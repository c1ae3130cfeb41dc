"""Parsers for every raw format the probe collects, one module per source, plus a registry.

``FORMATS`` maps a format name (also the bundle's section name) to its parser; ``detect_format``
guesses the format of one raw output; ``parse_text`` parses a whole bundle or one raw output into
JSON-able records (used by ``labkit parse``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from labkit.measure.bundle import (
    BundleError,
    parse_bundle_text,
    parse_cmdline,
    parse_df,
    parse_dmesg,
    parse_meminfo,
    parse_uptime,
)
from labkit.measure.parsers.apk import (
    parse_apk_console,
    parse_apk_info_names,
    parse_apk_info_sizes,
    parse_apk_installed,
    parse_apk_list,
    parse_apk_stats,
    parse_apk_world,
    parse_ls_sizes,
    strip_ansi,
)
from labkit.measure.parsers.apk_timing import parse_apk_gunzip
from labkit.measure.parsers.firmware import parse_firmware
from labkit.measure.parsers.mkinitfs import parse_initramfs_messages
from labkit.measure.parsers.nix import parse_du_k, parse_nix_path_info
from labkit.measure.parsers.system import (
    parse_free,
    parse_os_release,
    parse_probe_errors,
    parse_probe_stage,
    parse_rc_log,
    parse_rc_status,
)
from labkit.measure.parsers.systemd import (
    parse_duration,
    parse_systemd_blame,
    parse_systemd_critical_chain,
    parse_systemd_time,
)

#: format name (= bundle section name) → parser of the raw text
FORMATS: dict[str, Callable[[str], Any]] = {
    "uptime": parse_uptime,
    "uptime_end": lambda t: parse_uptime(t),
    "uptime_mid": lambda t: parse_uptime(t),
    "meminfo": parse_meminfo,
    "dmesg": parse_dmesg,
    "df": parse_df,
    "cmdline": parse_cmdline,
    "kernel": lambda t: t.strip(),
    "free": parse_free,
    "os_release": parse_os_release,
    "systemd_time": parse_systemd_time,
    "systemd_blame": parse_systemd_blame,
    "systemd_critical_chain": parse_systemd_critical_chain,
    "rc_log": parse_rc_log,
    "rc_status": parse_rc_status,
    "apk_installed": parse_apk_installed,
    "apk_world": parse_apk_world,
    "apk_cache": parse_ls_sizes,
    "apk_console": parse_apk_console,
    "apk_info": parse_apk_info_sizes,
    "apk_info_names": parse_apk_info_names,
    "apk_list": parse_apk_list,
    "apk_stats": parse_apk_stats,
    "apk_gunzip": parse_apk_gunzip,
    "nix_path_info": parse_nix_path_info,
    "nix_closure_du": lambda t: parse_du_k(t, "nix_closure_du"),
    "nix_store_du": parse_du_k,
    "firmware": parse_firmware,
    "probe_stage": parse_probe_stage,
    "probe_errors": parse_probe_errors,
}

_DETECT: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bundle", re.compile(r"@@LABKIT-BUNDLE-BEGIN ")),
    ("systemd_time", re.compile(r"^Startup finished in ", re.M)),
    ("systemd_critical_chain", re.compile(r"^The time when unit became active", re.M)),
    ("systemd_blame", re.compile(r"^\s*[0-9.]+(?:min|ms|s|us)\s+\S+\.(?:service|device|mount|target|socket)\s*$",
                                 re.M)),
    ("apk_console", re.compile(r"^\(\s*\d+/\d+\) (?:Installing|Upgrading|Purging) |"
                               r"^(?:OK:|\d+ errors?;|ERRORS;) \d+(?:\.\d+)? [KMGT]?i?B in \d+ packages", re.M)),
    ("apk_info", re.compile(r"^\S+ installed size:$", re.M)),
    ("apk_stats", re.compile(r"^installed:\n  packages: \d+\n", re.M)),
    ("apk_list", re.compile(r"^\S+ \S+ \{[^}]*\} \(.*\)(?: \[(?:installed|upgradable from: \S+)\])?$", re.M)),
    ("apk_installed", re.compile(r"^P:\S+\nV:", re.M)),
    ("rc_log", re.compile(r"^rc \S+ logging started at ", re.M)),
    ("rc_status", re.compile(r"^Runlevel: \S+\n(?: \S+\s+\[|Runlevel: )", re.M)),
    # text lines, or --json: a list (Nix <= 2.18) or an object keyed by store path (Nix >= 2.19)
    ("nix_path_info", re.compile(r"^(?:/nix/store/\S+\s+[0-9.]+[KMGT]?(?:\s+[0-9.]+[KMGT]?)?\s*$|\[\{\"path\"|"
                                 r"\{\s*\"/nix/store/)", re.M)),
    ("nix_store_du", re.compile(r"^\d+\t/\S*nix/store/", re.M)),
    ("meminfo", re.compile(r"^MemTotal:\s+\d+ kB", re.M)),
    ("free", re.compile(r"^\s+total\s+used\s+free", re.M)),
    ("df", re.compile(r"^Filesystem\s+1(?:K|024)-blocks", re.M)),
    ("os_release", re.compile(r"^(?:PRETTY_NAME|ID|NAME)=", re.M)),
    ("dmesg", re.compile(r"^\[\s*\d+\.\d+\] ", re.M)),
    ("firmware", re.compile(r"^fpdt(?: absent| [a-z_]+_ns \d+)\n", re.M)),
    ("uptime", re.compile(r"^\d+\.\d+ \d+\.\d+\s*$")),
    ("apk_cache", re.compile(r"^-[-rwx]{9}\s+\d+\s+\d+\s+\d+\s+\d+ .*\.apk$", re.M)),
)


class FormatError(BundleError):
    """The format of a raw text is unknown or cannot be detected."""


def detect_format(text: str) -> str:
    """The format name of one raw output (or ``bundle``); :class:`FormatError` when unknown."""
    clean = strip_ansi(text)
    for name, rx in _DETECT:
        if rx.search(clean):
            return name
    raise FormatError(
        "cannot tell the format of this text",
        f"name it with --format (one of: bundle, {', '.join(FORMATS)})",
    )


def to_records(value: Any) -> Any:
    """Parser results → JSON-able data (dataclasses → dicts, tuples → lists, datetimes → ISO)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_records(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_records(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_records(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def parse_section(name: str, text: str) -> Any:
    """Parse one bundle section (or raw output) by its format name."""
    try:
        parser = FORMATS[name]
    except KeyError:
        raise FormatError(f"unknown format {name!r}", f"use one of: {', '.join(FORMATS)}") from None
    return parser(text)


def parse_text(text: str, fmt: str | None = None) -> dict[str, Any]:
    """A bundle or one raw output → ``{"format": ..., "records": ...}`` (JSON-able).

    A bundle gives ``{"format": "bundle", "os": ..., "guest": ..., "ok": ..., "sections": {name: records}}``;
    a section labkit has no parser for is returned as raw text.
    """
    fmt = fmt or detect_format(text)
    if fmt == "bundle":
        b = parse_bundle_text(text)
        sections = {name: (to_records(parse_section(name, raw)) if name in FORMATS else raw)
                    for name, raw in b.sections.items()}
        return {"format": "bundle", "os": b.os, "guest": b.guest, "ok": b.ok, "sections": sections}
    return {"format": fmt, "records": to_records(parse_section(fmt, text))}


__all__ = [
    "FORMATS",
    "FormatError",
    "detect_format",
    "parse_apk_console",
    "parse_apk_gunzip",
    "parse_apk_info_names",
    "parse_apk_info_sizes",
    "parse_apk_installed",
    "parse_apk_list",
    "parse_apk_stats",
    "parse_apk_world",
    "parse_du_k",
    "parse_duration",
    "parse_free",
    "parse_initramfs_messages",
    "parse_ls_sizes",
    "parse_nix_path_info",
    "parse_os_release",
    "parse_rc_log",
    "parse_rc_status",
    "parse_section",
    "parse_systemd_blame",
    "parse_systemd_critical_chain",
    "parse_systemd_time",
    "parse_text",
    "to_records",
]
