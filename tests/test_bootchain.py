"""Boot chain texts, GRUB image, and the default_selection rewrite inside a real image."""

from __future__ import annotations

from pathlib import Path

import pytest
from _guest import Entry

from labkit.core.errors import InputError
from labkit.core.layout import LAB_LAYOUT, Role
from labkit.core.runner import Mode, Runner
from labkit.phases.install import build_image
from labkit.systems import bootchain

ALPINE = Entry("Alpine rehearsal", Role.ALPINE, "boot/vmlinuz-lts", "boot/initramfs-lts",
               "modules=loop,squashfs,sd-mod,usb-storage console=ttyS0,115200 quiet")
NIXOS = Entry("NixOS rehearsal", "nixos-boot", "kernels/bzImage-x", "kernels/initrd-x",  # type: ignore[arg-type]
              "console=ttyS0,115200 quiet")


def test_refind_conf() -> None:
    text = bootchain.refind_conf([ALPINE, NIXOS], "NixOS rehearsal")
    lines = [ln.strip() for ln in text.splitlines()]
    for want in ("timeout -1", "log_level 0", "scanfor manual", 'default_selection "NixOS rehearsal"',
                 'menuentry "Alpine rehearsal" {', "volume alpine", "loader /boot/vmlinuz-lts",
                 "initrd /boot/initramfs-lts",
                 'options "modules=loop,squashfs,sd-mod,usb-storage console=ttyS0,115200 quiet"',
                 'menuentry "NixOS rehearsal" {', "loader \\EFI\\NixOS\\grubx64.efi"):
        assert want in lines, want
    nix_stanza = text.split('menuentry "NixOS rehearsal"')[1]
    assert "volume" not in nix_stanza and "options" not in nix_stanza  # GRUB owns the cmdline


def test_refind_conf_rejects_ambiguous_titles() -> None:
    with pytest.raises(InputError, match="ambiguous"):
        bootchain.refind_conf([ALPINE, Entry("Alpine", Role.ALPINE, "a", "b", "c")], "Alpine")
    with pytest.raises(InputError, match="not among"):
        bootchain.refind_conf([ALPINE], "Windows")
    with pytest.raises(InputError, match="quote"):
        bootchain.refind_conf([Entry("A", Role.ALPINE, "a", "b", 'x="y"')], "A")


def test_refind_linux_conf_is_the_seeds_format() -> None:
    assert bootchain.refind_linux_conf(ALPINE) == (
        '"Alpine Linux" "initrd=boot\\initramfs-lts modules=loop,squashfs,sd-mod,usb-storage '
        'console=ttyS0,115200 quiet"\n')


def test_grub_texts() -> None:
    cfg = bootchain.grub_cfg(NIXOS)
    assert "set timeout=0" in cfg
    assert "  linux /kernels/bzImage-x console=ttyS0,115200 quiet\n" in cfg
    assert "  initrd /kernels/initrd-x\n" in cfg
    emb = bootchain.grub_embedded_cfg()
    assert "search --no-floppy --label nixboot --set=root\n" in emb
    assert "set prefix=($root)/grub\n" in emb and "configfile $prefix/grub.cfg" in emb
    assert "if " not in emb  # the embedded config runs in GRUB's rescue parser


def test_build_grub_efi(tmp_path: Path, runner: Runner) -> None:
    out = bootchain.build_grub_efi(runner, tmp_path / "grubx64.efi")
    data = out.read_bytes()
    assert data[:2] == b"MZ" and b"--label nixboot" in data


def test_esp_files_carry_rEFInd_and_its_ext4_driver(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="GRUB"):
        bootchain.esp_files([ALPINE, NIXOS], ALPINE.title)
    files = bootchain.esp_files([ALPINE, NIXOS], ALPINE.title, grub_efi=tmp_path / "g.efi")
    assert files["EFI/BOOT/BOOTX64.EFI"] == bootchain.REFIND_EFI
    assert files["EFI/BOOT/drivers_x64/ext4_x64.efi"] == bootchain.REFIND_EXT4
    assert files["EFI/NixOS/grubx64.efi"] == tmp_path / "g.efi"
    assert b'default_selection "Alpine rehearsal"' in files["EFI/BOOT/refind.conf"]  # type: ignore[operator]


