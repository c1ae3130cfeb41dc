"""The probe bundle: find it in a serial log, check it, and parse its raw sections.

The format is fixed in ``docs/contracts.md`` ("The probe bundle")::

    @@LABKIT-BUNDLE-BEGIN v=1 os=<os-id> guest=<rehearsal|real>@@
    @@SECTION <name>@@
    <raw lines>
    ...
    @@LABKIT-BUNDLE-END sections=<N> md5=<md5 hex of the body>@@

The body is every line strictly between BEGIN and END, each followed by ``\\n``. Raw text in,
parsing on the host: every section parser here is a pure function that raises
:class:`SectionError` naming the section and the line when the input is malformed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from labkit.core.console import SerialLine  # the one SerialLine(t, text) (contracts.md, "Serial log")
from labkit.core.errors import LabkitError
from labkit.core.text import excerpt

BUNDLE_VERSION = 1
#: os ids a bundle may carry, and the guest kind each one implies.
KNOWN_OS: dict[str, str] = {
    "alpine-rehearsal": "rehearsal",
    "nixos-rehearsal": "rehearsal",
    "alpine": "real",
    "nixos": "real",
}
GUEST_KINDS = ("rehearsal", "real")

_BEGIN_RE = re.compile(r"@@LABKIT-BUNDLE-BEGIN v=(?P<v>\S+) os=(?P<os>\S+) guest=(?P<guest>\S+)@@")
_END_RE = re.compile(r"@@LABKIT-BUNDLE-END sections=(?P<n>\S+) md5=(?P<md5>\S+)@@")
_SECTION_RE = re.compile(r"^@@SECTION (?P<name>[A-Za-z0-9_.-]+)@@$")
_MARKER_PREFIX = "@@LABKIT-BUNDLE-"


# -- errors ---------------------------------------------------------------------------------------
class BundleError(LabkitError):
    """A bundle is missing, truncated, corrupt or malformed."""


class SectionError(BundleError):
    """A section's raw text does not have the expected shape."""

    def __init__(self, section: str, line_no: int | None, line: str | None, problem: str, fix: str | None = None):
        self.section = section
        self.line_no = line_no
        self.line = line
        where = f"section '{section}'" + (f", line {line_no}" if line_no is not None else "")
        shown = f": {excerpt(line)}" if line is not None else ""  # a short piece: a line may be megabytes
        super().__init__(f"{where}: {problem}{shown}", fix)


# -- serial lines ---------------------------------------------------------------------------------
class TimedLine(Protocol):
    """Anything with ``.t`` (host seconds since QEMU start) and ``.text`` (one serial line)."""

    @property
    def t(self) -> float: ...

    @property
    def text(self) -> str: ...


# -- bundles --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bundle:
    os: str
    guest: str
    sections: dict[str, str]
    t_begin: float | None  # host time of the BEGIN line (None when read from a file)
    complete: bool  # the END line was seen
    md5_ok: bool  # the body's md5 matches the END line
    version: int = BUNDLE_VERSION
    problems: tuple[str, ...] = field(default=())  # why complete/md5_ok is False (strict=False only)

    @property
    def ok(self) -> bool:
        return self.complete and self.md5_ok and not self.problems

    def section(self, name: str) -> str:
        """The raw text of a section, or a :class:`BundleError` naming what is missing."""
        try:
            return self.sections[name]
        except KeyError:
            raise BundleError(
                f"bundle of {self.os} has no section '{name}' (it has: {', '.join(self.sections) or 'none'})",
                "update the probe in the guest so it writes this section",
            ) from None


def body_md5(body_lines: Iterable[str], encoding: str = "latin-1") -> str:
    """md5 of the body as the probe computes it: each line followed by ``\\n``.

    Serial text is decoded latin-1 (one char per byte), so ``latin-1`` gives back the guest's
    bytes; a line that cannot be latin-1 (text read as UTF-8 from a file) is hashed as UTF-8.
    """
    h = hashlib.md5()
    for line in body_lines:
        try:
            h.update(line.encode(encoding))
        except UnicodeEncodeError:
            h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def format_bundle(os_id: str, guest: str, sections: Mapping[str, str]) -> str:
    """Write a bundle exactly as the probe does (for tests and for the /data copy's reference)."""
    body: list[str] = []
    for name, raw in sections.items():
        body.append(f"@@SECTION {name}@@")
        body.extend(raw.rstrip("\n").split("\n") if raw else [])
    lines = [f"@@LABKIT-BUNDLE-BEGIN v={BUNDLE_VERSION} os={os_id} guest={guest}@@", *body]
    lines.append(f"@@LABKIT-BUNDLE-END sections={len(sections)} md5={body_md5(body)}@@")
    return "\n".join(lines) + "\n"


