"""Disk layouts: the seed's 120 GB disk and a scaled-down lab disk.

All sizes are bytes; partitions are aligned to 1 MiB. The last partition may take the rest of
the disk (``size=None``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from enum import Enum

from labkit.core.errors import InputError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SECTOR = 512
ALIGN = 1 * MiB
#: GPT backup header + table at the end of the disk (33 sectors), rounded up to the alignment.
GPT_TAIL = 1 * MiB


class Role(str, Enum):
    ESP = "esp"
    NIXOS_BOOT = "nixos-boot"
    NIX_STORE = "nix-store"
    ALPINE = "alpine"
    DATA = "data"


#: The names users give partitions in ``--size ROLE=SIZE`` (role values, '-' read as '_').
ROLE_KEYS: tuple[str, ...] = tuple(r.value.replace("-", "_") for r in Role)


class FsType(str, Enum):
    VFAT = "vfat"
    EXT4 = "ext4"


@dataclass(frozen=True)
class Partition:
    role: Role
    name: str  # GPT partition name
    size: int | None  # bytes; None = the rest of the disk (last partition only)
    type_code: str  # sgdisk type code: ef00 (ESP) or 8300 (Linux filesystem)
    fs: FsType
    label: str  # filesystem label
    mount_point: str  # where the NixOS install mounts it (under the install root)
    block_size: int = 4096  # ext4 block size: rEFInd's ext4 driver needs 4 KiB


@dataclass(frozen=True)
class Extent:
    """Where a partition lies on a disk of a given size."""

    number: int  # 1-based GPT partition number
    partition: Partition
    start: int  # bytes
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size

    @property
    def start_sector(self) -> int:
        return self.start // SECTOR

    @property
    def end_sector(self) -> int:  # inclusive, as sgdisk prints it
        return self.end // SECTOR - 1


@dataclass(frozen=True)
class Layout:
    name: str
    disk_size: int  # the disk this layout is drawn for (the lab image size, or the seed's 120 GB)
    partitions: tuple[Partition, ...]

    def __post_init__(self) -> None:
        if not self.partitions:
            raise InputError(f"layout {self.name!r} has no partitions", "declare at least an ESP")
        for p in self.partitions[:-1]:
            if p.size is None:
                raise InputError(
                    f"layout {self.name!r}: only the last partition may take the rest of the disk "
                    f"(partition {p.name!r} has no size)",
                    "give every partition but the last an explicit size",
                )
        for p in self.partitions:
            if p.size is not None and (p.size <= 0 or p.size % ALIGN):
                raise InputError(
                    f"layout {self.name!r}: partition {p.name!r} size {p.size} is not a positive "
                    "multiple of 1 MiB",
                    "use sizes in whole MiB (e.g. 512M, 2G)",
                )
            if p.fs is FsType.EXT4 and p.block_size != 4096:
                raise InputError(
                    f"partition {p.name!r}: ext4 block size {p.block_size} — rEFInd's ext4 driver "
                    "only loads files from 4 KiB-block filesystems",
                    "keep block_size=4096",
                )
            if p.fs is FsType.VFAT and len(p.label) > 11:
                raise InputError(f"FAT label {p.label!r} is longer than 11 characters", "shorten it")
            if p.fs is FsType.EXT4 and len(p.label) > 16:
                raise InputError(f"ext4 label {p.label!r} is longer than 16 characters", "shorten it")
        roles = [p.role for p in self.partitions]
        if len(set(roles)) != len(roles):
            raise InputError(f"layout {self.name!r} names a role twice", "one partition per role")
        if Role.ESP not in roles:
            raise InputError(f"layout {self.name!r} has no EFI system partition", "add an ESP (ef00)")
        self.extents(self.disk_size)  # raises if it does not fit

    def min_disk_size(self) -> int:
        fixed = sum(p.size or 0 for p in self.partitions)
        rest = 0 if self.partitions[-1].size is not None else ALIGN
        return ALIGN + fixed + rest + GPT_TAIL

    def extents(self, disk_size: int | None = None) -> tuple[Extent, ...]:
        disk = self.disk_size if disk_size is None else disk_size
        if disk < self.min_disk_size():
            raise InputError(
                f"layout {self.name!r} needs at least {human(self.min_disk_size())}, the disk has "
                f"{human(disk)}",
                "choose a bigger disk or shrink the partitions",
            )
        out: list[Extent] = []
        pos = ALIGN
        usable_end = (disk - GPT_TAIL) // ALIGN * ALIGN
        for i, p in enumerate(self.partitions, start=1):
            size = p.size if p.size is not None else usable_end - pos
            out.append(Extent(i, p, pos, size))
            pos += size
        return tuple(out)

    def extent(self, role: Role, disk_size: int | None = None) -> Extent:
        for e in self.extents(disk_size):
            if e.partition.role is role:
                return e
        raise KeyError(role)

    def partition(self, role: Role) -> Partition:
        for p in self.partitions:
            if p.role is role:
                return p
        raise KeyError(role)

    def with_sizes(self, **sizes: int) -> Layout:
        """A copy with some partitions resized, by role value (``nix_store=8*GiB``)."""
        parts = []
        for p in self.partitions:
            key = p.role.value.replace("-", "_")
            parts.append(replace(p, size=sizes.pop(key)) if key in sizes else p)
        if sizes:
            raise InputError(f"unknown partition role(s): {', '.join(sizes)}", "use esp, nixos_boot, "
                             "nix_store, alpine, data")
        return replace(self, partitions=tuple(parts))

    def describe(self) -> list[dict[str, object]]:
        """Rows for display (notebooks, plan summaries)."""
        return [
            {
                "number": e.number,
                "name": e.partition.name,
                "role": e.partition.role.value,
                "type": e.partition.type_code,
                "fs": e.partition.fs.value,
                "label": e.partition.label,
                "mount": e.partition.mount_point,
                "start": e.start,
                "size": e.size,
                "size_h": human(e.size),
            }
            for e in self.extents()
        ]


def _parts(esp: int, boot: int, nix: int, alpine: int, data: int | None) -> tuple[Partition, ...]:
    return (
        Partition(Role.ESP, "EFI system", esp, "ef00", FsType.VFAT, "ESP", "/boot/efi"),
        Partition(Role.NIXOS_BOOT, "NixOS boot", boot, "8300", FsType.EXT4, "nixboot", "/boot"),
        Partition(Role.NIX_STORE, "Nix store", nix, "8300", FsType.EXT4, "nix", "/nix"),
        Partition(Role.ALPINE, "Alpine", alpine, "8300", FsType.EXT4, "alpine", "/media/alpine"),
        Partition(Role.DATA, "Data", data, "8300", FsType.EXT4, "data", "/data"),
    )


#: The seed's disk: one 120 GB SSD; Alpine is the 4th partition (sda4, its LBU media).
SEED_LAYOUT = Layout(
    name="seed",
    disk_size=120_000_000_000,
    partitions=_parts(512 * MiB, 1 * GiB, 48 * GiB, 8 * GiB, None),
)

#: The QEMU lab disk: same partitions, scaled down; a sparse image file.
LAB_LAYOUT = Layout(
    name="lab",
    disk_size=2 * GiB,
    partitions=_parts(64 * MiB, 128 * MiB, 768 * MiB, 768 * MiB, None),
)

LAYOUTS = {"seed": SEED_LAYOUT, "lab": LAB_LAYOUT}


#: The largest size labkit accepts (64 PiB): anything above is a typo, not a disk.
MAX_SIZE = 64 * 1024**5


def parse_size(text: str) -> int:
    """'512M', '2G', '120GB', '4096' -> bytes (binary units for K/M/G/T; 'GB' is decimal)."""
    t = text.strip().upper().replace(" ", "")
    if not t:
        raise InputError("empty size", "write a size like 512M or 2G")
    units = {
        "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
        "K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB,
        "KIB": KiB, "MIB": MiB, "GIB": GiB, "TIB": 1024 * GiB, "B": 1,
    }
    for suffix in sorted(units, key=len, reverse=True):
        if t.endswith(suffix):
            num = t[: -len(suffix)]
            mult = units[suffix]
            break
    else:
        num, mult = t, 1
    # digits with an optional fraction only: nan, inf and exponents (1e29) are not sizes
    if not re.fullmatch(r"\d{1,20}(?:\.\d{1,9})?", num):
        raise InputError(f"cannot read size {text[:40]!r}", "write a size like 512M, 2G or 120GB") from None
    value = float(num)
    if value <= 0:
        raise InputError(f"size {text!r} is not positive", "write a size like 512M or 2G")
    size = int(value * mult)
    if size > MAX_SIZE:
        raise InputError(f"size {text!r} is more than {MAX_SIZE // 1024**5} PiB, larger than any disk",
                         "write a size like 512M, 2G or 120GB")
    return size


def human(n: int | float) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"
