"""Audit a whole disk or image the way the diskless initramfs sees it: every partition, every top-level
``*.apkovl.tar.gz*`` and boot repository.

What the real initramfs does (alpinelinux/mkinitfs 3.10.1 ``nlplug-findfs/nlplug-findfs.c``; unchanged
in 3.13.0): every block device with a filesystem type blkid recognises is mounted read-only at
``/media/<dev>`` (``searchdev`` → ``scandev``, l.885-924; vfat — the ESP — included) and scanned at its
**top level** only (``.maxdepth = 1``, l.891): any non-directory matching ``fnmatch("*.apkovl.tar.gz*")``
is an apkovl, a directory holding a ``.boot_repository`` entry (``access(F_OK)``) is a package repository
(``scandev_cb``, l.861-883). Every apkovl
found is appended to ``/tmp/apkovls``, and ``initramfs-init.in`` boots the first line of it
(``ovl=$(head -n 1 "$ROOT"/tmp/apkovls)``, l.747-751): the first one found wins, in device scan order,
which nothing pins. So a second apkovl on the ESP or ``/data`` can replace the Alpine partition's.

The partitions are read without mounting: the GPT with :func:`labkit.targets.gpt.read_gpt`, the type
with ``blkid -p -O``, a FAT filesystem with mtools (``IMG@@OFFSET``), ext2/3/4 with ``debugfs``
(``IMG?offset=N``) — the same addressing :class:`labkit.targets.base.Target` uses. Each apkovl found is
read and audited (:func:`labkit.systems.alpine.audit.audit`).
"""

from __future__ import annotations

import fnmatch
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit.core.errors import InputError, VerifyFailed
from labkit.core.runner import Runner
from labkit.core.text import printable
from labkit.systems.alpine.audit import Apkovl, Finding, audit, file_data, read_apkovl
from labkit.targets.base import MTOOLS_ENV
from labkit.targets.gpt import read_gpt

APKOVL_GLOB = "*.apkovl.tar.gz*"  # nlplug-findfs.c scandev_cb: fnmatch("*.apkovl.tar.gz*", ...)
EXT_TYPES = ("ext2", "ext3", "ext4")


@dataclass(frozen=True)
class PartitionScan:
    number: int | None  # GPT entry number; None: the whole disk holds one filesystem
    offset: int
    size: int
    fstype: str  # blkid TYPE ("" when none)
    label: str
    apkovls: tuple[str, ...] = ()  # top-level names
    repositories: tuple[str, ...] = ()  # top-level directories holding .boot_repository
    note: str = ""  # why the partition was not read

    @property
    def where(self) -> str:
        return "the whole disk" if self.number is None else f"partition {self.number}"


@dataclass(frozen=True)
class DiskAudit:
    path: str
    partitions: tuple[PartitionScan, ...]
    findings: tuple[Finding, ...]
    apkovls: dict[str, tuple[Apkovl, list[Finding]]] = field(default_factory=dict)  # "<where>:<name>"

    def as_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "partitions": [asdict(p) for p in self.partitions],
            "findings": [asdict(f) for f in self.findings],
            "apkovls": {k: {"count": len(o.members), "total_size": o.total_size,
                            "findings": [asdict(f) for f in fs]} for k, (o, fs) in self.apkovls.items()},
        }


def _blkid(runner: Runner, path: str, offset: int) -> dict[str, str]:
    res = runner.run(["blkid", "-p", "-o", "export", "-O", str(offset), path], query=True, check=False)
    return dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)


def _list_fat(runner: Runner, spec: str, directory: str = "") -> list[tuple[str, bool]]:
    """``(name, is_dir)`` of the entries of one FAT directory (``mdir -b``: ``::/NAME`` or ``::/NAME/``)."""
    res = runner.run(["mdir", "-b", "-i", spec, f"::/{directory}"], env=MTOOLS_ENV, query=True, check=False)
    out = []
    for line in res.stdout.splitlines():
        rest = line.strip()
        if not rest.startswith("::/"):
            continue
        rel = rest[3:]
        name = rel[len(directory):] if directory and rel.startswith(directory) else rel
        is_dir = name.endswith("/")
        name = name.rstrip("/")
        if name and "/" not in name:
            out.append((name, is_dir))
    return out


def _list_ext(runner: Runner, spec: str, directory: str = "/") -> list[tuple[str, str]]:
    """``(name, kind)`` (kind: file, dir, link, other) of one ext directory, from ``debugfs ls -p``
    (``/inode/mode/uid/gid/name/size/``)."""
    res = runner.run(["debugfs", "-R", f'ls -p "{directory}"', spec], query=True, check=False)
    out = []
    for line in res.stdout.splitlines():
        parts = line.split("/")
        if len(parts) < 7 or not parts[2].isdigit():
            continue
        name = "/".join(parts[5:-2])  # a name may hold '/'-free text only, but be safe
        if name in (".", ".."):
            continue
        mode = int(parts[2], 8)
        kind = {0o100000: "file", 0o040000: "dir", 0o120000: "link"}.get(mode & 0o170000, "other")
        out.append((name, kind))
    return out


def _read_fat(runner: Runner, spec: str, name: str, dest: Path) -> bytes | None:
    runner.run(["mcopy", "-n", "-i", spec, f"::/{name}", dest], env=MTOOLS_ENV, query=True, check=False)
    return dest.read_bytes() if dest.is_file() else None


def _read_ext(runner: Runner, spec: str, name: str, dest: Path) -> bytes | None:
    if '"' in name or "\n" in name:
        return None
    runner.run(["debugfs", "-R", f'dump "/{name}" "{dest}"', spec], query=True, check=False)
    return dest.read_bytes() if dest.is_file() else None


