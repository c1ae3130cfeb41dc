"""Alpine apk formats: /lib/apk/db/installed, apk console output, ``apk info`` sizes, world, cache.

Pure functions; a malformed input raises :class:`labkit.measure.bundle.SectionError` naming the section
and the line. Real samples: ``tests/fixtures/alpine-3.20.3/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labkit.measure.bundle import SectionError, whole_number

ANSI_RE = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[78]|\][^\x07]*\x07)")
_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def strip_ansi(text: str) -> str:
    """Remove ANSI escapes (apk --progress uses ESC 7 / ESC 8 / ESC [0K)."""
    return ANSI_RE.sub("", text)


def size_to_bytes(value: str, unit: str, section: str = "apk", line_no: int | None = None, line: str = "") -> int:
    if unit not in _UNITS:
        raise SectionError(section, line_no, line, f"unknown size unit {unit!r} (expected B, KiB, MiB, GiB)")
    return int(float(value) * _UNITS[unit])


@dataclass(frozen=True)
class ApkPackage:
    name: str
    version: str
    size: int | None  # S: bytes of the .apk (compressed)
    installed_size: int | None  # I: bytes installed


def parse_apk_installed(text: str, section: str = "apk_installed") -> list[ApkPackage]:
    """``/lib/apk/db/installed``: blank-line separated records; P/V/S/I read, other fields skipped."""
    out: list[ApkPackage] = []
    rec: dict[str, str] = {}
    start = 0

    def flush(no: int) -> None:
        if not rec:
            return
        if "P" not in rec or "V" not in rec:
            raise SectionError(section, start, None, f"package record ending before line {no} has no P: or V:")
        s = whole_number(rec["S"], section, start, rec.get("P"), "S: size") if "S" in rec else None
        i = whole_number(rec["I"], section, start, rec.get("P"), "I: size") if "I" in rec else None
        out.append(ApkPackage(rec["P"], rec["V"], s, i))
        rec.clear()

    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            flush(no)
            continue
        if len(line) < 2 or line[1] != ":":
            raise SectionError(section, no, line, "expected '<field letter>:<value>'")
        if not rec:
            start = no
        key = line[0]
        if key == "P" and "P" in rec:  # a new record without a blank line between
            flush(no)
            start = no
        if key in "PVSI":
            rec[key] = line[2:]
    flush(len(text.split("\n")) + 1)
    return out


@dataclass(frozen=True)
class ApkConsole:
    installs: tuple[tuple[int, int, str, str], ...]  # (index, total, name, version)
    executed: tuple[str, ...]  # "busybox-1.36.1-r29.post-install", ...
    ok_bytes: int | None  # "OK: 8 MiB in 15 packages" (apk 2, MiB rounded) / "OK: 8440 KiB ..." (apk 3)
    ok_packages: int | None
    warnings: tuple[str, ...]


_INSTALL_RE = re.compile(r"^\((?P<i>\d{1,9})/(?P<n>\d{1,9})\) (?:Installing|Upgrading|Replacing|Reinstalling) "
                         r"(?P<name>\S+) \((?P<ver>[^)]+)\)")
_OK_RE = re.compile(r"^OK: (?P<v>\d{1,15}(?:\.\d{1,9})?) (?P<u>B|KiB|MiB|GiB) in (?P<n>\d{1,9}) packages")
_EXEC_RE = re.compile(r"^Executing (?P<s>\S+)")
_PROGRESS_RE = re.compile(r"^\s*\d{1,3}%[\s\u2588#=]*$")


def parse_apk_console(text: str, section: str = "apk_console") -> ApkConsole:
    """Console output of ``apk add --progress`` (ANSI progress bars stripped), apk 2.14 or apk 3."""
    installs: list[tuple[int, int, str, str]] = []
    executed: list[str] = []
    warnings: list[str] = []
    ok_bytes: int | None = None
    ok_n: int | None = None
    for no, raw in enumerate(text.split("\n"), start=1):
        # progress redraws: ESC 7 <bar> ESC 8 ESC [0K, then the next message on the same line
        for piece in re.split(r"\x1b\[0K", raw.rstrip("\r")):
            line = strip_ansi(piece).strip()
            if not line or _PROGRESS_RE.match(line):
                continue
            m = _INSTALL_RE.match(line)
            if m:
                installs.append((int(m["i"]), int(m["n"]), m["name"], m["ver"]))
                continue
            m = _OK_RE.match(line)
            if m:
                ok_bytes = size_to_bytes(m["v"], m["u"], section, no, line)
                ok_n = int(m["n"])
                continue
            m = _EXEC_RE.match(line)
            if m:
                executed.append(m["s"])
            elif line.startswith(("WARNING:", "ERROR:")):
                warnings.append(line)
            elif re.match(r"^\(\d+/\d+\)", line):
                raise SectionError(section, no, line, "an '(i/n)' line that is not 'Installing <name> (<version>)'")
    for k, (i, n, name, _) in enumerate(installs):
        if i != k + 1 or n != installs[0][1]:
            raise SectionError(section, None, name, f"install counter out of order: ({i}/{n}) at position {k + 1}")
    return ApkConsole(tuple(installs), tuple(executed), ok_bytes, ok_n, tuple(warnings))


_INFO_HEAD_RE = re.compile(r"^(?P<pkg>\S+) (?P<what>installed size|description|webpage|depends on|provides|"
                           r"is required by|contains|triggers|replaces|license|size):$")
_SIZE_RE = re.compile(r"^(?P<v>\d{1,15}(?:\.\d{1,9})?) (?P<u>B|KiB|MiB|GiB|TiB)$")


def parse_apk_info_sizes(text: str, section: str = "apk_info") -> dict[str, int]:
    """``apk info -s NAME...`` (also ``-a``/``-d -s -w``): ``{name-version: installed bytes}``.

    Blocks are ``<pkg> installed size:`` followed by ``<n> <unit>``; other blocks are skipped.
    ``apk info -s`` without names prints bare names (no sizes): the result is then empty.
    """
    out: dict[str, int] = {}
    pending: tuple[int, str] | None = None
    for no, raw in enumerate(text.split("\n"), start=1):
        line = strip_ansi(raw).rstrip("\r").strip()
        if pending is not None:
            if not line:
                continue
            m = _SIZE_RE.match(line)
            if not m:
                raise SectionError(section, no, line,
                                   f"expected '<number> <unit>' after '{pending[1]} installed size:'")
            out[pending[1]] = size_to_bytes(m["v"], m["u"], section, no, line)
            pending = None
            continue
        m = _INFO_HEAD_RE.match(line)
        if m and m["what"] == "installed size":
            pending = (no, m["pkg"])
    if pending is not None:
        raise SectionError(section, pending[0], pending[1], "'installed size:' without a size (truncated?)")
    return out


def parse_apk_world(text: str, section: str = "apk_world") -> list[str]:
    """``/etc/apk/world``: one dependency per line (or several per line, blank separated)."""
    out: list[str] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        for tok in raw.split():
            if not re.match(r"^[A-Za-z0-9_.+@:<>=~!-]+$", tok):
                raise SectionError(section, no, raw, f"not a package constraint: {tok!r}")
            out.append(tok)
    return out


@dataclass(frozen=True)
class CachedFile:
    name: str
    size: int


def parse_ls_sizes(text: str, section: str = "apk_cache", suffix: str = ".apk") -> list[CachedFile]:
    """``ls -ln DIR...`` (busybox or coreutils): the files ending in ``suffix`` with their byte sizes."""
    out: list[CachedFile] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.startswith("total ") or line.endswith(":"):
            continue
        fields = line.split()
        if len(fields) < 9 or not re.match(r"^[-dlcbps][-rwxsStT]{9}[.+@]?$", fields[0]):
            raise SectionError(section, no, line, "expected an 'ls -ln' line (mode links uid gid size date name)")
        if fields[0][0] != "-" or not fields[-1].endswith(suffix):
            continue
        size = whole_number(fields[4], section, no, line, "size column")
        out.append(CachedFile(fields[-1], size))
    return out
