"""The disk phase rehearsed on a loop disk labkit makes itself (01_disk's lab target)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit.core.layout import LAB_LAYOUT
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.phases.disk import rehearse_disk_phase

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/loop-control").exists(),
                       reason="needs root and loop devices"),
]


def test_rehearsal_partitions_formats_and_is_idempotent(tmp_path: Path) -> None:
    runner = Runner(Mode.APPLY, tmp_path / "transcript.jsonl", progress=None)
    r = rehearse_disk_phase(runner, LAB_LAYOUT, tmp_path)
    assert any(c.startswith("sgdisk") for c in r.plan) and any("mkfs.ext4" in c for c in r.plan)
    assert r.ran[0] == "partition table" and sum(s.startswith("format") for s in r.ran) == 5
    assert r.ran_again == () and r.destructive_again == ()
    labels = [p.label for p in r.disk.partitions]
    assert labels == [p.label for p in LAB_LAYOUT.partitions]
    # the loop device was released
    import subprocess

    held = subprocess.run(["losetup", "-j", str(r.image)], capture_output=True, text=True).stdout
    assert held.strip() == ""
    executed = [e for e in read_transcript(tmp_path / "transcript.jsonl") if e.get("event") == "command"]
    assert any(e["argv"][0] == "losetup" and e["argv"][1] == "-d" for e in executed)


def test_plan_mode_touches_nothing(tmp_path: Path) -> None:
    runner = Runner(Mode.PLAN, tmp_path / "t.jsonl", progress=None)
    from labkit.targets.loop import loop_disk

    with loop_disk(runner, tmp_path / "x.img", LAB_LAYOUT.disk_size) as dev:
        assert dev == "/dev/loopN"
    assert not (tmp_path / "x.img").exists()
    assert all(not e["executed"] for e in read_transcript(tmp_path / "t.jsonl") if e.get("event") == "command")