def _scan(runner: Runner, path: str, number: int | None, offset: int, size: int,
          tmp: Path, found: dict[str, bytes]) -> PartitionScan:
    info = _blkid(runner, path, offset)
    fstype, label = info.get("TYPE", ""), info.get("LABEL", "")
    base = PartitionScan(number, offset, size, fstype, label)
    where = base.where
    if fstype == "vfat":
        spec = f"{path}@@{offset}"
        entries = _list_fat(runner, spec)
        ovls = [n for n, d in entries if not d and fnmatch.fnmatch(n, APKOVL_GLOB)]
        repos = [n for n, d in entries
                 if d and any(x == ".boot_repository" for x, _ in _list_fat(runner, spec, n + "/"))]
        for n in ovls:
            data = _read_fat(runner, spec, n, tmp / f"{len(found)}.ovl")
            if data is not None:
                found[f"{where}:{n}"] = data
    elif fstype in EXT_TYPES:
        spec = f"{path}?offset={offset}"
        entries2 = _list_ext(runner, spec)
        ovls = [n for n, k in entries2 if k != "dir" and fnmatch.fnmatch(n, APKOVL_GLOB)]
        repos = [n for n, k in entries2 if k == "dir" and any(x == ".boot_repository"
                                                              for x, _ in _list_ext(runner, spec, "/" + n))]
        for n in ovls:
            data = _read_ext(runner, spec, n, tmp / f"{len(found)}.ovl")
            if data is not None:
                found[f"{where}:{n}"] = data
    else:
        note = f"filesystem {fstype!r} is not read here (FAT and ext2/3/4 are)" if fstype else "no filesystem"
        return PartitionScan(number, offset, size, fstype, label, note=note)
    return PartitionScan(number, offset, size, fstype, label, tuple(sorted(ovls)), tuple(sorted(repos)))


def disk_findings(parts: tuple[PartitionScan, ...]) -> list[Finding]:
    """The initramfs's view of the whole disk (see the module docstring)."""
    out: list[Finding] = []
    ovls = [(p, n) for p in parts for n in p.apkovls]
    with_repo = [p for p in parts if p.repositories]
    if len(ovls) > 1:
        listed = ", ".join(f"{n} on {p.where} ({p.fstype})" for p, n in ovls)
        out.append(Finding(
            "warning", "apkovl-several", ovls[0][1],
            f"{len(ovls)} apkovls at the top level of the disk's filesystems: {listed}. nlplug-findfs collects "
            "them all and the initramfs boots the first one found (head -n 1 /tmp/apkovls), in device scan "
            "order: which one wins is not fixed. Keep one (move the others into a subdirectory or delete them) "
            "or name it with apkovl= on the kernel command line"))
    if with_repo:
        for p, n in ovls:
            if not p.repositories:
                homes = ", ".join(q.where for q in with_repo)
                out.append(Finding(
                    "warning", "apkovl-elsewhere", f"{p.where}:{n}",
                    f"an apkovl on {p.where} ({p.fstype}{', label ' + p.label if p.label else ''}), away from the "
                    f"Alpine media ({homes}, which holds the boot repository): nlplug-findfs scans every "
                    "partition, so the initramfs may boot this one; lbu commit writes only to LBU_MEDIA"))
    if not ovls:
        out.append(Finding("info", "no-apkovl", "-",
                           "no top-level *.apkovl.tar.gz on any partition: Alpine boots fresh (the initramfs adds its "
                           "default services) with nothing of a saved configuration"))
    if not with_repo:
        out.append(Finding("warning", "no-boot-repository", "-",
                           "no top-level directory with a .boot_repository file on any partition: the initramfs "
                           "finds no packages to install offline (copy apks/ as a directory, hidden file included)"))
    return out


def audit_disk(runner: Runner, path: Path | str) -> DiskAudit:
    """Scan every partition of the GPT disk or image ``path`` (or a whole-disk filesystem) and audit it."""
    path = str(path)
    if not Path(path).exists():
        raise InputError(f"{path} does not exist", "give a disk image or a block device (e.g. /dev/sdb)")
    try:
        size = Path(path).stat().st_size
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell() or size
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}", "run as root, or check the path") from None
    entries: list[tuple[int | None, int, int]]
    try:
        entries = [(e.number, e.start, e.size) for e in read_gpt(Path(path)).entries]
    except VerifyFailed:
        entries = [(None, 0, size)]  # no (valid) GPT: read the disk as one filesystem, as blkid would
    found: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="labkit-diskaudit-") as tmp:
        parts = tuple(_scan(runner, path, n, off, sz, Path(tmp), found) for n, off, sz in entries)
    if entries[0][0] is None and not parts[0].fstype and Path(path).is_file():
        raise InputError(f"{printable(path)} is neither an apkovl (no gzip header: truncated or corrupt?) nor a disk "
                         "image (no GPT, no filesystem)",
                         "give an .apkovl.tar.gz, a disk image or a block device")
    ovl_audits: dict[str, tuple[Apkovl, list[Finding]]] = {}
    findings = disk_findings(parts)
    for key, data in found.items():
        try:
            ovl = read_apkovl(data, label=key)
        except InputError as exc:
            findings.append(Finding("warning", "apkovl-unreadable", key, exc.problem))
            continue
        ovl_audits[key] = (ovl, audit(ovl, data=file_data(data)))
    return DiskAudit(path, parts, tuple(findings), ovl_audits)


#: The readers above, for other layers that read a disk without mounting it (labkit.lab.hwloop: /data).
blkid_fields = _blkid
list_ext_dir = _list_ext
read_ext_file = _read_ext


def looks_like_apkovl(path: Path) -> bool:
    """A regular file starting with the gzip magic (an apkovl), as opposed to a disk or an image."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"
