"""Alpine apk formats: /lib/apk/db/installed, apk console output, ``apk info`` (names, sizes), ``apk list``,
``apk stats``, world, cache — as apk-tools 2.14 (Alpine <= 3.22) and apk-tools 3 (Alpine 3.23+) write them.

Pure functions; a malformed input raises :class:`labkit.measure.bundle.SectionError` naming the section
and the line. Real 2.14 samples: ``tests/fixtures/alpine-3.20.3/``; the apk 3 formats are taken from
apk-tools' source at tag v3.0.6 (file:line cited at each parser).
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass

from labkit.core.console import strip_ansi  # the one ANSI stripper
from labkit.measure.bundle import SectionError, whole_number

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


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
    #: p: names it provides, without their versions (``so:libc.musl-x86_64.so.1``, ``cmd:ldd``, ...):
    #: apk-tools v2.14.4 src/database.c apk_db_index_write / package.c apk_pkg_write_index_entry
    #: ('p:' + the blank-separated provides, each "name=version" or a bare name)
    provides: tuple[str, ...] = ()


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
        prov = tuple(t.split("=", 1)[0] for t in rec.get("p", "").split())
        out.append(ApkPackage(rec["P"], rec["V"], s, i, prov))
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
        if key in "PVSIp":
            rec[key] = line[2:]
    flush(len(text.split("\n")) + 1)
    return out


@dataclass(frozen=True)
class ApkConsole:
    """What ``apk add`` printed (stdout and stderr together, as on a console)."""

    installs: tuple[tuple[int, int, str, str], ...]  # (index, total, name, version) of what was put in
    executed: tuple[str, ...]  # "busybox-1.36.1-r29.post-install", ...
    ok_bytes: int | None  # closing line: "OK: 8 MiB in 15 packages" (2.14) / "OK: 8440 KiB ..." (3)
    ok_packages: int | None
    warnings: tuple[str, ...]  # every "WARNING:" / "ERROR:" line, verbatim
    #: every counted change: (index, total, action, name, version); action as apk prints it
    #: (Installing, Purging, Upgrading, Downgrading, Replacing, Reinstalling, Updating pinning, ...)
    changes: tuple[tuple[int, int, str, str, str], ...] = ()
    errors: int = 0  # "N errors;" (or "ERRORS;": -1) instead of "OK:" on the closing line
    ok_unit: str | None = None  # B, KiB, MiB, ...: 2.14 truncates to whole MiB, 3 keeps KiB / one decimal
    #: names apk could not select: "ERROR: unable to select packages:" then "  <name> (no such package):"
    missing: tuple[str, ...] = ()
    #: repositories apk could not use: (action, url, error) from "WARNING: opening <url>: <error>" lines
    repositories: tuple[tuple[str, str, str], ...] = ()
    missing_tags: tuple[str, ...] = ()  # "The repository tag for world dependency 'x@tag' does not exist"
    apk_version: int | None = None  # 3 when a format only apk-tools 3 writes was seen, 2 for 2.x-only ones


# apk-tools v2.14.4 src/commit.c:27-90 print_change(): "(%i/%i) %s %s%s (%s)" / "(%s -> %s)";
# v3.0.6 src/commit.c:67-117: "(%*i/%i)" (current number space-padded to the width of the total), same words.
_CHANGE_RE = re.compile(r"^\((?P<pad>\s*)(?P<i>\d{1,9})/(?P<n>\d{1,9})\) "
                        r"(?P<act>Installing|Purging|Reinstalling|\[APK unavailable, skipped\] Reinstalling|"
                        r"Updating pinning|Downgrading|Replacing|Upgrading) "
                        r"(?P<name>\S+?)(?P<tag>@\S+)? \((?P<ver>[^()\s]+)(?: -> (?P<new>[^()\s]+))?\)$")
# v3.0.6 src/commit.c:365: "(%*i/%i) Downloading name-ver" (its own counter, before the changes)
_DOWNLOAD_RE = re.compile(r"^\(\s*\d{1,9}/\d{1,9}\) Downloading \S+$")
# closing line, 2.14 src/commit.c:376-394 / 3.0.6 src/commit.c:511-543: "OK:" | "%d error%s;" | "ERRORS;",
# then "<size> in <n> packages" (verbosity 1) or "<n> packages, <d> dirs, <f> files, <size>" (-v).
_SIZE_PAT = r"\d{1,15}(?:\.\d{1,9})?"
_OK_RE = re.compile(rf"^(?P<st>OK:|(?P<e>\d{{1,9}}) errors?;|ERRORS;) "
                    rf"(?:(?P<v>{_SIZE_PAT}) (?P<u>B|KiB|MiB|GiB|TiB) in (?P<n>\d{{1,9}}) packages"
                    rf"|(?P<n2>\d{{1,9}}) packages, \d{{1,12}} dirs, \d{{1,12}} files, (?P<v2>{_SIZE_PAT}) "
                    r"(?P<u2>B|KiB|MiB|GiB|TiB))$")
# 2.14 src/package.c:1049 "Executing %s"; 3.0.6 src/package.c:795 "%sExecuting " PKG_VER_FMT ".%s", indented
# by two spaces inside the install loop (indent_level = 1, src/commit.c:480)
_EXEC_RE = re.compile(r"^(?P<ind>\s*)Executing (?P<s>\S+)$")
_PROGRESS_RE = re.compile(r"^\s*\d{1,3}%[\s\u2588#=]*$")
_NOTE_RE = re.compile(r"^\[[^\]]*\]$")  # 3.0.6 print.c apk_out_progress_note: ESC 7 "[%s]" ESC 8 ESC [0K
# "  <name> (no such package):" under "ERROR: unable to select packages:" (2.14 commit.c:542, 3.0.6 :775)
_NO_SUCH_RE = re.compile(r"^\s+(?P<name>\S+) \(no such package\):$")
# 2.14 src/database.c:2339-2340 / 3.0.6 :1659-1660 apk_warning("%s " URL ": %s", error_action, url, error)
_REPO_RE = re.compile(r"^WARNING: (?P<act>opening from cache|updating and opening|constructing url|opening|fetching|"
                      r"updating) (?P<url>\S+): (?P<err>.+)$")
_TAG_RE = re.compile(r"^WARNING: The repository tag for world dependency '(?P<dep>[^']+)' does not exist$")


def _console_pieces(text: str) -> list[tuple[int, str]]:
    """Lines, with each progress redraw (ESC 7 ... ESC 8 ESC [0K, no newline) cut off the line it shares."""
    out: list[tuple[int, str]] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        for piece in re.split(r"\x1b\[0K", raw.rstrip("\r")):
            line = strip_ansi(piece).rstrip()
            if line.strip() and not _PROGRESS_RE.match(line) and not _NOTE_RE.match(line.strip()):
                out.append((no, line))
    return out


def parse_apk_console(text: str, section: str = "apk_console") -> ApkConsole:
    """Console output of ``apk add --progress`` (ANSI progress bars stripped), apk-tools 2.14 or 3.x."""
    changes: list[tuple[int, int, str, str, str]] = []
    executed: list[str] = []
    warnings: list[str] = []
    missing: list[str] = []
    repos: list[tuple[str, str, str]] = []
    tags: list[str] = []
    ok_bytes: int | None = None
    ok_n: int | None = None
    ok_unit: str | None = None
    errors = 0
    version: int | None = None
    selecting = False
    for no, line in _console_pieces(text):
        body = line.strip()
        m = _CHANGE_RE.match(body)
        if m:
            if m["pad"]:
                version = 3  # "( 1/15)": only apk-tools 3 pads the counter
            name, ver = m["name"], m["new"] or m["ver"]
            changes.append((int(m["i"]), int(m["n"]), m["act"], name, ver))
            continue
        if _DOWNLOAD_RE.match(body):
            version = 3
            continue
        m = _OK_RE.match(body)
        if m:
            value, unit = (m["v"], m["u"]) if m["v"] is not None else (m["v2"], m["u2"])
            ok_bytes = size_to_bytes(value, unit, section, no, body)
            ok_n = int(m["n"] or m["n2"])
            ok_unit = unit
            errors = 0 if m["st"] == "OK:" else (int(m["e"]) if m["e"] else -1)
            if unit != "MiB" or "." in value or m["st"] == "ERRORS;":
                version = 3  # 2.14 always prints whole MiB
            continue
        m = _EXEC_RE.match(line)
        if m:
            executed.append(m["s"])
            if m["ind"]:
                version = 3
            continue
        if body.startswith(("WARNING:", "ERROR:")):
            warnings.append(body)
            selecting = body == "ERROR: unable to select packages:"
            r = _REPO_RE.match(body)
            if r:
                repos.append((r["act"], r["url"], r["err"]))
            t = _TAG_RE.match(body)
            if t:
                tags.append(t["dep"])
            continue
        m = _NO_SUCH_RE.match(line)
        if m and selecting:
            missing.append(m["name"])
            continue
        if re.match(r"^\(\s*\d+/\d+\)", body):
            raise SectionError(section, no, body, "an '(i/n)' line that is not '<action> <name> (<version>)'")
    for k, (i, n, _act, name, _v) in enumerate(changes):
        if i != k + 1 or n != changes[0][1]:
            raise SectionError(section, None, name, f"change counter out of order: ({i}/{n}) at position {k + 1}")
    installs = tuple((i, n, name, v) for i, n, act, name, v in changes if act != "Purging")
    return ApkConsole(installs, tuple(executed), ok_bytes, ok_n, tuple(warnings), tuple(changes), errors, ok_unit,
                      tuple(dict.fromkeys(missing)), tuple(repos), tuple(tags), version)


_INFO_HEAD_RE = re.compile(r"^(?P<pkg>\S+) (?P<what>installed size|description|webpage|depends on|provides|"
                           r"is required by|contains|triggers|has auto-install rule|affects auto-installation of|"
                           r"replaces|license|size):$")
_SIZE_RE = re.compile(r"^(?P<v>\d{1,15}(?:\.\d{1,9})?) (?P<u>B|KiB|MiB|GiB|TiB)$")
# verbosity > 1: one line per field, "<name>: <value>" (2.14 src/app_info.c:150-151, 184-186; 3.0.6 :117-134)
_INFO_VV_SIZE_RE = re.compile(r"^(?P<pkg>\S+): (?P<v>\d{1,15}(?:\.\d{1,9})?) (?P<u>B|KiB|MiB|GiB|TiB)$")


def parse_apk_info_sizes(text: str, section: str = "apk_info") -> dict[str, int]:
    """``apk info -s NAME...`` (also ``-a``/``-d -s -w``): ``{name-version: installed bytes}``.

    Blocks are ``<pkg> installed size:`` followed by ``<n> <unit>`` (2.14 src/app_info.c:183-189; 3.0.6
    src/app_info.c:122-130, ``apk_fmt_human_size(..., -1)``: whole numbers in both); other blocks are skipped.
    With ``-vv`` each size is one line ``<name>: <n> <unit>`` (keyed by the name alone).
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
            continue
        v = _INFO_VV_SIZE_RE.match(line)
        if v and not line.startswith(("WARNING:", "ERROR:")):
            out[v["pkg"]] = size_to_bytes(v["v"], v["u"], section, no, line)
    if pending is not None:
        raise SectionError(section, pending[0], pending[1], "'installed size:' without a size (truncated?)")
    return out


@dataclass(frozen=True)
class ApkInfoName:
    name: str
    version: str | None  # with -v (name-version) and -vv
    description: str | None  # with -vv ("name-version - description")


_NAME_VER_RE = re.compile(r"^(?P<name>.+?)-(?P<ver>\d[^-\s]*-r\d+)$")


def split_name_version(text: str) -> tuple[str, str] | None:
    """``busybox-1.36.1-r29`` → (``busybox``, ``1.36.1-r29``): the version starts at the last '-' followed by
    a digit that leaves ``-r<n>`` at the end (apk's PKG_VER_FMT is ``name-version``)."""
    m = _NAME_VER_RE.match(text)
    return (m["name"], m["ver"]) if m else None


def parse_apk_info_names(text: str, section: str = "apk_info_names") -> list[ApkInfoName]:
    """``apk info`` without package names (also ``-v``, ``-vv``, ``-e NAME``): one installed package per line,
    ``name``, ``name-version`` or ``name-version - description`` (2.14 src/app_info.c:41-56 verbose_print_pkg;
    3.0.6 src/app_info.c:27-35 info_print_pkg_oneline). WARNING lines (repositories) are skipped."""
    out: list[ApkInfoName] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        line = strip_ansi(raw).rstrip("\r")
        if not line.strip() or line.startswith(("WARNING:", "ERROR:")):
            continue
        head, sep, desc = line.partition(" - ")
        if " " in head or line != line.strip():
            raise SectionError(section, no, line, "expected 'name', 'name-version' or 'name-version - description'")
        nv = split_name_version(head)
        if sep:
            if nv is None:
                raise SectionError(section, no, line, "'- description' after something that is not name-version")
            out.append(ApkInfoName(nv[0], nv[1], desc))
        elif nv is not None:
            out.append(ApkInfoName(nv[0], nv[1], None))
        else:
            out.append(ApkInfoName(head, None, None))
    return out


@dataclass(frozen=True)
class ApkListEntry:
    name: str
    version: str
    arch: str
    origin: str
    license: str
    status: str  # "installed", "upgradable from: <name-ver>" or ""


# 2.14 src/app_list.c:81-114 / 3.0.6 src/app_list.c:54-92 print_package():
#   PKG_VER_FMT " " arch " " "{origin}" " (" license ")" [" [installed]" | " [upgradable from: name-ver]"]
# The license may hold spaces and parentheses: anchor on the status, then on the last ')'.
_LIST_RE = re.compile(r"^(?:<(?P<prov>[^>]+)> )?(?P<nv>\S+) (?P<arch>\S+) \{(?P<origin>[^}]*)\} \((?P<lic>.*)\)"
                      r"(?: \[(?P<st>installed|upgradable from: \S+)\])?$")
_MANIFEST_RE = re.compile(r"^(?P<name>\S+) (?P<ver>\d\S*)$")  # 3.0.6 app_list.c:58-60 "--manifest"


def parse_apk_list(text: str, section: str = "apk_list") -> list[ApkListEntry]:
    """``apk list`` / ``apk list -I`` (``--installed``), apk-tools 2.14 or 3; ``-v`` adds an indented
    description line (skipped); v3's ``--manifest`` (``name version``) gives entries without arch/origin."""
    out: list[ApkListEntry] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        line = strip_ansi(raw).rstrip("\r")
        if not line.strip() or line.startswith(("WARNING:", "ERROR:")) or line.startswith("  "):
            continue
        m = _LIST_RE.match(line)
        if m:
            nv = split_name_version(m["nv"])
            if nv is None:
                raise SectionError(section, no, line, f"{m['nv']!r} is not name-version")
            out.append(ApkListEntry(nv[0], nv[1], m["arch"], m["origin"], m["lic"], m["st"] or ""))
            continue
        mm = _MANIFEST_RE.match(line)
        if mm:
            out.append(ApkListEntry(mm["name"], mm["ver"], "", "", "", "installed"))
            continue
        raise SectionError(section, no, line, "expected an 'apk list' line: name-version arch {origin} (license) "
                                              "[installed]")
    return out


@dataclass(frozen=True)
class ApkStats:
    installed_packages: int
    installed_dirs: int
    installed_files: int
    installed_bytes: int  # the sum of I: (what the OK line divides)
    installed_triggers: int
    available_names: int
    available_packages: int
    atoms: int


_STATS_KEYS = {("installed", "packages"): "installed_packages", ("installed", "dirs"): "installed_dirs",
               ("installed", "files"): "installed_files", ("installed", "bytes"): "installed_bytes",
               ("installed", "triggers"): "installed_triggers", ("available", "names"): "available_names",
               ("available", "packages"): "available_packages", ("atoms", "num"): "atoms"}


def parse_apk_stats(text: str, section: str = "apk_stats") -> ApkStats:
    """``apk stats`` (2.14 src/app_stats.c:25-50; 3.0.6 src/app_stats.c:25-51 prints the same text through
    apk_out, which adds one more newline at the end)."""
    values: dict[str, int] = {}
    group = None
    for no, raw in enumerate(text.split("\n"), start=1):
        line = strip_ansi(raw).rstrip("\r")
        if not line.strip() or line.startswith(("WARNING:", "ERROR:")):
            continue
        m = re.match(r"^(installed|available|atoms):$", line)
        if m:
            group = m[1]
            continue
        kv = re.match(r"^  (\w+): (\d+)$", line)
        if not kv or group is None or (group, kv[1]) not in _STATS_KEYS:
            raise SectionError(section, no, line, "expected 'apk stats' text (installed:/available:/atoms: blocks)")
        values[_STATS_KEYS[(group, kv[1])]] = int(kv[2])
    missing = [k for k in _STATS_KEYS.values() if k not in values]
    if missing:
        raise SectionError(section, None, None, f"'apk stats' without {', '.join(missing)} (truncated?)")
    return ApkStats(**values)


_WORLD_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.+@:<>=~!-]+$")


