"""A disposable disk for rehearsing the disk phase: a sparse image file behind a loop device.

The disk phase (:mod:`labkit.phases.disk`) runs unchanged on it — the same discovery, safety
rules, fingerprint confirmation, sgdisk, partition nodes, mkfs and read-back — so the ``lab``
target of ``01_disk`` shows the real commands working on a real block device that labkit made
itself. Partition nodes come from ``partx`` (``losetup -P`` makes none on some kernels).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.core.errors import LabkitError
from labkit.core.runner import Mode, Runner

if TYPE_CHECKING:
    pass


def _on_device(source: str, device: str) -> bool:
    """``source`` is ``device`` itself or one of its partitions (``/dev/loop1p2``), never ``/dev/loop10``."""
    return source == device or re.fullmatch(re.escape(device) + r"p\d+", source) is not None


def _release(runner: Runner, device: str) -> None:
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        fields = line.split()
        source = line.split(" - ", 1)[1].split()[1] if " - " in line else ""
        if _on_device(source, device):
            runner.run(["umount", fields[4]], check=False)
    runner.run(["partx", "-d", device], check=False)
    runner.run(["losetup", "-d", device], check=False)


@contextlib.contextmanager
def loop_disk(runner: Runner, image: Path, size: int) -> Iterator[str]:
    """Create ``image`` (sparse, ``size`` bytes) if missing, attach it, yield ``/dev/loopN``, detach.

    Needs root and a free loop device; both are checked with a clear error first.
    """
    if runner.mode is Mode.PLAN:
        runner.run(["truncate", "-s", str(size), image])
        runner.run(["losetup", "-f", "--show", image])
        yield "/dev/loopN"
        return
    if os.geteuid() != 0:
        raise LabkitError("a loop device needs root", "run the disk rehearsal as root (sudo)")
    if not Path("/dev/loop-control").exists():
        raise LabkitError("this kernel offers no loop devices (/dev/loop-control is missing)",
                          "load the loop module (modprobe loop) or rehearse on a machine that has it")
    image.parent.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        runner.run(["truncate", "-s", str(size), image])
    device = runner.run(["losetup", "-f", "--show", image]).stdout.strip()
    if not device.startswith("/dev/loop"):
        raise LabkitError(f"losetup gave no loop device for {image}: {device!r}",
                          "free a loop device (losetup -D detaches unused ones) and try again")
    try:
        yield device
    finally:
        _release(runner, device)
