"""A small, byte-reproducible GNU tar + gzip writer for apkovls.

It follows what busybox ``tar`` (as run by ``lbu commit``) writes: GNU headers (``ustar  ``
magic), numeric owners *and* names (``root``/``shadow``), directory entries with a trailing
slash, no padding to a 10 KiB record, and a gzip header with no name, mtime 0 and OS = Unix.
Unlike :func:`labkit.rehearsal.payloads.reproducible_targz` it keeps per-entry owners (``etc/shadow``
is ``root:shadow`` 0640) and never adds parent directories that were not declared (lbu does not).
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from labkit.core.errors import InputError

#: Fixed mtime for every entry labkit writes (same value as the rehearsal guests' archives).
EPOCH = 1_700_000_000
_KINDS = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}


@dataclass(frozen=True)
class Entry:
    path: str  # relative, no trailing slash ("etc/lbu")
    kind: str  # "file" | "dir" | "symlink"
    mode: int
    data: bytes = b""
    target: str = ""  # symlink target
    uid: int = 0
    gid: int = 0
    uname: str = "root"
    gname: str = "root"

    def __post_init__(self) -> None:
        p = PurePosixPath(self.path)
        if self.kind not in _KINDS:
            raise InputError(f"unknown entry kind {self.kind!r} for {self.path}")
        if not self.path or p.is_absolute() or ".." in p.parts or self.path.endswith("/"):
            raise InputError(f"apkovl entry name {self.path!r} must be a relative path without '..'")


def sort_key(path: str) -> tuple[str, ...]:
    """Parents before children, siblings by name."""
    return tuple(path.split("/"))


def _header(e: Entry, mtime: int) -> bytes:
    ti = tarfile.TarInfo(e.path + ("/" if e.kind == "dir" else ""))
    ti.type = _KINDS[e.kind]
    ti.mode = e.mode
    ti.size = len(e.data) if e.kind == "file" else 0
    ti.linkname = e.target if e.kind == "symlink" else ""
    ti.mtime = mtime
    ti.uid, ti.gid, ti.uname, ti.gname = e.uid, e.gid, e.uname, e.gname
    return ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def tar_bytes(entries: Iterable[Entry], mtime: int = EPOCH) -> bytes:
    items = sorted(entries, key=lambda e: sort_key(e.path))
    seen: set[str] = set()
    out = bytearray()
    for e in items:
        if e.path in seen:
            raise InputError(f"apkovl entry {e.path!r} is declared twice")
        seen.add(e.path)
        out += _header(e, mtime)
        if e.kind == "file" and e.data:
            out += e.data + b"\0" * (-len(e.data) % 512)
    out += b"\0" * 1024  # end-of-archive: two zero blocks (busybox tar adds no record padding)
    return bytes(out)


def gzip_bytes(raw: bytes, level: int = 6) -> bytes:
    """gzip with a fixed header (no name, mtime 0, OS 3 = Unix), like busybox gzip."""
    xfl = 2 if level == 9 else 4 if level == 1 else 0
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 9)
    body = comp.compress(raw) + comp.flush()
    header = b"\x1f\x8b\x08\x00" + b"\0\0\0\0" + bytes([xfl, 3])
    return header + body + struct.pack("<II", zlib.crc32(raw) & 0xFFFFFFFF, len(raw) & 0xFFFFFFFF)


def targz_bytes(entries: Iterable[Entry], mtime: int = EPOCH, level: int = 6) -> bytes:
    return gzip_bytes(tar_bytes(entries, mtime), level)