def parse_apk_world(text: str, section: str = "apk_world") -> list[str]:
    """``/etc/apk/world``: one dependency per line (or several per line, blank separated)."""
    out: list[str] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        for tok in raw.split():
            if not _WORLD_TOKEN_RE.match(tok):
                raise SectionError(section, no, raw, f"not a package constraint: {tok!r}")
            out.append(tok)
    return out


_WORLD_NAME_RE = re.compile(r"^(?P<name>[^<>=~@!]+)")


def world_missing(world: list[str], installed: list[ApkPackage]) -> list[str]:
    """The world's dependencies that no installed package satisfies by name or by what it provides.

    A diskless boot runs ``apk add --initramfs-diskless-boot``, which implies ``APK_FORCE_BROKEN_WORLD``
    (apk-tools v2.14.4 src/apk.c l.277-282, v3.0.6 l.247-251): a world entry the media cannot satisfy is
    dropped without an error, so only this comparison shows it. Conflicts (``!name``) are not wanted; the
    version and the repository tag (``name>=1.2``, ``name@edge``) are left to apk: a name present counts."""
    return world_missing_names(world, {p.name for p in installed} | {n for p in installed for n in p.provides})


def world_missing_names(world: list[str], have: Container[str]) -> list[str]:
    """:func:`world_missing` against the set of names the installed packages have or provide (no
    :class:`ApkPackage` per name: the metrics read it for every bundle)."""
    out = []
    for dep in world:
        if dep.startswith("!"):
            continue
        m = _WORLD_NAME_RE.match(dep)
        if m and m.group("name") not in have:
            out.append(m.group("name"))
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
