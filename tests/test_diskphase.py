"""Apply on a real loop device: partition + format, read back, idempotent, resumable, mounts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest_loop import make_loop, mutating_executed, needs_loop, sh  # noqa: F401

from labkit.core.layout import LAB_LAYOUT
from labkit.core.runner import Mode, Runner
from labkit.phases.disk import (
    DiskParams,
    EspMountUnsupported,
    device_target,
    disk_steps,
    kernel_filesystems,
    mount_install,
    plan_disk_phase,
    run_disk_phase,
    unmount_install,
)
from labkit.targets.disks import read_disk
from labkit.targets.image import verify_image
from labkit.targets.safety import Code, Refused

pytestmark = [pytest.mark.root, needs_loop]


def fp(dev: str) -> str:
    return read_disk(Runner(progress=None), dev).fingerprint


def test_plan_mode_executes_nothing(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    res = plan_disk_phase(DiskParams(dev, LAB_LAYOUT, fp(dev)), transcript=tmp_path / "t.jsonl")
    assert mutating_executed(tmp_path / "t.jsonl") == []
    tools = [c.argv[0] for c in res.mutating]
    assert tools[0] == "sgdisk" and tools.count("mkfs.ext4") == 4 and tools.count("mkfs.vfat") == 1
    assert read_disk(Runner(progress=None), dev).pttype == ""  # untouched
    assert not (tmp_path / "disk-state.json").exists()


def test_apply_reads_back_equal_to_layout_and_is_idempotent(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    confirmed = fp(dev)
    t1 = tmp_path / "run1.jsonl"
    res = run_disk_phase(Runner(transcript=t1, progress=None), DiskParams(dev, LAB_LAYOUT, confirmed))
    assert res.disk is not None and res.skipped == ()
    rows = [(p.number, p.part_name, p.start, p.size, p.fs_type, p.label, p.fs_block_size)
            for p in res.disk.partitions]
    want = [(e.number, e.partition.name, e.start, e.size, e.partition.fs.value, e.partition.label,
             4096 if e.partition.fs.value == "ext4" else 512) for e in LAB_LAYOUT.extents()]
    assert rows == want
    argvs = [e["argv"] for e in mutating_executed(t1)]
    assert ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "alpine", dev + "p4"] in argvs
    # independent read-back of the backing file through the image verifier (blkid -O, dumpe2fs)
    backing = Path(res.disk.backing_file)
    info = verify_image(Runner(progress=None), LAB_LAYOUT, backing)
    assert info.disk_guid.lower() == res.disk.ptuuid
    # second run: the confirmed (pre-partitioning) fingerprint still works through the state file
    t2 = tmp_path / "run2.jsonl"
    again = run_disk_phase(Runner(transcript=t1.parent / "run2.jsonl", progress=None),
                           DiskParams(dev, LAB_LAYOUT, confirmed, state_path=tmp_path / "disk-state.json"))
    assert again.ran == () and mutating_executed(t2) == []
    # and so does the new fingerprint, without any state; --wipe does not re-wipe a finished disk
    t3 = tmp_path / "run3.jsonl"
    third = run_disk_phase(Runner(transcript=t3, progress=None),
                           DiskParams(dev, LAB_LAYOUT, res.disk.fingerprint, wipe=True, state_path=tmp_path / "x"))
    assert third.ran == () and mutating_executed(t3) == []


def test_killed_after_partitioning_resumes(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    confirmed = fp(dev)
    t = tmp_path / "t.jsonl"
    target = device_target(Runner(transcript=t, progress=None), DiskParams(dev, LAB_LAYOUT, confirmed))
    disk_steps(target)[0].apply()  # sgdisk ran; "killed" before partition nodes and mkfs
    state = json.loads((tmp_path / "disk-state.json").read_text())
    assert state["confirmed"] == confirmed
    after = read_disk(Runner(progress=None), dev)
    assert after.fingerprint == state["fingerprint_after"] != confirmed
    assert after.partitions == ()  # no nodes yet (no udev)
    res = run_disk_phase(Runner(transcript=t, progress=None), DiskParams(dev, LAB_LAYOUT, confirmed))
    assert res.skipped == ("partition table",) and len(res.ran) == 6  # nodes, 5 formats
    assert res.disk is not None and [p.label for p in res.disk.partitions] == ["ESP", "nixboot", "nix", "alpine",
                                                                                 "data"]


def test_killed_without_state_file_needs_the_new_fingerprint(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop()
    confirmed = fp(dev)
    target = device_target(Runner(progress=None), DiskParams(dev, LAB_LAYOUT, confirmed))  # no transcript: no state
    disk_steps(target)[0].apply()
    t = tmp_path / "t.jsonl"
    with pytest.raises(Refused) as info:
        run_disk_phase(Runner(transcript=t, progress=None), DiskParams(dev, LAB_LAYOUT, confirmed))
    assert info.value.codes == {Code.FINGERPRINT_MISMATCH} and mutating_executed(t) == []
    # with the new fingerprint the table is accepted, but nothing proves labkit wrote it (the state file is
    # gone): its empty partitions may be damaged data, so formatting them needs --wipe
    t2 = tmp_path / "t2.jsonl"
    with pytest.raises(Refused) as again:
        run_disk_phase(Runner(transcript=t2, progress=None), DiskParams(dev, LAB_LAYOUT, fp(dev)))
    assert again.value.codes == {Code.FOREIGN_FILESYSTEM}
    assert [e["argv"][0] for e in mutating_executed(t2)] in ([], ["partx", "partx"])  # nodes only, no mkfs
    res = run_disk_phase(Runner(transcript=t2, progress=None), DiskParams(dev, LAB_LAYOUT, fp(dev), wipe=True))
    assert res.skipped[:1] == ("partition table",) and res.disk is not None


def test_wipe_replaces_foreign_partitions(tmp_path: Path, make_loop) -> None:  # noqa: F811
    dev = make_loop(sgdisk=["--clear", "-n1:2048:+32M", "-n2:0:+64M"])
    sh("mkfs.ext4", "-q", "-L", "old", dev + "p2")
    t = tmp_path / "t.jsonl"
    res = run_disk_phase(Runner(transcript=t, progress=None), DiskParams(dev, LAB_LAYOUT, fp(dev), wipe=True))
    assert res.disk is not None and len(res.disk.partitions) == 5
    tools = [e["argv"][:2] for e in mutating_executed(t)]
    assert ["sgdisk", "--zap-all"] in tools and ["wipefs", "-a"] in tools


@pytest.fixture
def finished(tmp_path: Path, make_loop) -> str:  # noqa: F811
    dev = make_loop()
    run_disk_phase(Runner(progress=None), DiskParams(dev, LAB_LAYOUT, fp(dev)))
    return dev


def _mounted(root: Path) -> list[str]:
    return [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()
            if ln.split()[4].startswith(str(root))]


def test_mounts_for_the_install(tmp_path: Path, finished: str) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    runner = Runner(transcript=tmp_path / "m.jsonl", progress=None)
    mounted = mount_install(runner, finished, LAB_LAYOUT, root, tmpfs_size="64M", esp=False)
    try:
        assert [str(m) for m in mounted] == [str(root), f"{root}/boot", f"{root}/nix", f"{root}/data"]
        assert _mounted(root) == [str(m) for m in mounted]
        assert (root / "boot" / "lost+found").is_dir()
    finally:
        unmount_install(runner, mounted)
    assert _mounted(root) == []


def test_esp_mount_reports_missing_vfat_and_unwinds(tmp_path: Path, finished: str) -> None:
    if "vfat" in kernel_filesystems():
        pytest.skip("this kernel mounts vfat")
    root = tmp_path / "mnt"
    root.mkdir()
    t = tmp_path / "m.jsonl"
    with pytest.raises(EspMountUnsupported, match="cannot mount FAT"):
        mount_install(Runner(transcript=t, progress=None), finished, LAB_LAYOUT, root, tmpfs_size="64M")
    assert _mounted(root) == []
    umounts = [e["argv"][1] for e in mutating_executed(t) if e["argv"][0] == "umount"]
    assert umounts == [f"{root}/data", f"{root}/nix", f"{root}/boot", str(root)]  # reverse order


def test_mount_plan_mode_records_only(tmp_path: Path, finished: str) -> None:
    root = tmp_path / "mnt"
    runner = Runner(mode=Mode.PLAN, transcript=tmp_path / "p.jsonl", progress=None)
    mount_install(runner, finished, LAB_LAYOUT, root, esp=False)
    assert mutating_executed(tmp_path / "p.jsonl") == [] and not root.exists()
    assert [c.argv[0] for c in runner.planned if not c.query] == ["mount"] * 4


def test_a_filesystem_labkit_did_not_make_is_never_reformatted_without_wipe(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """Review finding: after a finished run, the user puts their own filesystem on a partition;
    running the same command again must refuse, not reformat it (the partition table is labkit's,
    the filesystem is not)."""
    dev = make_loop()
    confirmed = fp(dev)
    state = tmp_path / "disk-state.json"
    run_disk_phase(Runner(transcript=tmp_path / "r1.jsonl", progress=None),
                   DiskParams(dev, LAB_LAYOUT, confirmed, state_path=state))
    sh("mkfs.ext4", "-q", "-F", "-L", "mydata", dev + "p5")
    t2 = tmp_path / "r2.jsonl"
    with pytest.raises(Refused) as exc:
        run_disk_phase(Runner(transcript=t2, progress=None), DiskParams(dev, LAB_LAYOUT, confirmed, state_path=state))
    assert Code.FOREIGN_FILESYSTEM in [f.code for f in exc.value.findings]
    assert "mydata" in str(exc.value) and "--wipe" in str(exc.value)
    assert mutating_executed(t2) == []
    assert read_disk(Runner(progress=None), dev).partition(5).label == "mydata"  # untouched
    # the recorded state lists exactly the filesystems labkit made
    recorded = json.loads(state.read_text())["formatted"]
    assert len(recorded) == 5


def test_a_run_killed_during_the_wipe_resumes(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """Review finding: the state is written before the wipe, so a run killed after `sgdisk --zap-all`
    (blank disk, new fingerprint) resumes with the fingerprint the user confirmed."""
    dev = make_loop(sgdisk=["-n", "1:2048:+100M", "-t", "1:8300"])
    confirmed = fp(dev)
    state = tmp_path / "disk-state.json"
    runner = Runner(transcript=tmp_path / "t.jsonl", progress=None)
    real_run = runner.run

    def killed_before_the_new_table(argv, **kw):  # type: ignore[no-untyped-def]
        if argv[0] == "sgdisk" and any(str(a).startswith("--disk-guid=") for a in argv):
            raise KeyboardInterrupt  # the user pressed Ctrl-C right after the wipe
        return real_run(argv, **kw)

    runner.run = killed_before_the_new_table  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        run_disk_phase(runner, DiskParams(dev, LAB_LAYOUT, confirmed, wipe=True, state_path=state))
    sh("partx", "-d", dev, check=False)
    blank = read_disk(Runner(progress=None), dev)
    assert blank.pttype == "" and blank.fingerprint != confirmed
    assert json.loads(state.read_text())["fingerprint_blank"] == blank.fingerprint
    res = run_disk_phase(Runner(transcript=tmp_path / "t2.jsonl", progress=None),
                         DiskParams(dev, LAB_LAYOUT, confirmed, wipe=True, state_path=state))
    assert res.disk is not None and [p.label for p in res.disk.partitions] == [p.label for p in LAB_LAYOUT.partitions]
    # another disk confirmed with that fingerprint is still refused: the state names this device
    other = make_loop(name="other.img")
    with pytest.raises(Refused):
        run_disk_phase(Runner(progress=None), DiskParams(other, LAB_LAYOUT, confirmed, state_path=state))


def test_a_partition_held_open_exclusively_is_refused(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """Mounts that mountinfo does not tie to the device (btrfs, FUSE) still hold the block device:
    the kernel's exclusive-open refusal catches them."""
    dev = make_loop(sgdisk=["-n", "1:2048:+100M", "-t", "1:8300"])
    sh("partx", "-a", dev, check=False)
    fd = os.open(dev + "p1", os.O_RDONLY | os.O_EXCL)
    try:
        t = tmp_path / "t.jsonl"
        with pytest.raises(Refused) as exc:
            run_disk_phase(Runner(transcript=t, progress=None), DiskParams(dev, LAB_LAYOUT, fp(dev), wipe=True))
        assert Code.BUSY in [f.code for f in exc.value.findings] and dev + "p1" in str(exc.value)
        assert mutating_executed(t) == []
    finally:
        os.close(fd)
