"""Small system formats: busybox/procps ``free``, ``/etc/os-release``, OpenRC ``/var/log/rc.log``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from labkit.measure.bundle import SectionError, whole_number


@dataclass(frozen=True)
class Free:
    unit: str  # "KiB" (plain free), "MiB" (free -m), ...
    mem: dict[str, int]  # total, used, free, shared, buff/cache, available (what is printed)
    swap: dict[str, int]


_FREE_UNITS = {"-k": "KiB", "-m": "MiB", "-g": "GiB", "-b": "B"}


def parse_free(text: str, section: str = "free", unit: str = "KiB") -> Free:
    """``free`` (busybox or procps): header row, ``Mem:`` and ``Swap:`` rows."""
    header: list[str] | None = None
    mem: dict[str, int] = {}
    swap: dict[str, int] = {}
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if fields[0] in ("total", "used"):
            header = fields
            continue
        if fields[0] in ("Mem:", "Swap:", "Total:", "-/+"):
            if header is None:
                raise SectionError(section, no, raw, "a row before the 'total used free ...' header")
            if fields[0] == "-/+":
                continue
            values = [whole_number(v, section, no, raw) for v in fields[1:]]
            row = dict(zip(header, values, strict=False))
            if fields[0] == "Mem:":
                mem = row
            elif fields[0] == "Swap:":
                swap = row
            continue
        raise SectionError(section, no, raw, "expected 'Mem:'/'Swap:' rows under a header")
    if not mem:
        raise SectionError(section, None, None, "no 'Mem:' row")
    return Free(unit, mem, swap)


def parse_os_release(text: str, section: str = "os_release") -> dict[str, str]:
    """``/etc/os-release``: ``KEY=value`` with optional single/double quotes; comments skipped."""
    out: dict[str, str] = {}
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Z0-9_]+)=(.*)", line)
        if not m:
            raise SectionError(section, no, raw, "expected KEY=value")
        val = m[2]
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1].replace('\\"', '"').replace("\\$", "$").replace("\\\\", "\\")
        elif val[:1] in "\"'":
            raise SectionError(section, no, raw, "unbalanced quote")
        out[m[1]] = val
    return out


@dataclass(frozen=True)
class RcLog:
    runlevels: tuple[tuple[str, datetime, datetime | None], ...]  # (runlevel, started, stopped)
    services: tuple[tuple[str, str, bool], ...]  # (runlevel, "Starting networking", ok)

    def duration_s(self, runlevel: str) -> float | None:
        for name, start, stop in self.runlevels:
            if name == runlevel and stop is not None:
                return (stop - start).total_seconds()
        return None


_RC_EDGE = re.compile(r"^rc (?P<lvl>\S+) logging (?P<what>started|stopped) at (?P<when>.+)$")
_RC_SVC = re.compile(r"^\s*\* (?P<msg>.+?)\s*\.\.\.\s*(?:\[ (?P<st>ok|!!) \])?\s*$")
_RC_STATUS = re.compile(r"^\s*\[ (?P<st>ok|!!) \]\s*$")


def parse_rc_log(text: str, section: str = "rc_log") -> RcLog:
    """OpenRC's ``rc_logger`` file: ``rc <runlevel> logging started at <ctime>`` ... ``stopped at``,
    with `` * Starting x ... [ ok ]`` lines between (1 s resolution).

    The block edges come from OpenRC src/openrc/rc-logger.c (``"\\nrc %s logging %s at %s\\n"`` with
    asctime()); the status may follow on its own line (`` [ !! ]``), which counts for the service above.
    A runlevel still running when the file was read (the probe appends /run/openrc/rc.log, the log of the
    runlevel in progress) has no ``stopped`` time."""
    levels: list[tuple[str, datetime, datetime | None]] = []
    services: list[tuple[str, str, bool]] = []
    current: str | None = None
    pending = False  # the last service line had no status yet
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        m = _RC_EDGE.match(line.strip())
        if m:
            try:
                when = datetime.strptime(" ".join(m["when"].split()), "%a %b %d %H:%M:%S %Y")
            except ValueError:
                raise SectionError(section, no, raw, "the time is not ctime() format") from None
            if m["what"] == "started":
                levels.append((m["lvl"], when, None))
                current = m["lvl"]
            else:
                for i in range(len(levels) - 1, -1, -1):
                    if levels[i][0] == m["lvl"] and levels[i][2] is None:
                        levels[i] = (levels[i][0], levels[i][1], when)
                        break
                else:
                    raise SectionError(section, no, raw, f"runlevel {m['lvl']} stopped without a start")
                current = None
            continue
        s = _RC_SVC.match(line)
        if s:
            services.append((current or "?", s["msg"], s["st"] != "!!"))
            pending = s["st"] is None
            continue
        st = _RC_STATUS.match(line)
        if st and pending and services:
            # eend's status on its own line: on a colour terminal eend moves the cursor up to the ebegin
            # line, and rc_logger strips those escapes (rc-logger.c write_log), so "[ ok ]" lands alone
            lvl, msg, _ = services[-1]
            services[-1] = (lvl, msg, st["st"] == "ok")
            pending = False
    if not levels:
        raise SectionError(section, None, None, "no 'rc <runlevel> logging started at' line")
    return RcLog(tuple(levels), tuple(services))


@dataclass(frozen=True)
class RcStatus:
    """``rc-status --all --nocolor``: ``{runlevel: {service: state}}``; the dynamic runlevels are named as
    OpenRC prints them (``hotplugged``, ``needed/wanted``, ``manual``)."""

    runlevels: dict[str, dict[str, str]]

    def started(self) -> set[str]:
        return {svc for svcs in self.runlevels.values() for svc, st in svcs.items() if st.startswith("started")}

    def runlevel_of(self, service: str) -> str | None:
        return next((lvl for lvl, svcs in self.runlevels.items() if service in svcs), None)


_RC_LEVEL = re.compile(r"^(?:Dynamic )?Runlevel: (?P<lvl>\S+)$")
_RC_STATE = re.compile(r"^ (?P<svc>\S+)\s+\[\s*(?P<st>[^\]]+?)\s*\]$")


def parse_rc_status(text: str, section: str = "rc_status") -> RcStatus:
    """OpenRC's ``rc-status --all --nocolor`` (src/rc-status: ``Runlevel: <name>`` headers, then one
    `` <service>   [  <state>  ]`` line per service; supervised services add their uptime to the state)."""
    levels: dict[str, dict[str, str]] = {}
    current: str | None = None
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        m = _RC_LEVEL.match(line.strip())
        if m:
            current = m["lvl"]
            levels.setdefault(current, {})
            continue
        s = _RC_STATE.match(line.rstrip())
        if s and current is not None:
            levels[current][s["svc"]] = s["st"]
            continue
        raise SectionError(section, no, raw, "expected 'Runlevel: <name>' or ' <service>  [ <state> ]'")
    if not levels:
        raise SectionError(section, None, None, "no 'Runlevel:' line (not rc-status output?)")
    return RcStatus(levels)


#: Where a probe may run other than in the booted system (``probe_stage`` section, docs/contracts.md).
PROBE_STAGES = ("initramfs",)


def parse_probe_stage(text: str, section: str = "probe_stage") -> str:
    """The ``probe_stage`` section: one known word (``initramfs``: the Alpine-style rehearsal's
    ``labkit.probe=initramfs``, the probe ran right after the package install, before switch_root)."""
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) != 1 or lines[0] not in PROBE_STAGES:
        raw = lines[0] if lines else ""
        raise SectionError(section, 1, raw[:80], f"expected one line, one of {', '.join(PROBE_STAGES)}")
    return lines[0]


def parse_probe_errors(text: str, section: str = "probe_errors") -> list[str]:
    """The ``probe_errors`` section: what the probe's tools wrote on stderr, one message per line (the probe
    keeps at most 64 KiB of it; this keeps at most 200 lines of at most 500 characters: it is shown, not parsed
    further)."""
    lines = [ln.rstrip() for ln in text.split("\n") if ln.strip()]
    return [ln[:500] for ln in lines[:200]]
