"""Image builder: real tools, read back, corruption, plan mode."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from labkit.core.errors import CommandFailed, VerifyFailed
from labkit.core.layout import LAB_LAYOUT, FsType, MiB, Role
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.phases.install import build_image
from labkit.targets.gpt import TYPE_GUIDS, read_gpt
from labkit.targets.image import ImageInfo, content_sha256, verify_image

ESP_FILES: dict[str, bytes | Path] = {
    "EFI/BOOT/BOOTX64.EFI": b"MZ not really rEFInd",
    "EFI/BOOT/refind.conf": b"timeout -1\n",
    "EFI/NixOS/grubx64.efi": b"MZ not really grub",
}


def _trees(tmp: Path) -> dict[Role, Path | None]:
    alp = tmp / "alpine"
    (alp / "boot").mkdir(parents=True)
    (alp / "boot" / "vmlinuz-lts").write_bytes(b"kernel" * 1000)
    (alp / "apks").mkdir()
    (alp / "apks" / ".boot_repository").write_text("")
    data = tmp / "data"
    (data / "etc").mkdir(parents=True)
    (data / "etc" / "hello").write_text("hello\n")
    return {Role.ALPINE: alp, Role.DATA: data, Role.NIX_STORE: None}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ImageInfo:
    tmp = tmp_path_factory.mktemp("img")
    runner = Runner(transcript=tmp / "t.jsonl", progress=None)
    return build_image(runner, LAB_LAYOUT, tmp / "out" / "lab.img", _trees(tmp), ESP_FILES)


def _copy(info: ImageInfo, tmp: Path) -> Path:
    dst = tmp / "copy.img"
    subprocess.run(["cp", "--sparse=always", str(info.path), str(dst)], check=True)
    return dst


def test_image_matches_layout(built: ImageInfo) -> None:
    assert built.size == LAB_LAYOUT.disk_size
    assert [p.label for p in built.partitions] == ["ESP", "nixboot", "nix", "alpine", "data"]
    table = read_gpt(built.path)
    for ext, ent, info in zip(LAB_LAYOUT.extents(), table.entries, built.partitions, strict=True):
        assert (ent.start, ent.size, ent.name) == (ext.start, ext.size, ext.partition.name)
        assert ent.start % MiB == 0
        assert ent.type_guid == TYPE_GUIDS[ext.partition.type_code]
        assert info.part_guid == ent.part_guid and info.fs_uuid
        assert info.block_size == (4096 if ext.partition.fs is FsType.EXT4 else None)
    assert len({p.part_guid for p in built.partitions}) == 5
    assert built.partition(Role.ESP).fs_uuid.count("-") == 1  # FAT volume id XXXX-XXXX
    # sparse: a 2 GiB image holds a few MiB
    assert built.path.stat().st_blocks * 512 < 64 * MiB
    # nothing left behind next to the image but labkit's record of owning it
    assert sorted(p.name for p in built.path.parent.iterdir()) == ["lab.img", "lab.img.labkit.json"]


def test_content_reads_back(built: ImageInfo, runner: Runner) -> None:
    alp = built.offset(Role.ALPINE)
    cat = runner.run(["debugfs", "-R", "cat /boot/vmlinuz-lts", f"{built.path}?offset={alp}"], query=True)
    assert cat.stdout == "kernel" * 1000
    ls = runner.run(["debugfs", "-R", "ls -l /apks", f"{built.path}?offset={alp}"], query=True)
    assert ".boot_repository" in ls.stdout
    esp = built.offset(Role.ESP)
    conf = runner.run(["mtype", "-i", f"{built.path}@@{esp}", "::/EFI/BOOT/refind.conf"],
                      env={"MTOOLS_SKIP_CHECK": "1"}, query=True)
    assert conf.stdout == "timeout -1\n"


def test_digest_ignores_sparseness(tmp_path: Path) -> None:
    sparse, dense = tmp_path / "sparse.img", tmp_path / "dense.img"
    with open(sparse, "wb") as fh:
        fh.truncate(32 * MiB)
        fh.seek(3 * MiB + 17)
        fh.write(b"data")
    dense.write_bytes(sparse.read_bytes())  # every zero written
    assert sparse.stat().st_blocks < dense.stat().st_blocks
    assert content_sha256(dense) == content_sha256(sparse)
    with open(dense, "r+b") as fh:
        fh.seek(30 * MiB)
        fh.write(b"x")
    assert content_sha256(dense) != content_sha256(sparse)


def test_copy_keeps_digest(built: ImageInfo, tmp_path: Path) -> None:
    assert content_sha256(_copy(built, tmp_path)) == built.content_sha256


def test_verify_rejects_broken_superblock(built: ImageInfo, tmp_path: Path, runner: Runner) -> None:
    img = _copy(built, tmp_path)
    with open(img, "r+b") as fh:
        fh.seek(built.offset(Role.ALPINE) + 1024 + 0x38)  # ext4 magic 0xEF53
        fh.write(b"\0\0")
    with pytest.raises(VerifyFailed, match=r"partition 4 \(Alpine\): no filesystem found"):
        verify_image(runner, LAB_LAYOUT, img)


def test_verify_rejects_other_layout(built: ImageInfo, runner: Runner) -> None:
    other = LAB_LAYOUT.with_sizes(alpine=512 * MiB)
    with pytest.raises(VerifyFailed, match=r"partition 4 \(Alpine\) spans .* layout wants"):
        verify_image(runner, other, built.path)


def test_verify_rejects_corrupt_table(built: ImageInfo, tmp_path: Path, runner: Runner) -> None:
    img = _copy(built, tmp_path)
    with open(img, "r+b") as fh:
        fh.seek(2 * 512 + 56)  # name of partition 1 in the primary entry array
        fh.write(b"X")
    with pytest.raises(VerifyFailed, match="entry array CRC mismatch"):
        verify_image(runner, LAB_LAYOUT, img)


def test_verify_rejects_missing_esp_file(built: ImageInfo, runner: Runner) -> None:
    with pytest.raises(VerifyFailed, match=r"ESP file EFI/BOOT/DRIVERS_X64/EXT4_X64\.EFI is missing"):
        verify_image(runner, LAB_LAYOUT, built.path, esp_files=["EFI/BOOT/drivers_x64/ext4_x64.efi"])


def test_failed_build_leaves_no_image(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as fh:
        fh.truncate(80 * MiB)  # more than the 64 MiB ESP holds
    out = tmp_path / "out" / "lab.img"
    runner = Runner(progress=None)
    with pytest.raises(CommandFailed, match="mcopy"):
        build_image(runner, LAB_LAYOUT, out, {}, {"EFI/BOOT/BOOTX64.EFI": big})
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_plan_mode_executes_nothing(tmp_path: Path) -> None:
    runner = Runner(mode=Mode.PLAN, transcript=tmp_path / "t.jsonl", progress=None)
    out = tmp_path / "out" / "lab.img"
    info = build_image(runner, LAB_LAYOUT, out, _trees(tmp_path), ESP_FILES)
    assert info.planned and not out.exists() and not out.parent.exists()
    tools = [c.argv[0] for c in runner.planned]
    # four empty ext4 filesystems, then the two partitions with content made again from their trees
    assert tools.count("mke2fs") == 6
    for tool in ("mkfs.vfat", "mcopy", "truncate", "sgdisk"):
        assert tool in tools
    sg = next(c.argv for c in runner.planned if c.argv[0] == "sgdisk")
    alp = LAB_LAYOUT.extent(Role.ALPINE)
    assert f"--new=4:{alp.start_sector}:{alp.end_sector}" in sg and "--typecode=1:ef00" in sg
    mke2fs = [c.argv for c in runner.planned if c.argv[0] == "mke2fs"]
    assert all(a[a.index("-b") + 1] == "4096" for a in mke2fs)
    records = [r for r in read_transcript(tmp_path / "t.jsonl") if r.get("event") == "command"]
    assert records and not any(r["executed"] for r in records)
