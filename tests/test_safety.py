"""Refusal matrix on real loop devices and image files: each case asserts the refusal and a
transcript with zero destructive commands executed."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from conftest_loop import make_loop, mutating_executed, needs_loop, sh  # noqa: F401

from labkit.core.layout import LAB_LAYOUT, MiB
from labkit.core.runner import Runner
from labkit.phases.disk import DiskParams, device_target, run_disk_phase
from labkit.targets.disks import read_disk
from labkit.targets.safety import Code, Refused, check_disk, protected_paths, system_disks

pytestmark = [pytest.mark.root, needs_loop]

FOREIGN = ["--clear", "-n1:2048:+32M", "-t1:8300", "-n2:0:+64M", "-t2:8300"]


def refuse(tmp_path: Path, device: str, confirm: str | None, **kw: object) -> Refused:
    transcript = tmp_path / "t.jsonl"
    runner = Runner(transcript=transcript, progress=None)
    with pytest.raises(Refused) as info:
        run_disk_phase(runner, DiskParams(device, LAB_LAYOUT, confirm, **kw))  # type: ignore[arg-type]
    assert mutating_executed(transcript) == []
    assert "REFUSED" in transcript.read_text()
    return info.value


def fp(dev: str) -> str:
    return read_disk(Runner(progress=None), dev).fingerprint


def test_missing_device(tmp_path: Path) -> None:
    r = refuse(tmp_path, "/dev/labkit-no-such-disk", "0" * 12)
    assert r.codes == {Code.NOT_FOUND} and "does not exist" in str(r)


def test_image_file_is_not_a_block_device(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    os.truncate(img, 2 << 30)
    r = refuse(tmp_path, str(img), "0" * 12)
    assert r.codes == {Code.NOT_BLOCK} and "losetup -f --show" in str(r)


def test_partition_is_not_a_disk(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(sgdisk=FOREIGN)
    r = refuse(tmp_path, dev + "p1", "0" * 12)
    assert r.codes == {Code.NOT_BLOCK} and f"give the disk it belongs to: {dev}" in str(r)


def test_not_confirmed(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    r = refuse(tmp_path, dev, None)
    assert r.codes == {Code.NOT_CONFIRMED} and f"--confirm {fp(dev)}" in str(r)


def test_fingerprint_mismatch(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    r = refuse(tmp_path, dev, "deadbeef0000")
    assert r.codes == {Code.FINGERPRINT_MISMATCH} and "changed, swapped or renamed" in str(r)


def test_disk_swapped_under_the_same_name(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """nvme0/nvme1 swapped between boots: the name is the same, the disk is not."""
    dev = make_loop(name="a.img")
    confirmed = fp(dev)
    sh("losetup", "-d", dev)
    dev2 = make_loop(name="b.img")
    if dev2 != dev:
        pytest.skip("another test took the loop device in between")
    r = refuse(tmp_path, dev2, confirmed)
    assert Code.FINGERPRINT_MISMATCH in r.codes


def test_existing_partitions_need_wipe(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(sgdisk=FOREIGN)
    r = refuse(tmp_path, dev, fp(dev))
    assert r.codes == {Code.HAS_PARTITIONS} and f"--wipe --confirm {fp(dev)}" in str(r)


def test_mounted_partition(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(sgdisk=FOREIGN)
    sh("mkfs.ext4", "-q", dev + "p2")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", dev + "p2", str(mnt))
    try:
        r = refuse(tmp_path, dev, fp(dev), wipe=True)
        assert r.codes == {Code.MOUNTED} and f"{dev}p2 on {mnt}" in str(r) and "umount" in str(r)
    finally:
        sh("umount", str(mnt), check=False)


def test_active_swap(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(sgdisk=FOREIGN)
    sh("mkswap", dev + "p1")
    sh("swapon", dev + "p1")
    try:
        r = refuse(tmp_path, dev, fp(dev), wipe=True)
        assert r.codes == {Code.SWAP} and f"swapoff {dev}p1" in str(r)
    finally:
        sh("swapoff", dev + "p1", check=False)


def test_read_only(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(read_only=True)
    r = refuse(tmp_path, dev, fp(dev))
    assert r.codes == {Code.READ_ONLY} and "read-only" in str(r)


def test_too_small(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(size=512 * MiB)
    r = refuse(tmp_path, dev, fp(dev))
    assert r.codes == {Code.TOO_SMALL} and "needs" in str(r)


def test_disk_holding_labkit_files(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """A disk holding a protected path (here: a mounted partition standing in for / or sys.prefix)."""
    dev = make_loop(sgdisk=FOREIGN)
    sh("mkfs.ext4", "-q", dev + "p2")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    sh("mount", dev + "p2", str(mnt))
    try:
        r = refuse(tmp_path, dev, fp(dev), wipe=True, protected=(str(mnt),))
        assert Code.SYSTEM_DISK in r.codes and f"holds {mnt}" in str(r)
    finally:
        sh("umount", str(mnt), check=False)


def test_root_disk_of_this_machine(tmp_path: Path) -> None:
    disks = system_disks(protected_paths())
    if not disks:
        pytest.skip("/ is not on a block device here")
    name = next(iter(disks))
    dev = f"/dev/{name}"
    r = refuse(tmp_path, dev, fp(dev), wipe=True)
    assert Code.SYSTEM_DISK in r.codes


def test_foreign_filesystem_on_a_matching_table(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """The table is the layout but labkit did not write it: a filesystem on it is not ours to format."""
    from labkit.targets.image import sgdisk_args

    dev = make_loop(sgdisk=sgdisk_args(LAB_LAYOUT.extents()))
    sh("mkfs.ext4", "-q", "-L", "precious", dev + "p1")
    r = refuse(tmp_path, dev, fp(dev))
    assert r.codes == {Code.FOREIGN_FILESYSTEM} and "did not create" in str(r)


def test_holder_and_removable_rules(make_loop) -> None:  # noqa: F811
    """No device-mapper in this kernel: the holder/removable rules run on a real record, altered."""
    dev = make_loop()
    disk = read_disk(Runner(progress=None), dev)
    held = dataclasses.replace(disk, holders=("dm-0",))
    f = check_disk(held, LAB_LAYOUT, confirm=disk.fingerprint)
    assert [x.code for x in f] == [Code.HOLDER] and "vgchange -an" in f[0].fix
    rem = dataclasses.replace(disk, removable=True)
    assert [x.code for x in check_disk(rem, LAB_LAYOUT, confirm=disk.fingerprint)] == [Code.REMOVABLE]
    assert check_disk(rem, LAB_LAYOUT, confirm=disk.fingerprint, allow_removable=True) == []


def test_clean_disk_passes(make_loop) -> None:  # noqa: F811
    dev = make_loop()
    target = device_target(Runner(progress=None), DiskParams(dev, LAB_LAYOUT, fp(dev)))
    assert target.disk is not None and target.disk.path == dev
