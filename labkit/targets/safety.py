"""Refusal rules: when labkit will not touch a disk, and what the user can do about it.

Each rule is a named :class:`Code`; :func:`check_disk` returns every finding (empty = safe).
The disk phase calls it before every destructive step, on a freshly re-read record.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import labkit
from labkit.core.errors import LabkitError
from labkit.core.layout import Layout, human
from labkit.targets.disks import SYS_BLOCK, DiskRecord, PartitionRecord, device_of_path
from labkit.targets.gpt import TYPE_GUIDS


class Code(str, Enum):
    NOT_FOUND = "not-found"
    NOT_BLOCK = "not-block-device"
    MOUNTED = "mounted"
    SWAP = "active-swap"
    HOLDER = "holder"
    SYSTEM_DISK = "system-disk"
    READ_ONLY = "read-only"
    TOO_SMALL = "too-small"
    HAS_PARTITIONS = "has-partitions"
    REMOVABLE = "removable"
    FINGERPRINT_MISMATCH = "fingerprint-mismatch"
    NOT_CONFIRMED = "not-confirmed"
    FOREIGN_FILESYSTEM = "foreign-filesystem"
    BUSY = "busy"
    IN_USE = "in-use"  # a loop device is backed by it, or a process holds it open


@dataclass(frozen=True)
class Finding:
    code: Code
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.code.value}] {self.message}\n  fix: {self.fix}"


class Refused(LabkitError):
    """labkit refuses to touch the disk; ``findings`` lists every reason."""

    def __init__(self, device: str, findings: Iterable[Finding]) -> None:
        self.device = device
        self.findings = tuple(findings)
        super().__init__(f"refusing to write {device}:\n" + "\n".join(str(f) for f in self.findings))

    @property
    def codes(self) -> set[Code]:
        return {f.code for f in self.findings}


def protected_paths() -> tuple[str, ...]:
    """The paths whose disks labkit never writes: /, this Python, labkit itself."""
    return ("/", sys.prefix, os.path.realpath(sys.executable), str(Path(labkit.__file__).resolve().parent))


def underlying_disks(name: str) -> set[str]:
    """``name`` and, through /sys/class/block/X/slaves (dm, md), the disks beneath it."""
    out = {name}
    slaves = SYS_BLOCK / name / "slaves"
    if slaves.is_dir():
        for s in slaves.iterdir():
            parent = s.name
            if (SYS_BLOCK / parent / "partition").is_file():
                parent = Path(os.path.realpath(SYS_BLOCK / parent)).parent.name
            out |= underlying_disks(parent)
    return out


def system_disks(paths: Iterable[str]) -> dict[str, str]:
    """Kernel disk name -> the protected path it holds."""
    out: dict[str, str] = {}
    for p in paths:
        name = device_of_path(p)
        if name:
            for d in underlying_disks(name):
                out.setdefault(d, p)
    return out


def layout_matches_table(disk: DiskRecord, layout: Layout) -> bool:
    """True when the disk's partitions are exactly the layout's (sizes, positions, names)."""
    if disk.pttype != "gpt" or disk.size < layout.min_disk_size():
        return False
    ext = layout.extents(disk.size)
    if len(disk.table) != len(ext):
        return False
    return all(
        p.number == e.number and p.start == e.start and p.size == e.size and p.name == e.partition.name
        and p.type_guid == TYPE_GUIDS.get(e.partition.type_code.lower())
        for p, e in zip(disk.table, ext, strict=True)
    )


def check_disk(
    disk: DiskRecord,
    layout: Layout,
    *,
    confirm: str | None,
    wipe: bool = False,
    allow_removable: bool = False,
    accepted_fingerprints: Iterable[str] = (),
    protected: Iterable[str] | None = None,
) -> list[Finding]:
    """Every reason not to write ``layout`` to ``disk`` (empty when it is safe).

    ``accepted_fingerprints`` are extra fingerprints that ``confirm`` stands for (the
    post-partitioning fingerprint recorded in the state file of an interrupted run).
    """
    f: list[Finding] = []
    fp = disk.fingerprint
    if confirm is None or not confirm.strip():
        f.append(Finding(Code.NOT_CONFIRMED, f"{disk.path} was not confirmed by its fingerprint",
                         f"check it is the right disk, then pass --confirm {fp} ({disk.describe()})"))
    elif confirm.strip().lower() != fp and fp not in set(accepted_fingerprints):
        f.append(Finding(Code.FINGERPRINT_MISMATCH,
                         f"{disk.path} has fingerprint {fp}, not the confirmed {confirm.strip()}: the disk was "
                         "changed, swapped or renamed since it was confirmed",
                         "run `labkit disks` again, check which disk is which, and confirm the current fingerprint"))
    sysd = system_disks(protected_paths() if protected is None else protected)
    if disk.name in sysd:
        f.append(Finding(Code.SYSTEM_DISK, f"{disk.path} holds {sysd[disk.name]} (the running system or labkit)",
                         "pick another disk; to install on this one boot a live system first"))
    mounted = [(disk.path, m) for m in disk.mountpoints] + [(p.path, m) for p in disk.partitions
                                                               for m in p.mountpoints]
    if mounted:
        f.append(Finding(Code.MOUNTED, "mounted: " + ", ".join(f"{d} on {m}" for d, m in mounted),
                         "unmount them (umount " + " ".join(m for _, m in mounted) + ") or pick another disk"))
    devices: list[DiskRecord | PartitionRecord] = [disk, *disk.partitions]
    swaps = [d.path for d in devices if d.swap]
    if swaps:
        f.append(Finding(Code.SWAP, "active swap on " + ", ".join(swaps),
                         "swapoff " + " ".join(swaps) + " (and remove it from /etc/fstab) or pick another disk"))
    holders = [f"{d.name} is held by {', '.join(d.holders)}" for d in devices if d.holders]
    if holders:
        f.append(Finding(Code.HOLDER, "in use by LVM/RAID/dm-crypt: " + "; ".join(holders),
                         "deactivate them first (vgchange -an, mdadm --stop, cryptsetup close) or pick another disk"))
    if disk.read_only:
        f.append(Finding(Code.READ_ONLY, f"{disk.path} is read-only",
                         "check the write-protect switch, or `blockdev --setrw`, or pick another disk"))
    if disk.size < layout.min_disk_size():
        f.append(Finding(Code.TOO_SMALL, f"{disk.path} has {human(disk.size)}, layout {layout.name!r} needs "
                         f"{human(layout.min_disk_size())}", "pick a bigger disk or shrink the layout's partitions"))
    occupied = disk.partitions or disk.table or disk.pttype or disk.whole_disk_fs
    if occupied and not wipe and not layout_matches_table(disk, layout):
        n = max(len(disk.partitions), len(disk.table))
        what = f"{n} partition(s)" if n else f"a {disk.pttype or disk.whole_disk_fs} signature"
        f.append(Finding(Code.HAS_PARTITIONS, f"{disk.path} already holds {what}, not layout {layout.name!r}",
                         f"back up what you need, then pass --wipe --confirm {fp} to destroy them"))
    if disk.removable and not allow_removable:
        f.append(Finding(Code.REMOVABLE, f"{disk.path} is a removable disk",
                         "pass --allow-removable if you really mean to install on it"))
    nodes = [disk.path, *(p.path for p in disk.partitions)]
    users = loop_users(nodes) + open_handles(nodes)
    if users:
        f.append(Finding(Code.IN_USE, "in use: " + "; ".join(users),
                         "stop what uses it (losetup -d the loop device, end the process: `fuser -vm` / `lsof` show "
                         "it) or pick another disk"))
    if not mounted and not users and not any(d.swap or d.holders for d in devices):
        busy = busy_nodes(nodes)
        if busy:
            f.append(Finding(Code.BUSY, "the kernel reports in use (exclusive open refused): " + ", ".join(busy),
                             "something mounted or holds it that labkit cannot see (btrfs, FUSE, a VM?): "
                             "find it with `fuser -vm` / `lsof`, stop it, or pick another disk"))
    return f


def _rdev(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def loop_users(paths: Iterable[str]) -> list[str]:
    """Loop devices whose backing file is one of ``paths`` (a block device): ``/dev/loop3 (backed by /dev/sdb2)``.
    A loop device over a partition is invisible to mountinfo, holders and the exclusive open."""
    wanted = {r: p for p in paths if (r := _rdev(p)) is not None}
    found: list[str] = []
    for loop in sorted(SYS_BLOCK.glob("loop*")):
        backing = loop / "loop" / "backing_file"
        try:
            target = backing.read_text().strip()
        except OSError:
            continue
        r = _rdev(target)
        if r is not None and r in wanted:
            found.append(f"/dev/{loop.name} (backed by {wanted[r]})")
    return found


def open_handles(paths: Iterable[str]) -> list[str]:
    """Processes (other than this one) holding one of ``paths`` open: ``pid 1234 (dd) has /dev/sdb1 open``.
    Read from /proc/<pid>/fd like fuser; a process we may not inspect is skipped."""
    wanted = {r: p for p in paths if (r := _rdev(p)) is not None}
    if not wanted:
        return []
    me = os.getpid()
    found: list[str] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        hits = set()
        for fd in fds:
            try:
                st = os.stat(fd)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) and st.st_rdev in wanted:
                hits.add(wanted[st.st_rdev])
        if hits:
            try:
                comm = (proc / "comm").read_text().strip()
            except OSError:
                comm = "?"
            found.append(f"pid {proc.name} ({comm}) has {', '.join(sorted(hits))} open")
    return found


def busy_nodes(paths: Iterable[str]) -> list[str]:
    """Block devices the kernel will not open exclusively (O_EXCL): mounted, swap, held — whatever the
    filesystem, including those whose mountinfo entries name no device (btrfs, FUSE)."""
    busy: list[str] = []
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                busy.append(path)
            continue
        os.close(fd)
    return busy


def disk_rows(disks: Iterable[DiskRecord], layout: Layout) -> list[dict[str, object]]:
    """One row per disk: fingerprint and every refusal reason as the disk is now (for tables)."""
    rows: list[dict[str, object]] = []
    for d in disks:
        found = check_disk(d, layout, confirm=d.fingerprint)
        rows.append({"path": d.path, "fingerprint": d.fingerprint, "model": d.model, "size": human(d.size),
                     "table": d.pttype, "partitions": len(d.partitions),
                     "refusals": "; ".join(f"{f.code.value}: {f.message}" for f in found) or "—"})
    return rows
