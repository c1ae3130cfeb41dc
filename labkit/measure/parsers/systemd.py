"""``systemd-analyze time``, ``blame`` and ``critical-chain`` (durations like ``1min 9.608s``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from labkit.measure.bundle import SectionError

_DUR_TOKEN = re.compile(r"(?P<v>\d{1,12}(?:\.\d{1,9})?)(?P<u>y|month|w|d|h|min|s|ms|us|µs)")
_DUR_FULL = re.compile(r"^(?:\d{1,12}(?:\.\d{1,9})?(?:y|month|w|d|h|min|s|ms|us|µs)\s*)+$")
_SCALE = {"y": 31557600.0, "month": 2629800.0, "w": 604800.0, "d": 86400.0, "h": 3600.0, "min": 60.0,
          "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def parse_duration(text: str, section: str = "systemd", line_no: int | None = None) -> float:
    """systemd's timespan format → seconds: ``296ms``, ``2.584s``, ``1min 9.608s``, ``1h 2min 3s``."""
    s = text.strip()
    if not s or not _DUR_FULL.match(s):
        raise SectionError(section, line_no, text, "not a systemd duration (e.g. 296ms, 2.584s, 1min 9.608s)")
    return sum(float(m["v"]) * _SCALE[m["u"]] for m in _DUR_TOKEN.finditer(s))


@dataclass(frozen=True)
class SystemdTime:
    phases: dict[str, float]  # firmware, loader, kernel, initrd, userspace (those printed), seconds
    total_s: float
    target: str | None  # "multi-user.target reached after ..." target name
    target_s: float | None


_TERM = re.compile(r"(?P<d>[0-9][0-9a-zµ. ]*?)\s*\((?P<name>[a-z]+)\)")


def parse_systemd_time(text: str, section: str = "systemd_time") -> SystemdTime:
    """``Startup finished in A (kernel) + B (initrd) + C (userspace) = T`` with 1 to 5 terms."""
    phases: dict[str, float] = {}
    total: float | None = None
    target: str | None = None
    target_s: float | None = None
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("Startup finished in "):
            rest = line[len("Startup finished in "):]
            terms, _, tot = rest.partition(" = ")
            for part in terms.split(" + "):
                m = _TERM.fullmatch(part.strip())
                if not m:
                    raise SectionError(section, no, line, f"term {part.strip()!r} is not '<duration> (<phase>)'")
                phases[m["name"]] = parse_duration(m["d"], section, no)
            total = parse_duration(tot.rstrip("."), section, no) if tot else sum(phases.values())
            continue
        m = re.match(r"^(?P<t>\S+) reached after (?P<d>.+?) in userspace\.?$", line)
        if m:
            target, target_s = m["t"], parse_duration(m["d"], section, no)
            continue
        if "Bootup is not yet finished" in line:
            raise SectionError(section, no, line, "boot not finished when the probe ran",
                               "run the probe after the default target is reached")
        raise SectionError(section, no, line, "unexpected line in systemd-analyze time output")
    if total is None:
        raise SectionError(section, None, None, "no 'Startup finished in ...' line")
    return SystemdTime(phases, total, target, target_s)


def parse_systemd_blame(text: str, section: str = "systemd_blame") -> list[tuple[str, float]]:
    """``systemd-analyze blame``: ``[(unit, seconds), ...]`` in the printed order."""
    out: list[tuple[str, float]] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        dur, sep, unit = line.rpartition(" ")
        if not sep or not unit:
            raise SectionError(section, no, raw, "expected '<duration> <unit>'")
        out.append((unit, parse_duration(dur, section, no)))
    return out


@dataclass(frozen=True)
class ChainUnit:
    unit: str
    depth: int
    active_at_s: float | None  # "@" time
    took_s: float | None  # "+" time


_CHAIN_RE = re.compile(r"^(?P<pre>[\s└─│├]*)(?P<unit>[^\s@+]+)(?:\s+@(?P<at>[^+]+?))?(?:\s+\+(?P<took>.+?))?\s*$")


def parse_systemd_critical_chain(text: str, section: str = "systemd_critical_chain") -> list[ChainUnit]:
    """``systemd-analyze critical-chain``: the tree, with "@" and "+" times (header lines skipped)."""
    out: list[ChainUnit] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip() or raw.startswith("The time "):
            continue
        m = _CHAIN_RE.match(raw.rstrip())
        if not m or "." not in m["unit"]:
            raise SectionError(section, no, raw, "expected '[tree] <unit> [@<time>] [+<time>]'")
        depth = len(m["pre"]) // 2
        at = parse_duration(m["at"], section, no) if m["at"] else None
        took = parse_duration(m["took"], section, no) if m["took"] else None
        out.append(ChainUnit(m["unit"], depth, at, took))
    if not out:
        raise SectionError(section, None, None, "no units in critical-chain output")
    return out
