"""Data and devices (issue: safety): every case reproduced on loop disks, each refused before any command
touches the disk."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from conftest_loop import make_loop, mutating_executed, needs_loop, sh  # noqa: F401

from labkit.core.errors import VerifyFailed
from labkit.core.layout import LAB_LAYOUT, MiB, Role
from labkit.core.runner import Runner
from labkit.phases.disk import DiskParams, run_disk_phase
from labkit.phases.install import build_image
from labkit.targets.disks import read_disk
from labkit.targets.image import ImageTarget, fs_problems
from labkit.targets.safety import Code, Refused

pytestmark = [pytest.mark.root, needs_loop]


def _fp(dev: str) -> str:
    return read_disk(Runner(progress=None), dev).fingerprint


def _digest(path: str, offset: int = 0, size: int = 8 * MiB) -> str:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(size)).hexdigest()


def _partitioned(tmp_path: Path, make_loop) -> tuple[str, Path]:  # noqa: F811
    dev = make_loop()
    state = tmp_path / "disk-state.json"
    run_disk_phase(Runner(transcript=tmp_path / "first.jsonl", progress=None),
                   DiskParams(dev, LAB_LAYOUT, _fp(dev), state_path=state))
    return dev, state


def test_a_damaged_filesystem_is_never_formatted_again_without_wipe(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev, state = _partitioned(tmp_path, make_loop)
    data = read_disk(Runner(progress=None), dev).partition(5)
    assert data is not None
    with open(data.path, "r+b") as fh:  # a file on /data, then its superblock zeroed
        fh.seek(4 * MiB)
        fh.write(b"precious bytes")
        fh.seek(1024)
        fh.write(bytes(1024))
    before = _digest(data.path)
    t = tmp_path / "again.jsonl"
    with pytest.raises(Refused) as info:
        run_disk_phase(Runner(transcript=t, progress=None), DiskParams(dev, LAB_LAYOUT, _fp(dev), state_path=state))
    assert info.value.codes == {Code.FOREIGN_FILESYSTEM} and "recoverable" in str(info.value)
    assert mutating_executed(t) == [] and _digest(data.path) == before


def test_an_empty_partition_under_a_table_labkit_did_not_write_is_data(tmp_path: Path, make_loop) -> None:  # noqa: F811
    from labkit.targets.image import sgdisk_args

    dev = make_loop()
    sh("sgdisk", *sgdisk_args(LAB_LAYOUT.extents()), dev)  # someone else's table, exactly the layout's
    sh("partx", "-a", dev, check=False)
    t = tmp_path / "t.jsonl"
    with pytest.raises(Refused) as info:
        run_disk_phase(Runner(transcript=t, progress=None),
                       DiskParams(dev, LAB_LAYOUT, _fp(dev), state_path=tmp_path / "none.json"))
    assert info.value.codes == {Code.FOREIGN_FILESYSTEM} and "did not write this partition table" in str(info.value)
    assert mutating_executed(t) == [] or all(e["argv"][0] == "partx" for e in mutating_executed(t))


def test_a_loop_device_over_a_partition_is_seen(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev, state = _partitioned(tmp_path, make_loop)
    part = read_disk(Runner(progress=None), dev).partition(5)
    assert part is not None
    inner = sh("losetup", "-f", "--show", part.path).stdout.strip()
    try:
        t = tmp_path / "t.jsonl"
        with pytest.raises(Refused) as info:
            run_disk_phase(Runner(transcript=t, progress=None),
                           DiskParams(dev, LAB_LAYOUT, _fp(dev), wipe=True, state_path=state))
        assert Code.IN_USE in info.value.codes and inner in str(info.value)
        assert mutating_executed(t) == []
    finally:
        sh("losetup", "-d", inner, check=False)


def test_a_partition_held_open_by_a_process_is_seen(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev, state = _partitioned(tmp_path, make_loop)
    part = read_disk(Runner(progress=None), dev).partition(3)
    assert part is not None
    holder = subprocess.Popen(["python3", "-c", f"f = open({part.path!r}, 'rb'); print('open', flush=True); "
                               "import time; time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"  # it holds it now
        t = tmp_path / "t.jsonl"
        with pytest.raises(Refused) as info:
            run_disk_phase(Runner(transcript=t, progress=None),
                           DiskParams(dev, LAB_LAYOUT, _fp(dev), wipe=True, state_path=state))
        assert Code.IN_USE in info.value.codes and f"pid {holder.pid}" in str(info.value)
        assert mutating_executed(t) == []
    finally:
        holder.kill()
        holder.wait()


def test_an_alias_node_never_makes_labkit_write_a_file_beside_it(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    st = os.stat(dev)
    alias_dir = tmp_path / "x"
    alias_dir.mkdir()
    alias = alias_dir / "disk"
    os.mknod(alias, 0o600 | 0o060000, st.st_rdev)  # a block node of the same disk under another name
    res = run_disk_phase(Runner(transcript=tmp_path / "t.jsonl", progress=None),
                         DiskParams(str(alias), LAB_LAYOUT, _fp(dev), state_path=tmp_path / "s.json"))
    assert res.disk is not None and res.disk.path == dev  # the kernel's own node
    assert sorted(p.name for p in alias_dir.iterdir()) == ["disk"]  # no disk1, disk2 ... files
    argvs = [e["argv"] for e in mutating_executed(tmp_path / "t.jsonl")]
    assert any(a[0] == "mkfs.ext4" and a[-1] == f"{dev}p4" for a in argvs)


def test_verify_catches_a_filesystem_bigger_than_its_partition(tmp_path: Path) -> None:
    runner = Runner(progress=None)
    info = build_image(runner, LAB_LAYOUT, tmp_path / "lab.img", {}, {"EFI/BOOT/x": b"x"})
    target = ImageTarget(runner, LAB_LAYOUT, info.path)
    ext = target.extent(Role.ALPINE)
    sh("mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "alpine", "-E", f"offset={ext.start}",
       str(info.path), f"{(ext.size + 64 * MiB) // 1024}k")  # 64 MiB past the partition's end
    problems = fs_problems(runner, ext, target.fs_info(ext), target.spec(Role.ALPINE))
    assert any("larger than its" in p for p in problems), problems
    with pytest.raises(VerifyFailed, match="larger than its"):
        from labkit.phases.disk import verify_layout

        verify_layout(target)
