"""Loop-device fixtures for the disk-phase tests (import the fixtures from your test module).

Only /dev/loop0-7 exist here and other tests share them: every device is taken with
``losetup -f --show`` and released at teardown (unmount, swapoff, ``partx -d``, ``losetup -d``),
even when the test failed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labkit.core.layout import GiB

needs_loop = pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
                                reason="needs root and loop devices")


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def _on_device(source: str, device: str) -> bool:
    """``source`` is ``device`` itself or one of its partitions (``/dev/loop1p2``), never ``/dev/loop10``."""
    return source == device or re.fullmatch(re.escape(device) + r"p\d+", source) is not None


def _release(dev: str) -> None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines()[::-1]:
        f = line.split()
        src = line.split(" - ", 1)[1].split()[1] if " - " in line else ""
        if _on_device(src, dev):
            sh("umount", "-l", f[4], check=False)
    for line in Path("/proc/swaps").read_text().splitlines()[1:]:
        if _on_device(line.split()[0], dev):
            sh("swapoff", line.split()[0], check=False)
    sh("partx", "-d", dev, check=False)
    sh("losetup", "-d", dev, check=False)


LoopFactory = Callable[..., str]


@pytest.fixture
def make_loop(tmp_path: Path) -> Iterator[LoopFactory]:
    """``make_loop(size=2*GiB, name="disk.img", read_only=False, sgdisk=None)`` -> /dev/loopN.

    ``sgdisk`` (an argument list) partitions the backing file first; partition nodes are added
    with ``partx -a`` (``losetup -P`` makes none here)."""
    devices: list[str] = []

    def make(size: int = 2 * GiB, name: str = "disk.img", read_only: bool = False,
             sgdisk: list[str] | None = None, backing: Path | None = None) -> str:
        img = backing or tmp_path / name
        if backing is None:
            with open(img, "wb") as fh:
                fh.truncate(size)
        if sgdisk:
            sh("sgdisk", *sgdisk, str(img))
        dev = sh("losetup", "-f", "--show", *(["-r"] if read_only else []), str(img)).stdout.strip()
        devices.append(dev)
        if sgdisk:
            sh("partx", "-a", dev, check=False)
        return dev

    try:
        yield make
    finally:
        for dev in reversed(devices):
            _release(dev)


def mutating_executed(transcript: Path) -> list[dict[str, object]]:
    """Commands of the transcript that were executed and are not read-only queries."""
    if not transcript.exists():
        return []
    events = [json.loads(x) for x in transcript.read_text().splitlines() if x.strip()]
    return [e for e in events if e.get("event") == "command" and e.get("executed") and not e.get("query")]
