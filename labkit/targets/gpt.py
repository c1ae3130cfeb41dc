"""Read a GPT partition table from an image file (pure Python, for verification).

Checks the primary header and entry array CRCs and the backup header; returns the table as
frozen records so callers can compare it with a :class:`labkit.core.layout.Layout`.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from labkit.core.errors import VerifyFailed
from labkit.core.layout import SECTOR, Extent

#: sgdisk type codes labkit uses -> GPT partition type GUIDs.
TYPE_GUIDS: dict[str, str] = {
    "ef00": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",  # EFI system partition
    "8300": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",  # Linux filesystem
    "8200": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",  # Linux swap
    "ef02": "21686148-6449-6E6F-744E-656564454649",  # BIOS boot
    "8304": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",  # Linux x86-64 root
}

_HEADER = struct.Struct("<8sIII4xQQQQ16sQIII")


@dataclass(frozen=True)
class GptEntry:
    number: int
    type_guid: str  # upper case
    part_guid: str  # upper case
    first_lba: int
    last_lba: int
    attributes: int
    name: str

    @property
    def start(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR


@dataclass(frozen=True)
class GptTable:
    disk_guid: str
    first_usable_lba: int
    last_usable_lba: int
    backup_lba: int
    entries: tuple[GptEntry, ...]


def _guid(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw)).upper()


def _header(fh: BinaryIO, lba: int, what: str) -> tuple[Any, ...]:
    fh.seek(lba * SECTOR)
    raw = fh.read(SECTOR)
    if len(raw) < _HEADER.size:
        raise VerifyFailed(f"GPT {what} header at LBA {lba} is beyond the end of the image",
                           "rebuild the image")
    fields = _HEADER.unpack_from(raw)
    sig, _rev, hsize, hcrc = fields[0], fields[1], fields[2], fields[3]
    if sig != b"EFI PART":
        raise VerifyFailed(f"no GPT {what} header at LBA {lba} (signature {sig!r})",
                           "the partition table is missing or overwritten: rebuild the image")
    hdr = bytearray(raw[:hsize])
    hdr[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(hdr)) != hcrc:
        raise VerifyFailed(f"GPT {what} header CRC mismatch", "the table is corrupt: rebuild the image")
    return fields


def read_gpt(image: Path) -> GptTable:
    """Parse and check the GPT of ``image``; raise :class:`VerifyFailed` when it is damaged."""
    with open(image, "rb") as fh:
        fields = _header(fh, 1, "primary")
        (_sig, _rev, _hsize, _hcrc, _cur, backup, first_use, last_use, disk_guid,
         entries_lba, n_entries, entry_size, entries_crc) = fields
        fh.seek(entries_lba * SECTOR)
        table = fh.read(n_entries * entry_size)
        if zlib.crc32(table) != entries_crc:
            raise VerifyFailed("GPT partition entry array CRC mismatch", "the table is corrupt: rebuild the image")
        _header(fh, backup, "backup")
    entries: list[GptEntry] = []
    for i in range(n_entries):
        raw = table[i * entry_size:(i + 1) * entry_size]
        if raw[:16] == bytes(16):
            continue
        first, last, attrs = struct.unpack_from("<QQQ", raw, 32)
        name = raw[56:128].decode("utf-16-le").split("\0", 1)[0]
        entries.append(GptEntry(i + 1, _guid(raw[:16]), _guid(raw[16:32]), first, last, attrs, name))
    return GptTable(_guid(disk_guid), first_use, last_use, backup, tuple(entries))


def table_problems(entries: tuple[GptEntry, ...], extents: tuple[Extent, ...]) -> list[str]:
    """Every difference between a partition table and a layout's extents (numbers, positions, sizes,
    types, names): empty when the table is exactly the layout's."""
    by_num = {e.number: e for e in entries}
    problems: list[str] = []
    if set(by_num) != {e.number for e in extents}:
        problems.append(f"partition numbers {sorted(by_num)}, the layout wants {[e.number for e in extents]}")
    for ext in extents:
        ent, p = by_num.get(ext.number), ext.partition
        if ent is None:
            continue
        if (ent.start, ent.size) != (ext.start, ext.size):
            problems.append(f"partition {ext.number} ({p.name}) spans {ent.start}+{ent.size}, the layout wants "
                            f"{ext.start}+{ext.size}")
        want_type = TYPE_GUIDS.get(p.type_code.lower())
        if want_type is not None and ent.type_guid != want_type:
            problems.append(f"partition {ext.number} has type {ent.type_guid}, the layout wants {p.type_code}")
        if ent.name != p.name:
            problems.append(f"partition {ext.number} is named {ent.name!r}, the layout wants {p.name!r}")
    return problems