def _check_header(os_id: str, guest: str, version: str, where: str) -> int:
    if version != str(BUNDLE_VERSION):
        raise BundleError(
            f"{where}: bundle format v={version} is not supported (labkit reads v={BUNDLE_VERSION})",
            "rebuild the guest's probe with this labkit version",
        )
    if os_id not in KNOWN_OS:
        raise BundleError(
            f"{where}: unknown os id '{os_id}' in bundle BEGIN line (known: {', '.join(KNOWN_OS)})",
            "the probe must write one of the os ids listed in docs/contracts.md",
        )
    if guest not in GUEST_KINDS:
        raise BundleError(
            f"{where}: unknown guest kind '{guest}' in bundle BEGIN line (known: rehearsal, real)",
            "the probe must write guest=rehearsal or guest=real",
        )
    if KNOWN_OS[os_id] != guest:
        raise BundleError(
            f"{where}: os id '{os_id}' is a {KNOWN_OS[os_id]} system but the bundle says guest={guest}",
            "fix the probe's BEGIN line",
        )
    return BUNDLE_VERSION


def _split_sections(body: Sequence[str], where: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for no, line in enumerate(body, start=1):
        m = _SECTION_RE.match(line)
        if m:
            name = m.group("name")
            if name in sections:
                raise BundleError(f"{where}: section '{name}' appears twice (body line {no})")
            current = sections[name] = []
        elif current is None:
            raise BundleError(
                f"{where}: body line {no} comes before the first @@SECTION@@ marker: {line[:80]!r}",
                "the probe must start every section with '@@SECTION <name>@@'",
            )
        elif line.startswith(_MARKER_PREFIX):
            raise BundleError(f"{where}: stray bundle marker inside the body (body line {no}): {line[:80]!r}")
        else:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _finish(
    header: re.Match[str],
    body: list[str],
    end: re.Match[str] | None,
    t_begin: float | None,
    where: str,
    strict: bool,
) -> Bundle:
    os_id, guest = header.group("os"), header.group("guest")
    version = _check_header(os_id, guest, header.group("v"), where)
    problems: list[str] = []
    md5_ok = False
    if end is None:
        problems.append(
            f"{where}: bundle of {os_id} is truncated: no END line after {len(body)} body lines"
            + (f" (last line: {body[-1][:60]!r})" if body else "")
        )
    else:
        got = body_md5(body)
        want = end.group("md5").lower()
        md5_ok = got == want or body_md5(body, "utf-8") == want
        if not md5_ok:
            problems.append(
                f"{where}: bundle of {os_id} is corrupt: md5 of the body is {got}, END line says {end.group('md5')}"
            )
    try:
        sections = _split_sections(body, where)
    except BundleError as exc:
        if strict or (end is not None and md5_ok):
            raise
        problems.append(exc.problem)
        sections = {}
    if end is not None and md5_ok and end.group("n") != str(len(sections)):
        problems.append(f"{where}: END line says sections={end.group('n')} but the body has {len(sections)}")
    if problems and strict:
        raise BundleError(
            "; ".join(problems),
            "the guest stopped or the serial line dropped bytes before the probe finished; boot it again "
            "(check the boot timeout and that nothing else writes to the serial console)",
        )
    return Bundle(
        os=os_id,
        guest=guest,
        sections=sections,
        t_begin=t_begin,
        complete=end is not None,
        md5_ok=md5_ok,
        version=version,
        problems=tuple(problems),
    )


def extract_bundles(lines: Sequence[TimedLine], *, strict: bool = True) -> list[Bundle]:
    """Every bundle in a serial log, in order; noise before, after and between is ignored.

    ``strict`` (default) raises :class:`BundleError` on a truncated or corrupt bundle; with
    ``strict=False`` such a bundle is returned with ``complete``/``md5_ok`` False and the reason
    in ``problems``.
    """
    bundles: list[Bundle] = []
    header: re.Match[str] | None = None
    t_begin: float | None = None
    body: list[str] = []
    begin_no = 0
    for no, line in enumerate(lines, start=1):
        text = line.text.rstrip("\r")
        b = _BEGIN_RE.search(text)
        if b is not None:
            if header is not None:  # a new BEGIN before the previous END: the previous is truncated
                bundles.append(_finish(header, body, None, t_begin, f"serial line {begin_no}", strict))
            header, t_begin, body, begin_no = b, line.t, [], no
            continue
        if header is None:
            continue
        e = _END_RE.search(text)
        if e is not None:
            bundles.append(_finish(header, body, e, t_begin, f"serial line {begin_no}", strict))
            header, body = None, []
            continue
        body.append(text)
    if header is not None:
        bundles.append(_finish(header, body, None, t_begin, f"serial line {begin_no}", strict))
    return bundles


_BEGIN_MARK = "@@LABKIT-BUNDLE-BEGIN "
_END_MARK = "@@LABKIT-BUNDLE-END "
_SECTION_MARK = "@@SECTION "
_NL_SECTION_MARK = "\n" + _SECTION_MARK
#: _SECTION_RE without anchors, for fullmatch(text, pos, endpos) ('^' only matches at a string's real start)
_SECTION_LINE_RE = re.compile(r"@@SECTION (?P<name>[A-Za-z0-9_.-]+)@@")
#: Text hashed per call in the fast path (md5 over slices: no second copy of a large body in memory).
_HASH_CHUNK = 1 << 20


def _fast_bundle(text: str) -> Bundle | None:
    """One well-formed bundle read straight from ``text`` — slices of it, one md5 pass, no per-line objects —
    or None when anything is irregular (no or several bundles, ``\r``, a body md5 that does not match at
    first sight, text that is not latin-1): the line-by-line reader then gives the exact error."""
    b0 = text.find(_BEGIN_MARK)
    if b0 < 0 or (b0 > 0 and text[b0 - 1] != "\n"):
        return None
    head_end = text.find("\n", b0)
    if head_end < 0:
        return None
    header = _BEGIN_RE.fullmatch(text, b0, head_end)
    e0 = text.find(_MARKER_PREFIX, head_end)  # the next bundle marker must be this bundle's END line
    if header is None or e0 < 0 or not text.startswith(_END_MARK, e0) or text[e0 - 1] != "\n":
        return None
    e_end = text.find("\n", e0)
    e_end = len(text) if e_end < 0 else e_end
    end = _END_RE.fullmatch(text, e0, e_end)
    body_start, body_end = head_end + 1, e0  # the body: every line between, each with its "\n"
    if end is None or text.find(_MARKER_PREFIX, e_end) >= 0 or text.find("\r", body_start, body_end) >= 0:
        return None
    h = hashlib.md5()
    try:
        for i in range(body_start, body_end, _HASH_CHUNK):
            h.update(text[i:min(i + _HASH_CHUNK, body_end)].encode("latin-1"))
    except UnicodeEncodeError:
        return None
    if h.hexdigest() != end.group("md5").lower():
        return None
    sections: dict[str, str] = {}
    pos = body_start
    if pos < body_end and not text.startswith(_SECTION_MARK, pos):
        return None
    while pos < body_end:
        name_end = text.find("\n", pos)
        m = _SECTION_LINE_RE.fullmatch(text, pos, name_end)
        name = m.group("name") if m is not None else None
        if name is None or name in sections:
            return None
        nxt = text.find(_NL_SECTION_MARK, name_end, body_end)
        stop = body_end if nxt < 0 else nxt + 1
        sections[name] = text[name_end + 1:stop - 1] if stop - 1 > name_end else ""
        pos = stop
    if end.group("n") != str(len(sections)):
        return None
    try:
        version = _check_header(header.group("os"), header.group("guest"), header.group("v"), "bundle text")
    except BundleError:
        return None  # the line reader raises the same error, naming the line as it always has
    return Bundle(header.group("os"), header.group("guest"), sections, None, True, True, version)


def parse_bundle_text(text: str, *, strict: bool = True) -> Bundle:
    """Parse exactly one bundle from text (e.g. the copy the probe saves on /data).

    A well-formed bundle is read in one pass over the text (:func:`_fast_bundle`: its sections are slices,
    memory stays about twice the text); anything else goes through the line reader, which names the problem."""
    fast = _fast_bundle(text)
    if fast is not None:
        return fast
    lines = [SerialLine(float("nan"), s) for s in text.split("\n")]
    if lines and lines[-1].text == "":
        lines.pop()
    found = extract_bundles(lines, strict=strict)
    if not found:
        raise BundleError(
            "no @@LABKIT-BUNDLE-BEGIN ...@@ line found in the text",
            "pass the probe's output (serial log or the bundle file it writes on /data)",
        )
    if len(found) > 1:
        raise BundleError(f"expected one bundle, found {len(found)}", "use extract_bundles() for a whole log")
    b = found[0]
    return Bundle(b.os, b.guest, b.sections, None, b.complete, b.md5_ok, b.version, b.problems)


# -- section parsers --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Uptime:
    uptime_s: float
    idle_s: float


_WHOLE_RE = re.compile(r"[0-9]{1,18}")


def whole_number(text: str, section: str, line_no: int | None = None, line: str | None = None,
                 what: str = "value") -> int:
    """A count or size as a guest prints it: 1 to 18 digits (no sign, exponent, nan or inf)."""
    t = text.strip()
    if not _WHOLE_RE.fullmatch(t):
        raise SectionError(section, line_no, line if line is not None else text,
                           f"the {what} {excerpt(t, 30)} is not a whole number of at most 18 digits")
    return int(t)


def _content_lines(text: str) -> list[tuple[int, str]]:
    return [(no, ln.rstrip("\r")) for no, ln in enumerate(text.split("\n"), start=1) if ln.strip()]


#: seconds as the kernel prints them (no sign, no exponent, no nan/inf); at most 10 years of uptime
_SECONDS_RE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
MAX_SECONDS = 10 * 365 * 86400.0
#: /proc/uptime is two numbers of at most 22 characters each: a longer section is read line by line
_UPTIME_FAST_CHARS = 256


def parse_uptime(text: str) -> Uptime:
    """``/proc/uptime``: ``"12.34 5.67"`` (seconds up, seconds idle summed over CPUs)."""
    # the usual case in one step: a short text of two plain decimals on one line (the checks below, without
    # the list of lines; any other text takes the line-by-line path and gets its error)
    parts = text.split() if len(text) <= _UPTIME_FAST_CHARS else []
    if (len(parts) == 2 and _SECONDS_RE.fullmatch(parts[0]) and _SECONDS_RE.fullmatch(parts[1])
            and "\n" not in text.strip() and float(parts[0]) <= MAX_SECONDS):
        return Uptime(float(parts[0]), float(parts[1]))
    lines = _content_lines(text)
    if len(lines) != 1:
        raise SectionError("uptime", None, None, f"expected one line, found {len(lines)}")
    no, line = lines[0]
    parts = line.split()
    # /proc/uptime prints "%lu.%02lu %lu.%02lu" (fs/proc/uptime.c): plain decimals, never nan/inf/1e29
    if len(parts) != 2 or not all(_SECONDS_RE.fullmatch(x) for x in parts):
        raise SectionError("uptime", no, line, "expected '<uptime seconds> <idle seconds>' (plain decimals)")
    up, idle = float(parts[0]), float(parts[1])
    if up > MAX_SECONDS:
        raise SectionError("uptime", no, line, f"an uptime over {MAX_SECONDS:g} s is not plausible")
    return Uptime(up, idle)



_MEMINFO_RE = re.compile(r"^(?P<key>[A-Za-z0-9_()]+):\s+(?P<val>\d{1,19})(?:\s+(?P<unit>kB))?\s*$")


_MEMINFO_ALL = re.compile(r"^([A-Za-z0-9_()]+):[ \t]+(\d{1,19})(?:[ \t]+kB)?[ \t]*$", re.M)


def _line_count(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _meminfo_digits(text: str) -> dict[str, str] | None:
    """``{key: digits}`` when every line of ``text`` is well-formed and MemTotal is there (one regex pass),
    else None. The digits always convert: ``\\d`` and ``int()`` accept the same (Unicode) decimal digits."""
    found = _MEMINFO_ALL.findall(text)
    if found and len(found) == _line_count(text):  # every line well-formed
        d = dict(found)
        if "MemTotal" in d:
            return d
    return None


#: above this many characters meminfo_values reads the lines match by match, keeping only the keys it wants
_MEMINFO_STREAM_CHARS = 1 << 20


def _meminfo_streamed(text: str, keys: Iterable[str]) -> dict[str, str] | None:
    """:func:`_meminfo_digits` restricted to ``keys``, match by match (no list of every line)."""
    wanted = set(keys)
    d: dict[str, str] = {}
    count = 0
    total = False
    for m in _MEMINFO_ALL.finditer(text):
        count += 1
        key = m.group(1)
        total = total or key == "MemTotal"
        if key in wanted:
            d[key] = m.group(2)
    return d if count and count == _line_count(text) and total else None


def meminfo_values(text: str, keys: Iterable[str]) -> dict[str, int]:
    """The values of ``keys`` that :func:`parse_meminfo` finds (the same errors), converting only those."""
    keys = tuple(keys)
    d = _meminfo_streamed(text, keys) if len(text) > _MEMINFO_STREAM_CHARS else _meminfo_digits(text)
    if d is None:
        full = parse_meminfo(text)
        return {k: full[k] for k in keys if k in full}
    return {k: int(d[k]) for k in keys if k in d}


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` → ``{key: value}``; values with a ``kB`` unit are in KiB, others are counts."""
    d = _meminfo_digits(text)
    if d is not None:
        return {key: int(val) for key, val in d.items()}
    out: dict[str, int] = {}
    for no, line in _content_lines(text):
        m = _MEMINFO_RE.match(line)
        if m is None:
            raise SectionError("meminfo", no, line, "expected '<Key>:  <number> [kB]'")
        out[m.group("key")] = int(m.group("val"))
    if "MemTotal" not in out:
        raise SectionError("meminfo", None, None, "no MemTotal line")
    return out


_DMESG_RE = re.compile(r"^(?:<\d+>)?\[\s*(?P<t>\d{1,12}\.\d{1,9})\]\s?(?P<text>.*)$")


def parse_dmesg(text: str) -> list[tuple[float, str]]:
    """``[    1.234567] text`` lines → ``[(1.234567, "text"), ...]``.

    A line without a timestamp continues the previous message (joined with ``\\n``).
    """
    out: list[tuple[float, str]] = []
    for no, line in _content_lines(text):
        m = _DMESG_RE.match(line)
        if m is not None:
            out.append((float(m.group("t")), m.group("text").rstrip()))
        elif out:
            t, prev = out[-1]
            out[-1] = (t, f"{prev}\n{line.rstrip()}")
        else:
            raise SectionError(
                "dmesg",
                no,
                line,
                "the first message has no '[seconds]' timestamp",
                "boot the guest kernel with printk timestamps (CONFIG_PRINTK_TIME=y or printk.time=1)",
            )
    return out


def dmesg_marker_find(text: str, marker: str, start: int = 0) -> tuple[float, int] | None:
    """(time, offset of its line) of the first dmesg message at or after ``start`` whose text ends with
    ``marker``, read straight from the raw section (``str.find`` for the marker, then its line only; no
    per-line objects): the rule of ``labkit.measure.metrics.find_marker`` on :func:`parse_dmesg`'s output,
    except that a marker on a continuation line (no timestamp) is not seen."""
    pos = start
    while (i := text.find(marker, pos)) >= 0:
        pos = i + 1
        end = text.find("\n", i)
        end = len(text) if end < 0 else end
        if text[i + len(marker):end].strip():
            continue
        line_start = text.rfind("\n", 0, i) + 1
        m = _DMESG_RE.match(text[line_start:end].rstrip("\r"))
        if m is not None and m.group("text").strip().endswith(marker):
            return (float(m.group("t")), line_start)
    return None


def dmesg_marker_time(text: str, marker: str, start: int = 0) -> float | None:
    """The time of :func:`dmesg_marker_find`'s message, or None."""
    found = dmesg_marker_find(text, marker, start)
    return found[0] if found is not None else None


def check_dmesg(text: str) -> None:
    """Raise :func:`parse_dmesg`'s error when the first message has no timestamp (cheap: one line)."""
    for line in text.split("\n", 8)[:8]:
        if line.strip():
            if _DMESG_RE.match(line.rstrip("\r")) is None:
                parse_dmesg(text)
            return


@dataclass(frozen=True)
class DfRow:
    filesystem: str
    blocks_k: int
    used_k: int
    available_k: int
    use_pct: int | None  # None when df prints "-"
    mounted_on: str


#: df's Use% column: "-" or a whole number followed by "%" (what _df_row accepts, in one step)
_DF_PCT_RE = re.compile(r"-|[0-9]{1,18}%+")


def _df_row(fields: list[str], no: int, line: str) -> DfRow:
    # the usual row in one step (split() fields have no white space around them: whole_number's checks);
    # any other row goes through the checks below, which name what is wrong
    if (len(fields) >= 6 and _WHOLE_RE.fullmatch(fields[1]) and _WHOLE_RE.fullmatch(fields[2])
            and _WHOLE_RE.fullmatch(fields[3]) and _DF_PCT_RE.fullmatch(fields[4])):
        pct = fields[4]
        return DfRow(fields[0], int(fields[1]), int(fields[2]), int(fields[3]),
                     None if pct == "-" else int(pct.rstrip("%")), " ".join(fields[5:]))
    if len(fields) < 6:
        raise SectionError("df", no, line, "expected 6 columns (Filesystem 1K-blocks Used Available Use% Mounted on)")
    fs, blocks, used, avail, pct = fields[:5]
    mount = " ".join(fields[5:])
    try:
        use_pct = None if pct == "-" else whole_number(pct.rstrip("%"), "df", no, line, "Use%")
        if pct != "-" and not pct.endswith("%"):
            raise ValueError
        sizes = [whole_number(x, "df", no, line, "size") for x in (blocks, used, avail)]
        return DfRow(fs, sizes[0], sizes[1], sizes[2], use_pct, mount)
    except ValueError:
        raise SectionError("df", no, line, "size columns must be whole KiB numbers and Use% like '12%'") from None


def parse_df(text: str) -> list[DfRow]:
    """``df -k`` output (busybox or coreutils); long device names may wrap onto the next line.

    Several ``df -k`` runs may follow each other (the header repeats).
    """
    rows: list[DfRow] = []
    pending: tuple[int, str] | None = None  # a wrapped device name waiting for its numbers
    seen_header = False
    for no, line in _content_lines(text):
        fields = line.split()
        if fields[0] == "Filesystem":
            if "1K-blocks" not in fields and "1024-blocks" not in fields:
                raise SectionError(
                    "df", no, line, "not 'df -k' output (no 1K-blocks column)", "the probe must run df -k"
                )
            if pending is not None:
                raise SectionError("df", pending[0], pending[1], "device name without its numbers")
            seen_header = True
            continue
        if not seen_header:
            raise SectionError("df", no, line, "data before the 'Filesystem 1K-blocks ...' header")
        if pending is not None:
            rows.append(_df_row([pending[1].strip(), *fields], no, line))
            pending = None
        elif len(fields) == 1:
            pending = (no, line)
        else:
            rows.append(_df_row(fields, no, line))
    if pending is not None:
        raise SectionError("df", pending[0], pending[1], "device name without its numbers (truncated?)")
    if not seen_header:
        raise SectionError("df", None, None, "no 'Filesystem 1K-blocks ...' header")
    return rows


def parse_cmdline(text: str) -> list[tuple[str, str | None]]:
    """``/proc/cmdline`` → ``[(key, value or None), ...]`` in order (keys may repeat, e.g. console=)."""
    lines = _content_lines(text)
    if len(lines) != 1:
        raise SectionError("cmdline", None, None, f"expected one line, found {len(lines)}")
    no, line = lines[0]
    tokens: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in line.strip():
        if ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if quoted:
        raise SectionError("cmdline", no, line, "unbalanced double quote")
    if cur:
        tokens.append("".join(cur))
    out: list[tuple[str, str | None]] = []
    for tok in tokens:
        key, sep, val = tok.partition("=")
        out.append((key, val if sep else None))
    return out
