"""Shared fixtures: a quiet runner, the test kernel, and one lab image with a two-entry boot chain."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from _guest import Entry, fetch_kernel, make_initrd

from labkit.core.layout import LAB_LAYOUT, Role
from labkit.core.runner import Runner
from labkit.phases.install import build_image
from labkit.systems import bootchain
from labkit.targets.image import ImageInfo

ALPINE_MARKER = "LABKIT-TEST-ALPINE-MARKER"
NIXOS_MARKER = "LABKIT-TEST-NIXOS-MARKER"
HANG_MARKER = "LABKIT-TEST-HANG-MARKER"
HANG_TAIL = "partial-line-without-newline"


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(transcript=tmp_path / "transcript.jsonl", progress=None)


@pytest.fixture(scope="session")
def test_kernel() -> Path:
    got = fetch_kernel(Runner(progress=None))
    if isinstance(got, str):
        pytest.skip(got)
    return got


@dataclass(frozen=True)
class ChainImage:
    path: Path
    info: ImageInfo
    alpine: Entry
    nixos: Entry
    hang: Entry
    runner: Runner


@pytest.fixture(scope="session")
def chain_image(tmp_path_factory: pytest.TempPathFactory, test_kernel: Path) -> ChainImage:
    """LAB_LAYOUT image: rEFInd -> kernel on the Alpine partition, rEFInd -> GRUB -> kernel on nixboot."""
    work = tmp_path_factory.mktemp("chain")
    runner = Runner(transcript=work / "transcript.jsonl", progress=None)
    alp, nb = work / "alpine", work / "nixboot"
    (alp / "boot").mkdir(parents=True)
    (nb / "kernels").mkdir(parents=True)
    (nb / "grub").mkdir()
    shutil.copyfile(test_kernel, alp / "boot" / "vmlinuz-lts")
    shutil.copyfile(test_kernel, nb / "kernels" / "bzImage-test")
    make_initrd(runner, alp / "boot" / "initramfs-lts", ALPINE_MARKER)
    make_initrd(runner, alp / "boot" / "initramfs-hang", HANG_MARKER, power_off=False, tail=HANG_TAIL)
    make_initrd(runner, nb / "kernels" / "initrd-test", NIXOS_MARKER)
    alpine = Entry("Alpine test", Role.ALPINE, "boot/vmlinuz-lts", "boot/initramfs-lts")
    hang = Entry("Hanging test", Role.ALPINE, "boot/vmlinuz-lts", "boot/initramfs-hang")
    nixos = Entry("NixOS test", Role.NIXOS_BOOT, "kernels/bzImage-test", "kernels/initrd-test")
    (nb / "grub" / "grub.cfg").write_text(bootchain.grub_cfg(nixos))
    (alp / "boot" / "refind_linux.conf").write_text(bootchain.refind_linux_conf(alpine))
    grub = bootchain.build_grub_efi(runner, work / "grubx64.efi")
    files = bootchain.esp_files([alpine, nixos, hang], alpine.title, grub_efi=grub)
    info = build_image(runner, LAB_LAYOUT, work / "lab.img", {Role.ALPINE: alp, Role.NIXOS_BOOT: nb}, files)
    return ChainImage(work / "lab.img", info, alpine, nixos, hang, runner)
