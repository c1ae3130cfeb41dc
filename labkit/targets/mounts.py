"""Mount state read from ``/proc/self/mountinfo``, for paths under an install root."""

from __future__ import annotations

import os
import re
from pathlib import Path

from labkit.core.errors import VerifyFailed

_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_table(mountinfo: Path = Path("/proc/self/mountinfo")) -> dict[str, tuple[str, str]]:
    """mount point -> (fstype, source); a later (upper) mount hides an earlier one."""
    return mount_table_of(mountinfo.read_text())


def mounted_fstype_in(mountinfo_text: str, path: Path) -> str | None:
    """The filesystem type mounted exactly at ``path`` in a mountinfo text (any machine's), or None."""
    entry = mount_table_of(mountinfo_text).get(os.path.normpath(str(path)))
    return entry[0] if entry is not None else None


def mount_table_of(text: str) -> dict[str, tuple[str, str]]:
    """:func:`mount_table` of a mountinfo text."""
    table: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        rest = right.split()
        table[_unescape(fields[4])] = (rest[0] if rest else "", _unescape(rest[1]) if len(rest) > 1 else "")
    return table


def mounted_fstype(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The filesystem type mounted exactly at ``path``, or None."""
    entry = mount_table(mountinfo).get(os.path.normpath(str(path)))
    return entry[0] if entry is not None else None


def require_mounted(root: Path, mount_point: str, mountinfo: Path = Path("/proc/self/mountinfo"),
                    *, why: str = "") -> str:
    """Raise :class:`VerifyFailed` unless ``root/mount_point`` is a mount point."""
    target = Path(os.path.normpath(f"{root}/{mount_point.lstrip('/')}"))
    fstype = mounted_fstype(target, mountinfo)
    if fstype is None:
        raise VerifyFailed(
            f"{mount_point} is not mounted at {target} (checked {mountinfo}){': ' + why if why else ''}",
            f"mount the {mount_point} partition there first (the 'mount partitions' step), then run this step again",
        )
    return fstype
