"""Block-device discovery and fingerprints.

pyudev enumerates the disks (it works without a udev daemon: the kernel's own properties are
there, the ``ID_*`` ones are not). Each disk is enriched from ``blkid -p -o export`` (partition
table type/UUID, filesystems of its partitions), from sysfs (size, sector sizes, removable,
rotational, read-only, holders, partition start/size), ``/dev/disk/by-id`` (when present),
``/proc/self/mountinfo`` (mounts, by device number) and ``/proc/swaps``. The result is a tree of
frozen records; the udev properties are only a fallback for serial and model.

Fingerprint format (``FINGERPRINT_VERSION`` 1): the first 12 hex digits of
``sha256("labkit-disk-v1|<identity>|<model>|<size bytes>|<PTUUID lower case or ''>")`` where
``<identity>`` is the first by-id link name, else the serial, else (loop devices) the backing
file path, else the kernel name. Shown to humans as ``<fp> (<model>, <size>, <path>)``. A new
partition table has a new PTUUID, so partitioning changes the fingerprint (see
:mod:`labkit.phases.disk` for how a resumed run links the two).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import InputError, VerifyFailed
from labkit.core.layout import SECTOR, human
from labkit.core.runner import Runner
from labkit.targets.gpt import GptEntry, read_gpt

FINGERPRINT_VERSION = 1
SYS_BLOCK = Path("/sys/class/block")
BY_ID = Path("/dev/disk/by-id")


@dataclass(frozen=True)
class UdevDevice:
    """What labkit takes from pyudev (typed; pyudev itself is untyped)."""

    sys_name: str
    node: str
    properties: tuple[tuple[str, str], ...]

    def prop(self, key: str) -> str:
        return dict(self.properties).get(key, "")


@dataclass(frozen=True)
class PartitionRecord:
    path: str
    name: str  # kernel name (loop0p1, sda1, nvme0n1p1)
    number: int
    start: int  # bytes
    size: int  # bytes
    fs_type: str  # '' when blkid finds no filesystem
    label: str
    uuid: str
    fs_block_size: int | None
    part_uuid: str  # lower case
    part_type: str  # lower case GUID
    part_name: str
    mountpoints: tuple[str, ...]
    swap: bool
    holders: tuple[str, ...]


@dataclass(frozen=True)
class DiskRecord:
    path: str
    name: str
    dev: str  # major:minor
    by_id: tuple[str, ...]
    serial: str
    model: str
    size: int  # bytes
    logical_sector: int
    physical_sector: int
    removable: bool
    rotational: bool
    read_only: bool
    pttype: str  # gpt, dos or ''
    ptuuid: str  # lower case or ''
    whole_disk_fs: str  # a filesystem directly on the disk (no table), e.g. ext4 on /dev/vda
    backing_file: str  # loop devices only
    mountpoints: tuple[str, ...]  # of the whole disk
    swap: bool
    holders: tuple[str, ...]
    partitions: tuple[PartitionRecord, ...]  # as the kernel sees them (sysfs + blkid)
    table: tuple[GptEntry, ...] = ()  # as the GPT on the disk says (read directly; may be newer)

    @property
    def identity(self) -> str:
        if self.by_id:
            return self.by_id[0]
        if self.serial:
            return f"serial:{self.serial}"
        if self.backing_file:
            return f"loop-file:{self.backing_file}"
        return f"name:{self.name}"

    @property
    def fingerprint(self) -> str:
        return fingerprint_of(self.identity, self.model, self.size, self.ptuuid)

    def describe(self) -> str:
        return f"{self.fingerprint} ({self.model or '?'}, {human(self.size)}, {self.path})"

    def partition(self, number: int) -> PartitionRecord | None:
        return next((p for p in self.partitions if p.number == number), None)


def fingerprint_of(identity: str, model: str, size: int, ptuuid: str) -> str:
    text = f"labkit-disk-v{FINGERPRINT_VERSION}|{identity}|{model}|{size}|{ptuuid.lower()}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# -- sources ---------------------------------------------------------------------------------
def udev_disks() -> list[UdevDevice]:
    """Disks as pyudev enumerates them (kernel properties only when no udev daemon runs)."""
    import pyudev  # type: ignore[import-untyped]

    out = []
    for d in pyudev.Context().list_devices(subsystem="block", DEVTYPE="disk"):
        out.append(UdevDevice(str(d.sys_name), str(d.device_node or f"/dev/{d.sys_name}"),
                              tuple(sorted((str(k), str(v)) for k, v in d.properties.items()))))
    return out


def blkid(runner: Runner, node: str) -> dict[str, str]:
    """``blkid -p -o export NODE`` as a dict (empty when nothing is found)."""
    res = runner.run(["blkid", "-p", "-o", "export", node], query=True, check=False)
    out = {}
    for ln in res.stdout.splitlines():
        if "=" in ln:
            key, value = ln.split("=", 1)
            out[key] = re.sub(r"\\(.)", r"\1", value)  # export format escapes spaces etc. with '\'
    return out


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _int(path: Path, default: int = 0) -> int:
    try:
        return int(_read(path))
    except ValueError:
        return default


def mounts_by_dev() -> dict[str, tuple[str, ...]]:
    """major:minor -> mount points, from /proc/self/mountinfo."""
    out: dict[str, list[str]] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        f = line.split()
        if len(f) > 4:
            out.setdefault(f[2], []).append(f[4].replace("\\040", " "))
    return {k: tuple(v) for k, v in out.items()}


def active_swaps() -> set[str]:
    """major:minor of every device in /proc/swaps (swap files are skipped)."""
    devs: set[str] = set()
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        try:
            st = os.stat(name)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode):
            devs.add(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return devs


def by_id_links() -> dict[str, tuple[str, ...]]:
    """Kernel name -> /dev/disk/by-id link names (none without udev)."""
    out: dict[str, list[str]] = {}
    if BY_ID.is_dir():
        for link in sorted(BY_ID.iterdir()):
            out.setdefault(Path(os.path.realpath(link)).name, []).append(link.name)
    return {k: tuple(v) for k, v in out.items()}


def partition_node(disk_path: str, number: int) -> str:
    """The name the kernel gives partition ``number`` of ``disk_path`` (/dev/sda1, /dev/loop0p1,
    /dev/nvme0n1p1) — for plans only: labkit writes a partition only through the node sysfs lists for it."""
    return f"{disk_path}{'p' if disk_path[-1:].isdigit() else ''}{number}"


# -- records ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    mounts: dict[str, tuple[str, ...]]
    swaps: set[str]
    links: dict[str, tuple[str, ...]]


def _context() -> _Context:
    return _Context(mounts_by_dev(), active_swaps(), by_id_links())


def _holders(sysdir: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(p.name for p in (sysdir / "holders").iterdir()))
    except OSError:
        return ()


def node_matches(node: str, dev: str) -> bool:
    """``node`` is a block device node with major:minor ``dev`` (never a regular file of the same name)."""
    try:
        st = os.stat(node)
    except OSError:
        return False
    return stat.S_ISBLK(st.st_mode) and f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" == dev


def _partitions(runner: Runner, disk_path: str, sysdir: Path, ctx: _Context) -> tuple[PartitionRecord, ...]:
    """The disk's partitions as the kernel lists them in sysfs; a node that is not the kernel's block device
    (missing, or a file of that name) counts as absent."""
    parts = []
    for child in sorted(sysdir.iterdir()):
        if not (child / "partition").is_file():
            continue
        number = _int(child / "partition")
        node = f"/dev/{child.name}"
        dev = _read(child / "dev")
        if not node_matches(node, dev):
            continue
        info = blkid(runner, node)
        bs = info.get("BLOCK_SIZE")
        parts.append(PartitionRecord(
            path=node, name=child.name, number=number,
            start=_int(child / "start") * SECTOR, size=_int(child / "size") * SECTOR,
            fs_type=info.get("TYPE", ""), label=info.get("LABEL", ""), uuid=info.get("UUID", ""),
            fs_block_size=int(bs) if bs and info.get("TYPE") else None,
            part_uuid=info.get("PART_ENTRY_UUID", "").lower(), part_type=info.get("PART_ENTRY_TYPE", "").lower(),
            part_name=info.get("PART_ENTRY_NAME", ""),
            mountpoints=ctx.mounts.get(dev, ()), swap=dev in ctx.swaps, holders=_holders(child),
        ))
    return tuple(sorted(parts, key=lambda p: p.number))


def _vpd_serial(sysdir: Path) -> str:
    """The unit serial number from SCSI VPD page 0x80 (binary: 4-byte header, then ASCII)."""
    try:
        raw = (sysdir / "device" / "vpd_pg80").read_bytes()
    except OSError:
        return ""
    return raw[4:].decode("ascii", "replace").strip(" \x00")


def _record(runner: Runner, udev: UdevDevice, ctx: _Context) -> DiskRecord:
    sysdir = SYS_BLOCK / udev.sys_name
    q = sysdir / "queue"
    dev = _read(sysdir / "dev")
    info = blkid(runner, udev.node) if os.path.exists(udev.node) else {}
    # without udev, the kernel's own identifiers: NVMe/virtio serial, SCSI/SATA wwid or VPD page 0x80
    serial = (_read(sysdir / "serial") or _read(sysdir / "device" / "serial") or udev.prop("ID_SERIAL_SHORT")
              or _read(sysdir / "device" / "wwid") or _read(sysdir / "wwid") or _vpd_serial(sysdir))
    model = _read(sysdir / "device" / "model") or udev.prop("ID_MODEL")
    backing = _read(sysdir / "loop" / "backing_file")
    if not model and backing:
        model = "loop"
    links = ctx.links.get(udev.sys_name, ()) or tuple(
        Path(x).name for x in udev.prop("DEVLINKS").split() if "/by-id/" in x)
    return DiskRecord(
        path=udev.node, name=udev.sys_name, dev=dev, by_id=links, serial=serial, model=model,
        size=_int(sysdir / "size") * SECTOR,
        logical_sector=_int(q / "logical_block_size", SECTOR), physical_sector=_int(q / "physical_block_size", SECTOR),
        removable=_read(sysdir / "removable") == "1", rotational=_read(q / "rotational") == "1",
        read_only=_read(sysdir / "ro") == "1",
        pttype=info.get("PTTYPE", ""), ptuuid=info.get("PTUUID", "").lower(),
        whole_disk_fs=info.get("TYPE", ""), backing_file=backing,
        mountpoints=ctx.mounts.get(dev, ()), swap=dev in ctx.swaps, holders=_holders(sysdir),
        partitions=_partitions(runner, udev.node, sysdir, ctx),
        table=_table(udev.node) if info.get("PTTYPE") == "gpt" else (),
    )


def _table(node: str) -> tuple[GptEntry, ...]:
    try:
        return read_gpt(Path(node)).entries
    except (OSError, VerifyFailed):
        return ()


def discover(runner: Runner, *, include_empty: bool = False) -> tuple[DiskRecord, ...]:
    """Every disk (empty loop devices and card readers without media are left out)."""
    ctx = _context()
    out = []
    for u in udev_disks():
        if not include_empty and _int(SYS_BLOCK / u.sys_name / "size") == 0:
            continue
        out.append(_record(runner, u, ctx))
    return tuple(sorted(out, key=lambda d: d.name))


class NotABlockDevice(InputError):
    pass


def read_disk(runner: Runner, path: str | os.PathLike[str]) -> DiskRecord:
    """The record of one whole disk; raise :class:`NotABlockDevice` when ``path`` is not one."""
    p = os.fspath(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise NotABlockDevice(f"{p} does not exist", "list the disks with `labkit disks` and pick one") from None
    if not stat.S_ISBLK(st.st_mode):
        raise NotABlockDevice(f"{p} is not a block device",
                              "for an image file attach it first: losetup -f --show FILE (then partx -a)")
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    sysdir = Path(os.path.realpath(f"/sys/dev/block/{dev}"))
    if (sysdir / "partition").is_file():
        raise NotABlockDevice(f"{p} is a partition, not a whole disk",
                              f"give the disk it belongs to: /dev/{sysdir.parent.name}")
    # the disk's own node: /dev/<kernel name> when it is this very device (an alias node someone made, a
    # symlink, a bind: the same disk, but labkit writes and names partitions through the kernel's node)
    canonical = f"/dev/{sysdir.name}"
    try:
        cst = os.stat(canonical)
        node = canonical if stat.S_ISBLK(cst.st_mode) and cst.st_rdev == st.st_rdev else p
    except OSError:
        node = p
    udev = next((u for u in udev_disks() if u.sys_name == sysdir.name),
                UdevDevice(sysdir.name, node, ()))
    return _record(runner, UdevDevice(udev.sys_name, node, udev.properties), _context())


def device_of_path(path: str | os.PathLike[str]) -> str | None:
    """The whole disk (kernel name) holding ``path``'s filesystem, or None (tmpfs, overlay, ...)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    sysdir = Path(os.path.realpath(f"/sys/dev/block/{dev}"))
    if not sysdir.exists() or os.major(st.st_dev) == 0:
        return None
    return sysdir.parent.name if (sysdir / "partition").is_file() else sysdir.name
