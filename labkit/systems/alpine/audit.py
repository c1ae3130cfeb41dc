"""Read, list, audit and diff apkovls (the real ``lbu commit`` archives and labkit's own).

Structural problems (truncated gzip/tar, absolute names, ``..``, links or entries that leave the
tree) make :func:`read_apkovl` raise :class:`InputError`; content concerns (private keys, caches,
large files, a readable shadow, missing boot services, ``local.d`` scripts nothing runs) come back as
:class:`Finding` records from :func:`audit`. A whole disk or image (every partition, as the
initramfs's ``nlplug-findfs`` scans them) is audited by :mod:`labkit.systems.alpine.diskaudit`.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from labkit.core.archives import ArchiveLimits, TarStream, read_chunks
from labkit.core.errors import InputError
from labkit.core.text import printable
from labkit.systems.alpine.apkovl import DEFAULT_BOOT_SERVICES_MARKER, EXPECTED_SERVICES

DEFAULT_LARGE = 1024 * 1024
_KIND = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
         tarfile.LNKTYPE: "hardlink"}
_HOST_KEY = re.compile(r"^etc/ssh/ssh_host_\w+_key$")
_PRIV_NAME = re.compile(r"(^|/)(id_(rsa|dsa|ecdsa|ed25519)(_sk)?|[^/]+\.(key|pem|p12|pfx))$")
_CACHES = (
    (re.compile(r"(^|/)\.cache(/|$)"), "cache", "a .cache directory (rebuilt at will; bloats every boot)"),
    (re.compile(r"(^|/)\.(mozilla|thunderbird)(/|$)"), "browser-mail", "a Firefox/Thunderbird profile"),
    (re.compile(r"(^|/)\.dillo/cache(/|$)"), "browser-mail", "the dillo browser cache"),
    (re.compile(r"(^|/)(Mail|\.sylpheed-2\.0|\.maildir)(/|$)"), "browser-mail", "a mail store"),
    (re.compile(r"^var/(spool/)?mail/"), "browser-mail", "a system mailbox"),
)


@dataclass(frozen=True)
class Member:
    name: str  # as stored (directories without the trailing slash)
    kind: str
    mode: int
    uid: int
    gid: int
    owner: str  # "uname/gname" as tar prints it
    size: int
    mtime: int
    target: str
    sha256: str  # of the data (files), "" otherwise


@dataclass(frozen=True)
class Finding:
    severity: str  # "warning" | "info"
    rule: str
    path: str
    message: str


@dataclass(frozen=True)
class Apkovl:
    members: tuple[Member, ...]
    compressed_size: int
    pem: frozenset[str] = frozenset()  # files whose content holds a PEM private key

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members if m.kind == "file")

    def by_name(self) -> dict[str, Member]:
        return {m.name: m for m in self.members}


def _structural(m: tarfile.TarInfo, name: str, symlinks: set[str]) -> str | None:
    p = PurePosixPath(name)
    if m.name.startswith("/"):
        return f"{m.name!r} is an absolute path"
    if ".." in p.parts:
        return f"{m.name!r} contains '..'"
    for i in range(1, len(p.parts)):
        parent = "/".join(p.parts[:i])
        if parent in symlinks:
            return f"{name!r} is written through the symlink {parent!r} (it may land outside the root)"
    if m.issym() and not m.linkname.startswith("/"):
        resolved = posixpath.normpath(posixpath.join(str(p.parent), m.linkname))
        if resolved == ".." or resolved.startswith("../"):
            return f"symlink {name!r} -> {m.linkname!r} leaves the tree"
    if m.islnk() and (m.linkname.startswith("/") or ".." in PurePosixPath(m.linkname).parts):
        return f"hard link {name!r} -> {m.linkname!r} leaves the tree"
    if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
        return f"{name!r} is a device, fifo or other special file"
    return None


#: Limits for an apkovl (an LBU backup of /etc and a few homes: a few MiB; large files are reported,
#: not refused, up to these).
APKOVL_LIMITS = ArchiveLimits(max_compressed=512 * 2**20, max_total=1024 * 2**20, max_members=50_000,
                              max_member=512 * 2**20)
_PEM = b"PRIVATE KEY-----"


def read_apkovl(source: Path | bytes, label: str | None = None, *,
                limits: ArchiveLimits = APKOVL_LIMITS) -> Apkovl:
    """Parse an apkovl (streamed, within ``limits``); raise :class:`InputError` naming every structural
    problem, and :class:`~labkit.core.archives.ArchiveTooLarge` past a limit (a gzip bomb)."""
    label = label or (str(source) if isinstance(source, Path) else "the apkovl")
    stream = TarStream(source, label, limits)
    members: list[Member] = []
    problems: list[str] = []
    symlinks: set[str] = set()
    pem: set[str] = set()
    for m, data in stream:
        name = m.name.rstrip("/")
        problem = _structural(m, name, symlinks)
        if problem:
            problems.append(problem)
        if m.issym():
            symlinks.add(name)
        digest = ""
        if data is not None:
            h = hashlib.sha256()
            tail = b""
            for chunk in read_chunks(data):
                h.update(chunk)
                if _PEM in tail + chunk[: len(_PEM)] or _PEM in chunk:
                    pem.add(name)
                tail = chunk[-len(_PEM):]
            digest = h.hexdigest()
        kind = "file" if m.isreg() else _KIND.get(m.type, "other")
        members.append(Member(name, kind, m.mode, m.uid, m.gid, f"{m.uname}/{m.gname}",
                              m.size if m.isreg() else 0, int(m.mtime), m.linkname, digest))
    if not members:
        raise InputError(f"{label} holds no entries", "is this an apkovl? (lbu package - | tar tzf -)")
    if problems:
        raise InputError(f"{label} is unsafe to unpack: " + "; ".join(printable(p) for p in problems),
                         "rebuild it with labkit alpine apkovl, or with lbu commit from a clean system")
    return Apkovl(tuple(members), stream.compressed_size, frozenset(pem))


def audit(ovl: Apkovl, *, large: int = DEFAULT_LARGE, data: dict[str, bytes] | None = None) -> list[Finding]:
    """Content findings. ``data`` (name -> bytes) lets the PEM check look inside files."""
    out: list[Finding] = []
    for m in ovl.members:
        body = (data or {}).get(m.name, b"")
        pem = _PEM in body or m.name in ovl.pem
        if m.kind == "file" and (_PRIV_NAME.search(m.name) or pem or _HOST_KEY.match(m.name)):
            if _HOST_KEY.match(m.name):
                out.append(Finding("info", "host-key", m.name, "SSH host key (expected: keeps the host identity)"))
            elif pem or not m.name.endswith(".pub"):
                out.append(Finding("warning", "private-key", m.name, "a private key is saved in the overlay"))
        for rx, rule, text in _CACHES:
            if rx.search(m.name):
                out.append(Finding("warning", rule, m.name, f"{text}; exclude it with lbu exclude"))
                break
        if m.kind == "file" and m.size > large:
            out.append(Finding("warning", "large-file", m.name, f"{m.size} bytes (over {large}); it is kept in RAM"))
        if m.name in ("etc/shadow", "etc/shadow-") and m.mode & 0o004:
            out.append(Finding("warning", "shadow-mode", m.name, f"mode {m.mode:04o} lets everyone read the hashes"))
        if m.kind == "file" and m.mode & 0o6000:  # (setgid on a directory only passes its group on)
            bits = " and ".join(b for b, f in (("setuid", 0o4000), ("setgid", 0o2000)) if m.mode & f)
            out.append(Finding("warning", "setuid", m.name,
                               f"mode {m.mode:04o} is {bits}: restored at every boot with these rights"))
        if m.kind in ("file", "dir") and m.mode & 0o002:
            sticky_dir = m.kind == "dir" and m.mode & 0o1000
            out.append(Finding("info" if sticky_dir else "warning", "world-writable", m.name,
                               f"mode {m.mode:04o}: everyone may "
                               + ("create files in it (sticky, like /tmp)" if sticky_dir else "change it")))
    return out + service_findings(ovl)


def runlevels(ovl: Apkovl) -> dict[str, set[str]]:
    """``{runlevel: services}`` from the ``etc/runlevels/<lvl>/<svc>`` entries (links or files)."""
    out: dict[str, set[str]] = {}
    for m in ovl.members:
        parts = m.name.split("/")
        if len(parts) == 4 and parts[:2] == ["etc", "runlevels"] and m.kind != "dir":
            out.setdefault(parts[2], set()).add(parts[3])
    return out


def service_findings(ovl: Apkovl) -> list[Finding]:
    """What OpenRC will run from this overlay on a diskless boot.

    With an apkovl present, mkinitfs's initramfs adds the default boot services only when the overlay
    carries ``etc/.default_boot_services`` (alpinelinux/mkinitfs 3.10.1 initramfs-init.in l.781-815, 3.13.0
    l.916-950); otherwise the overlay's ``etc/runlevels`` links are all there is (plus ``hwclock``, added on
    every boot, l.895-899). ``local`` runs ``/etc/local.d/*.start`` only when it is in a runlevel
    (OpenRC init.d/local.in); nothing on Alpine enables it by default.
    """
    names = ovl.by_name()
    levels = runlevels(ovl)
    out: list[Finding] = []
    if DEFAULT_BOOT_SERVICES_MARKER in names:
        out.append(Finding("info", "default-boot-services", DEFAULT_BOOT_SERVICES_MARKER,
                           "the initramfs adds its default boot services (and firstboot) on every boot while this "
                           "marker is in the apkovl; the next lbu commit drops it and keeps the links"))
    else:
        missing = [f"{lvl}/{svc}" for lvl, svc in EXPECTED_SERVICES if svc not in levels.get(lvl, set())]
        if missing:
            key = {"sysinit/modloop": "no modloop (no kernel modules beyond the initramfs)",
                   "boot/hostname": "no hostname", "boot/networking": "no networking"}
            effects = [text for name, text in key.items() if name in missing] or ["without them"]
            out.append(Finding(
                "warning", "boot-services", "etc/runlevels",
                f"missing runlevel links {', '.join(missing)}: with an apkovl the initramfs adds no default "
                f"service (only with etc/.default_boot_services), so Alpine boots with {', '.join(effects)}; "
                "rebuild it with labkit alpine apkovl, or rc-update add them and lbu commit"))
    scripts = sorted(m.name for m in ovl.members if m.name.startswith("etc/local.d/") and m.name.endswith(".start")
                     and m.kind == "file")
    if scripts and not any("local" in svcs for svcs in levels.values()):
        out.append(Finding("warning", "local-not-enabled", scripts[0],
                           f"{len(scripts)} etc/local.d/*.start script(s), but the service local is in no runlevel: "
                           "OpenRC never runs them; rc-update add local default (etc/runlevels/default/local)"))
    for m in (m for m in ovl.members if m.name.startswith("etc/local.d/") and m.kind == "file"):
        if m.name.endswith(".start") and not m.mode & 0o100:
            out.append(Finding("warning", "local-not-executable", m.name,
                               "not executable: OpenRC's local service skips it ([ -x ] test in local.in)"))
    return out


def file_data(source: Path | bytes, *, limits: ArchiveLimits = APKOVL_LIMITS) -> dict[str, bytes]:
    """The contents of the regular files (streamed within ``limits``; kept in memory: small archives only)."""
    label = str(source) if isinstance(source, Path) else "the apkovl"
    return {m.name: b"".join(read_chunks(data)) for m, data in TarStream(source, label, limits) if data is not None}


def audit_file(path: Path, *, large: int = DEFAULT_LARGE) -> tuple[Apkovl, list[Finding]]:
    ovl = read_apkovl(path)
    return ovl, audit(ovl, large=large)


@dataclass(frozen=True)
class Change:
    path: str
    what: tuple[str, ...]  # e.g. ("content", "mode 0644 -> 0600")


@dataclass(frozen=True)
class ApkovlDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[Change, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        """One line per change; names are shown with control characters escaped."""
        return ([f"A {printable(p)}" for p in self.added] + [f"D {printable(p)}" for p in self.removed]
                + [f"U {printable(c.path)} ({printable(', '.join(c.what))})" for c in self.changed])


def diff(a: Apkovl, b: Apkovl, *, mtimes: bool = False) -> ApkovlDiff:
    """What changed from ``a`` to ``b`` (lbu status letters: A added, D deleted, U updated)."""
    ma, mb = a.by_name(), b.by_name()
    changed: list[Change] = []
    for name in sorted(ma.keys() & mb.keys()):
        x, y = ma[name], mb[name]
        what = []
        if x.kind != y.kind:
            what.append(f"kind {x.kind} -> {y.kind}")
        if x.sha256 != y.sha256:
            what.append(f"content ({x.size} -> {y.size} bytes)")
        if x.mode != y.mode:
            what.append(f"mode {x.mode:04o} -> {y.mode:04o}")
        if (x.uid, x.gid, x.owner) != (y.uid, y.gid, y.owner):
            what.append(f"owner {x.owner} -> {y.owner}")
        if x.target != y.target:
            what.append(f"target {x.target} -> {y.target}")
        if mtimes and x.mtime != y.mtime:
            what.append("mtime")
        if what:
            changed.append(Change(name, tuple(what)))
    return ApkovlDiff(tuple(sorted(mb.keys() - ma.keys())), tuple(sorted(ma.keys() - mb.keys())), tuple(changed))


def as_json(ovl: Apkovl, findings: list[Finding]) -> dict[str, object]:
    return {
        "entries": [asdict(m) for m in ovl.members],
        "count": len(ovl.members),
        "total_size": ovl.total_size,
        "compressed_size": ovl.compressed_size,
        "findings": [asdict(f) for f in findings],
    }
