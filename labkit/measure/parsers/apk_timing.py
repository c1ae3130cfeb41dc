"""Per-package timing of Alpine's in-RAM package install, and the guest's own decompression rate.

Two raw sources, both read by pure functions:

- **Per-package lines**, as ``apk add`` prints them before it unpacks each package (apk-tools v2.14.4
  ``src/commit.c`` ``print_change()``: ``"(%i/%i)"`` :38, ``"%s %s %s" BLOB_FMT " (" BLOB_FMT ")"`` :75-79,
  ``... " -> " ...`` :81-86; apk-tools v3.0.6 ``src/commit.c:67-69`` pads the index to the width of the total:
  ``( 1/15)``). On the real console they come after apk's progress bar on the same line
  (``ESC 7  0% ### ESC 8 ESC [0K(2/15) Installing musl (1.2.5-r0)``); the rehearsal initramfs writes the
  same text on the console and to the kernel log. Each line is timed — the host's serial time stamp, or the
  dmesg time — and a package's time is the gap to the next package's line; the last one ends at the first
  of: a trigger (``Executing <pkg>.trigger``, run after every package), apk's closing line
  (``OK: 8 MiB in 15 packages`` / ``OK: 8440 KiB in 15 packages`` / ``1 error; ...``), or the initramfs's
  ``Installing packages to root filesystem: ok.`` / ``failed.``.
- **The ``apk_gunzip`` bundle section** the probe writes after everything else: ``gzip -dc`` over the
  installed packages' .apk files, timed by the guest (``/proc/uptime``), with the files' sizes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from labkit.core.console import ANSI_RE
from labkit.measure.bundle import SectionError

#: One package change (apk 2.14 and apk 3): the index may be space-padded; the name may carry a @tag.
STEP_RE = re.compile(
    r"\((?P<i>\s*\d+)/(?P<n>\d+)\) (?P<action>Installing|Upgrading|Downgrading|Replacing|Reinstalling|Purging"
    r"|\[APK unavailable, skipped\] Reinstalling|Updating pinning) (?P<name>[^\s@]+)(?P<tag>@\S+)? "
    r"\((?P<ver>[^()\s]+)(?: -> (?P<new>[^()\s]+))?\)\s*$"
)
#: What ends the last package: a trigger (after the loop), apk's closing line, the initramfs's eend line.
#: (No left anchor: on the real console the 100 % progress bar runs straight into the next message.)
END_RE = re.compile(
    r"Executing \S+\.trigger\s*$"
    r"|(?:OK:|\d+ errors?;|ERRORS;) \d+(?:\.\d+)? (?:B|KiB|MiB|GiB|TiB) in \d+ packages"
    r"|(?:OK:|\d+ errors?;|ERRORS;) \d+ packages, \d+ dirs, \d+ files"
    r"|Installing packages to root filesystem: (?:ok|failed)\."
)


@dataclass(frozen=True)
class PackageStep:
    """One package change with its start (its line's time) and end (the next line's time)."""

    index: int
    total: int
    action: str
    name: str
    version: str  # the new version for upgrades
    start: float
    end: float  # NaN when the log ends before the next marker

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _text(raw: str) -> str:
    # progress redraws end in ESC [0K: the message follows on the same line
    return ANSI_RE.sub("", raw.replace("\r", "")).rstrip()


def package_steps(lines: Iterable[tuple[float, str]], *, section: str = "apk_console") -> list[PackageStep]:
    """Per-package steps of the first install run in ``lines`` (``(time, text)`` pairs: serial lines or
    parsed dmesg). A run starts at ``(1/n)``; a counter out of order raises :class:`SectionError`. The first
    run, because a serial log later shows the bundle's copy of the kernel log (the same lines again)."""
    runs: list[list[PackageStep]] = []
    current: list[PackageStep] = []
    open_run = False
    for no, (t, raw) in enumerate(lines, start=1):
        text = _text(raw)
        if not text:
            continue
        m = STEP_RE.search(text)
        if m is not None:
            i, n = int(m["i"]), int(m["n"])
            if i == 1:
                if current:
                    runs.append(_close(current, float("nan")))
                current = []
            elif not current or i != current[-1].index + 1 or n != current[-1].total:
                prev = f"({current[-1].index}/{current[-1].total})" if current else "nothing"
                raise SectionError(section, no, text, f"package counter ({i}/{n}) does not follow {prev}",
                                   "pass the log of one apk run, lines in time order")
            if current:
                current[-1] = _ended(current[-1], t)
            version = m["new"] or m["ver"]
            current.append(PackageStep(i, n, m["action"], m["name"], version, t, float("nan")))
            open_run = True
            continue
        if open_run and END_RE.search(text):
            runs.append(_close(current, t))
            current, open_run = [], False
    if current:
        runs.append(_close(current, float("nan")))
    return runs[0] if runs else []