def test_default_selection_round_trip(tmp_path: Path, runner: Runner) -> None:
    grub = tmp_path / "g.efi"
    grub.write_bytes(b"MZ")
    files = bootchain.esp_files([ALPINE, NIXOS], ALPINE.title, grub_efi=grub)
    info = build_image(runner, LAB_LAYOUT, tmp_path / "lab.img", {}, files)
    esp = info.offset(Role.ESP)
    assert bootchain.default_selection(runner, info.path, esp) == ALPINE.title
    new = bootchain.set_default_selection(runner, info.path, esp, NIXOS.title)
    assert bootchain.default_selection(runner, info.path, esp) == NIXOS.title
    old = files["EFI/BOOT/refind.conf"].decode()  # type: ignore[union-attr]
    assert new.replace(NIXOS.title, ALPINE.title, 1) == old  # nothing else changed
    with pytest.raises(InputError, match="no entry titled"):
        bootchain.set_default_selection(runner, info.path, esp, "Windows")
    plan = Runner(mode=Mode.PLAN, progress=None)
    bootchain.set_default_selection(plan, info.path, esp, ALPINE.title)
    assert bootchain.default_selection(runner, info.path, esp) == NIXOS.title  # plan changed nothing
    assert [c.argv[0] for c in plan.planned] == ["mtype", "mcopy"]


def test_refind_ext4_driver_in_both_package_layouts(tmp_path: Path) -> None:
    """nixpkgs' refind (nix-shell -p refind): $out/bin/refind-install, $out/share/refind/drivers_x64/;
    Debian's: /usr/sbin/refind-install, /usr/share/refind/refind/drivers_x64/."""
    nix = tmp_path / "abc-refind-0.14.2"
    (nix / "bin").mkdir(parents=True)
    (nix / "share/refind/drivers_x64").mkdir(parents=True)
    (nix / "share/refind/drivers_x64/ext4_x64.efi").write_bytes(b"MZ")
    assert bootchain.refind_ext4_driver(nix / "bin/refind-install") == nix / "share/refind/drivers_x64/ext4_x64.efi"
    deb = tmp_path / "usr"
    (deb / "sbin").mkdir(parents=True)
    (deb / "share/refind/refind/drivers_x64").mkdir(parents=True)
    (deb / "share/refind/refind/drivers_x64/ext4_x64.efi").write_bytes(b"MZ")
    assert bootchain.refind_ext4_driver(deb / "sbin/refind-install") == deb / "share/refind/refind/drivers_x64/" \
        "ext4_x64.efi"
    assert bootchain.refind_ext4_driver(tmp_path / "nothing/bin/refind-install") is None
    assert bootchain.refind_ext4_driver(None) is None
    assert bootchain.refind_binary_beside("EFI/refind/drivers_x64/ext4_x64.efi") == "EFI/refind/refind_x64.efi"
    assert bootchain.refind_binary_beside("EFI/BOOT/drivers_x64/ext4_x64.efi") == "EFI/BOOT/BOOTX64.EFI"


def test_entry_options_round_trip(tmp_path: Path, runner: Runner) -> None:
    """One boot's kernel command line changed in place on the ESP (the load-cost experiment's switches)."""
    grub = tmp_path / "g.efi"
    grub.write_bytes(b"MZ")
    files = bootchain.esp_files([ALPINE, NIXOS], ALPINE.title, grub_efi=grub)
    info = build_image(runner, LAB_LAYOUT, tmp_path / "lab.img", {}, files)
    esp = info.offset(Role.ESP)
    new = bootchain.set_entry_options(runner, info.path, esp, ALPINE.title, f"{ALPINE.cmdline} labkit.gunzip=0")
    old = files["EFI/BOOT/refind.conf"].decode()  # type: ignore[union-attr]
    assert f'options "{ALPINE.cmdline} labkit.gunzip=0"' in new
    assert new.replace(" labkit.gunzip=0", "", 1) == old  # only that line changed
    back = bootchain.set_entry_options(runner, info.path, esp, ALPINE.title, ALPINE.cmdline)
    assert back == old
    with pytest.raises(InputError, match="no manual stanza 'NixOS rehearsal'"):  # GRUB's stanza: no options
        bootchain.set_entry_options(runner, info.path, esp, NIXOS.title, "x")
    with pytest.raises(InputError, match="quote"):
        bootchain.set_entry_options(runner, info.path, esp, ALPINE.title, 'a "b"')
