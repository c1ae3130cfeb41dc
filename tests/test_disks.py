"""Discovery without a udev daemon gives the same records as blkid reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest_loop import make_loop, needs_loop, sh  # noqa: F401

from labkit.core.runner import Runner
from labkit.targets.disks import discover, fingerprint_of, partition_node, read_disk, udev_disks

pytestmark = [pytest.mark.root, needs_loop]


def blkid_export(node: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", node, check=False).stdout
    return {k: v.replace("\\ ", " ") for k, v in (ln.split("=", 1) for ln in out.splitlines() if "=" in ln)}


def test_records_match_blkid_without_udev(make_loop) -> None:  # noqa: F811
    dev = make_loop(sgdisk=["--clear", "-n1:2048:+32M", "-t1:ef00", "-c1:EFI system", "-n2:0:+64M", "-c2:root"])
    sh("mkfs.ext4", "-q", "-b", "4096", "-L", "lbl", dev + "p2")
    name = Path(dev).name
    u = next(x for x in udev_disks() if x.sys_name == name)
    if not Path("/run/udev/control").exists():
        assert u.prop("ID_FS_TYPE") == "" and u.prop("ID_PART_TABLE_UUID") == ""  # no udev daemon here
    disk = read_disk(Runner(progress=None), dev)
    assert disk in discover(Runner(progress=None))
    whole = blkid_export(dev)
    assert (disk.pttype, disk.ptuuid) == (whole["PTTYPE"], whole["PTUUID"])
    assert [p.path for p in disk.partitions] == [dev + "p1", dev + "p2"]
    for p in disk.partitions:
        b = blkid_export(p.path)
        assert p.fs_type == b.get("TYPE", "") and p.label == b.get("LABEL", "") and p.uuid == b.get("UUID", "")
        assert (p.part_uuid, p.part_type, p.part_name) == (b["PART_ENTRY_UUID"], b["PART_ENTRY_TYPE"],
                                                          b.get("PART_ENTRY_NAME", ""))
        assert (p.start // 512, p.size // 512) == (int(b["PART_ENTRY_OFFSET"]), int(b["PART_ENTRY_SIZE"]))
    assert disk.partitions[1].fs_block_size == 4096
    assert [e.name for e in disk.table] == ["EFI system", "root"]
    assert disk.size == 2 << 30 and disk.backing_file.endswith("disk.img") and not disk.read_only


def test_fingerprint_stable_and_sensitive(make_loop) -> None:  # noqa: F811
    dev = make_loop()
    r = Runner(progress=None)
    a, b = read_disk(r, dev), read_disk(r, dev)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 12
    assert a.fingerprint == fingerprint_of(a.identity, a.model, a.size, a.ptuuid)
    assert fingerprint_of(a.identity, a.model, a.size, "x") != a.fingerprint
    assert a.fingerprint in a.describe() and "2.0 GiB" in a.describe()


def test_partition_node_names() -> None:
    assert partition_node("/dev/sda", 1) == "/dev/sda1"
    assert partition_node("/dev/nvme0n1", 2) == "/dev/nvme0n1p2"
    assert partition_node("/dev/loop3", 4) == "/dev/loop3p4"