def _ended(step: PackageStep, t: float) -> PackageStep:
    return PackageStep(step.index, step.total, step.action, step.name, step.version, step.start, t)


def _close(steps: list[PackageStep], t: float) -> list[PackageStep]:
    if steps and steps[-1].end != steps[-1].end:
        steps[-1] = _ended(steps[-1], t)
    return steps


# -- the guest's decompression rate -------------------------------------------------------------------
@dataclass(frozen=True)
class GuestGunzip:
    """``gzip -dc`` over the installed packages' .apk files, timed inside the guest."""

    files: int
    compressed_bytes: int
    uncompressed_bytes: int  # sum of the gzip trailers (ISIZE of each file's last member)
    seconds: float  # /proc/uptime after minus before (0.01 s resolution)
    status: int  # gzip's exit status

    @property
    def mib_s(self) -> float:
        """Uncompressed MiB per second (NaN when the time is below the clock's resolution)."""
        return self.uncompressed_bytes / 1024**2 / self.seconds if self.seconds > 0 else float("nan")


def parse_apk_gunzip(text: str, section: str = "apk_gunzip") -> GuestGunzip:
    """The probe's ``apk_gunzip`` section: ``start <uptime>``, ``status <rc>``, ``end <uptime>``, ``files`` +
    ``ls -ln`` lines, ``isize`` + ``od -An -tu4 -v`` words (one per file, in the same order)."""
    values: dict[str, float] = {}
    files: list[int] = []
    isizes: list[int] = []
    part = ""
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        head = line.split()
        if head[0] in ("start", "end", "status") and len(head) >= 2 and part == "":
            try:
                values[head[0]] = float(head[1])
            except ValueError:
                raise SectionError(section, no, line, f"'{head[0]}' must be followed by a number") from None
        elif line in ("files", "isize"):
            part = line
        elif part == "files":
            fields = line.split()
            if len(fields) < 9 or not fields[0].startswith("-"):
                raise SectionError(section, no, line, "expected an 'ls -ln' line of a regular file")
            try:
                files.append(int(fields[4]))
            except ValueError:
                raise SectionError(section, no, line, "the size column is not a number") from None
        elif part == "isize":
            try:
                isizes += [int(x) for x in head]
            except ValueError:
                raise SectionError(section, no, line, "expected unsigned numbers (od -An -tu4)") from None
        else:
            raise SectionError(section, no, line, "unexpected line (expected start/status/end, files, isize)")
    missing = [k for k in ("start", "end", "status") if k not in values]
    if missing:
        raise SectionError(section, None, None, f"no {', '.join(missing)} line", "the probe writes all three")
    if not files or len(isizes) != len(files):
        raise SectionError(section, None, None,
                           f"{len(files)} files but {len(isizes)} gzip trailer sizes: the two lists must match",
                           "the probe lists every file, then one trailer word per file")
    return GuestGunzip(len(files), sum(files), sum(isizes), round(values["end"] - values["start"], 6),
                       int(values["status"]))
