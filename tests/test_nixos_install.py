"""The NixOS install steps: golden command sequences in plan mode, preconditions, and an apply run
against a prepared root (nothing is mounted for real: mountinfo and meminfo are files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import synth

from labkit.core.errors import VerifyFailed
from labkit.core.host import LocalHost
from labkit.core.layout import SEED_LAYOUT
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.phases.nixos import (
    REFIND_EXT4_DRIVER,
    SYSTEM_COPIES,
    GrubModulesMissing,
    InstallParams,
    build_plan,
    plan_text,
    rebuild_command,
    run_plan,
)
from labkit.systems.nixos.config import (
    IMPERMANENCE_REPO,
    MODULE_NAME,
    PROBE_NAME,
    NixosSettings,
    Pin,
    User,
    render_module,
)
from labkit.targets.mounts import mount_table, require_mounted

GOLDEN = Path(__file__).parent / "golden" / "nixos"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"
SHA512 = "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86
MOUNTS = ("/nix", "/boot", "/boot/efi", "/data")
IMPERMANENCE = Pin(IMPERMANENCE_REPO, synth.IMPERMANENCE_PIN_REV, synth.IMPERMANENCE_PIN_SHA256)


@pytest.fixture(autouse=True)
def no_real_mounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Apply-mode tests run as root: shadow every tool that could change the host with one that fails."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("mount", "umount", "mkdir", "nixos-install", "nixos-generate-config", "grub-install"):
        (bindir / tool).write_text("#!/bin/sh\necho refused in tests >&2\nexit 99\n")
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return bindir


def golden(name: str, text: str) -> None:
    """Compared whole: with no disk given the plan never asks this machine's disks (hermetic)."""
    path = GOLDEN / name
    if os.environ.get("LABKIT_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (LABKIT_UPDATE_GOLDEN=1 rewrites it)"


def write_mountinfo(path: Path, root: Path, mounts: dict[str, str]) -> None:
    lines = ["22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"]
    for i, (mp, fstype) in enumerate(mounts.items()):
        target = (str(root) + ("" if mp == "/" else mp)).replace(" ", "\\040")
        lines.append(f"{30 + i} 22 0:{40 + i} / {target} rw shared:{5 + i} - {fstype} dev{i} rw")
    path.write_text("\n".join(lines) + "\n")


def params(tmp: Path, settings: NixosSettings, **kw: object) -> InstallParams:
    (tmp / "meminfo").write_text("MemTotal:        4000000 kB\n")
    if not (tmp / "mountinfo").exists():
        write_mountinfo(tmp / "mountinfo", tmp / "mnt", {})
    kw.setdefault("resolve_labels", False)  # a plan for the installer, not for this machine's block devices
    return InstallParams(settings, root=tmp / "mnt", mountinfo=tmp / "mountinfo", meminfo=tmp / "meminfo",
                         store_dirs=(tmp / "mnt" / "nix" / "store",), **kw)  # type: ignore[arg-type]


def plan_of(tmp: Path, p: InstallParams) -> str:
    runner = Runner(mode=Mode.PLAN, transcript=tmp / "plan.jsonl", progress=None)
    outcomes = run_plan(runner, build_plan(p))
    assert all(not o.verified for o in outcomes)
    return plan_text(read_transcript(tmp / "plan.jsonl")).replace(str(p.root), "/mnt")


@pytest.mark.parametrize(("name", "settings", "layout"), [
    ("plan-lab-sshkey.txt", NixosSettings(user=User(ssh_keys=(KEY,))), None),
    ("plan-seed-password-impermanence.txt", NixosSettings(user=User(hashed_password=SHA512), tmpfs_size="1G",
                                                          impermanence=True, impermanence_pin=IMPERMANENCE),
     SEED_LAYOUT),
])
def test_plan_golden(tmp_path: Path, name: str, settings: NixosSettings, layout: object) -> None:
    p = params(tmp_path, settings, **({"layout": layout} if layout else {}))
    text = plan_of(tmp_path, p)
    golden(name, text)
    assert "TMPDIR=/mnt/nix/tmp nixos-install --root /mnt --no-root-passwd" in text
    assert "--efi-directory=/mnt/boot/efi --boot-directory=/mnt/boot --bootloader-id=NixOS --no-nvram" in text
    assert "nixos-rebuild switch -I nixos-config=/data/etc/nixos/configuration.nix" in text
    assert not (tmp_path / "mnt").exists()  # plan mode touched nothing


def test_plan_skips_what_is_done_and_uses_found_grub(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    write_mountinfo(tmp_path / "mountinfo", root, {"/": "tmpfs", **{m: "ext4" for m in MOUNTS}})
    mods = root / "nix/store/abc123-grub-2.12/lib/grub/x86_64-efi"
    mods.mkdir(parents=True)
    (mods / "modinfo.sh").write_text("grub_target_cpu=x86_64\n")
    text = plan_of(tmp_path, params(tmp_path, NixosSettings(user=User(ssh_keys=(KEY,)))))
    assert "[mount tmpfs root] # done already: nothing to do" in text
    assert "[mount partitions] # done already: nothing to do" in text
    assert "mount -t" not in text
    assert "--directory=/mnt/nix/store/abc123-grub-2.12/lib/grub/x86_64-efi" in text


def test_mountinfo_parsing(tmp_path: Path) -> None:
    mi = tmp_path / "mi"
    write_mountinfo(mi, tmp_path / "my root", {"/": "tmpfs", "/data": "ext4"})
    table = mount_table(mi)
    assert table[str(tmp_path / "my root")][0] == "tmpfs"
    assert require_mounted(tmp_path / "my root", "/data", mi) == "ext4"


def test_data_not_mounted_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    write_mountinfo(tmp_path / "mountinfo", root, {"/": "tmpfs", "/nix": "ext4", "/boot": "ext4"})
    p = params(tmp_path, NixosSettings(user=User(ssh_keys=(KEY,))))
    step = next(s for s in build_plan(p) if s.name == "write configuration")
    with pytest.raises(VerifyFailed, match=r"/data is not mounted at .*mnt/data .*lost at the first reboot") as exc:
        step.apply(LocalHost(Runner(progress=None)))
    assert "mount the /data partition" in str(exc.value.fix)
    assert not (root / "data").exists()


def _installed_root(tmp: Path, settings: NixosSettings, *, grub_modules: bool) -> InstallParams:
    """A root where mounts, config and nixos-install are done (as after a real install)."""
    root = tmp / "mnt"
    write_mountinfo(tmp / "mountinfo", root, {"/": "tmpfs", **{m: "ext4" for m in MOUNTS}})
    cfgdir = root / "data/etc/nixos"
    cfgdir.mkdir(parents=True)
    (cfgdir / MODULE_NAME).write_text(render_module(settings, mem_total=4000000 * 1024))
    (cfgdir / "configuration.nix").write_text("{ imports = [ ./hardware-configuration.nix ./labkit.nix ]; }\n")
    (cfgdir / PROBE_NAME).write_text("#!/bin/sh\n")
    # the system profile as nixos-install leaves it: absolute links into the store, which hold the system's
    # copies (configuration.nix by copySystemConfiguration, labkit.nix and the probe by labkit.nix)
    (root / "nix/var/nix/profiles").mkdir(parents=True)
    (root / "nix/var/nix/profiles/system").symlink_to("system-1-link")
    (root / "nix/var/nix/profiles/system-1-link").symlink_to("/nix/store/abc-nixos-system-labkit-nixos-24.11")
    system = root / "nix/store/abc-nixos-system-labkit-nixos-24.11"
    system.mkdir(parents=True)
    for i, name in enumerate(SYSTEM_COPIES):
        (root / f"nix/store/h{i}-{name}").write_bytes((cfgdir / name).read_bytes())
        (system / name).symlink_to(f"/nix/store/h{i}-{name}")
    (root / "boot/grub").mkdir(parents=True)
    (root / "boot/grub/grub.cfg").write_text('menuentry "NixOS - Default" {\n}\n')
    (root / "boot/efi" / REFIND_EXT4_DRIVER).parent.mkdir(parents=True)
    (root / "boot/efi" / REFIND_EXT4_DRIVER).write_bytes(b"MZ")
    (root / "nix/store").mkdir(parents=True, exist_ok=True)
    if grub_modules:
        mods = root / "nix/store/zzz-grub-2.12/lib/grub/x86_64-efi"
        mods.mkdir(parents=True)
        (mods / "modinfo.sh").write_text("")
    return params(tmp, settings)


def test_grub_modules_missing_says_where_and_what(tmp_path: Path) -> None:
    p = _installed_root(tmp_path, NixosSettings(user=User(hashed_password=SHA512)), grub_modules=False)
    with pytest.raises(GrubModulesMissing) as exc:
        run_plan(Runner(progress=None), build_plan(p))
    msg = str(exc.value)
    assert f"{p.root}/nix/store/*-grub-*/lib/grub/x86_64-efi/modinfo.sh" in msg
    assert "nix-shell -p grub2_efi" in msg and "grub2` is the BIOS build" in msg


def test_apply_run_with_a_fake_grub_install(tmp_path: Path, no_real_mounts: Path) -> None:
    settings = NixosSettings(user=User(hashed_password=SHA512))
    p = _installed_root(tmp_path, settings, grub_modules=True)
    fake = no_real_mounts / "grub-install"
    fake.write_text('#!/bin/sh\nfor a; do case "$a" in --efi-directory=*) d=${a#*=};; esac; done\n'
                    '/bin/mkdir -p "$d/EFI/NixOS" && echo grub > "$d/EFI/NixOS/grubx64.efi"\n')
    fake.chmod(0o755)
    runner = Runner(transcript=tmp_path / "t.jsonl", progress=None)
    outcomes = run_plan(runner, build_plan(p))
    by = {o.name: o for o in outcomes}
    assert [n for n, o in by.items() if o.skipped] == ["mount tmpfs root", "mount partitions", "write configuration",
                                                       "nixos-install", "rEFInd ext4 driver"]
    assert by["grub-install"].verified and by["verify installed system"].verified
    cmds = [e["argv"] for e in read_transcript(tmp_path / "t.jsonl") if e.get("event") == "command"]
    assert any(a[0] == "grub-install" and f"--directory={p.root}/nix/store/zzz-grub-2.12/lib/grub/x86_64-efi" in a
               for a in cmds)  # type: ignore[index, operator]
    # a second run finds everything done
    again = run_plan(Runner(progress=None), build_plan(p))
    assert {o.name for o in again if not o.skipped} == {"verify installed system"}
    # the verification catches a system that lost its copy of labkit.nix (copySystemConfiguration alone)
    store_copy = p.root / "nix/store/abc-nixos-system-labkit-nixos-24.11" / MODULE_NAME
    store_copy.unlink()
    with pytest.raises(VerifyFailed, match=r"does not keep labkit\.nix as it is on /data"):
        run_plan(Runner(progress=None), build_plan(p))
    store_copy.symlink_to("/nix/store/h1-labkit.nix")
    # a missing ESP driver is copied from rEFInd's package (nixpkgs layout: $out/share/refind/drivers_x64/)
    (p.root / "boot/efi" / REFIND_EXT4_DRIVER).unlink()
    refind = tmp_path / "store" / "xyz-refind-0.14.2"
    (refind / "bin").mkdir(parents=True)
    (refind / "bin/refind-install").write_text("#!/bin/sh\nexit 99\n")
    (refind / "bin/refind-install").chmod(0o755)
    (refind / "share/refind/drivers_x64").mkdir(parents=True)
    (refind / "share/refind/drivers_x64/ext4_x64.efi").write_bytes(b"MZ-ext4")
    (p.root / "boot/efi/EFI/refind/refind_x64.efi").write_bytes(b"MZ")
    os.environ["PATH"] = f"{refind / 'bin'}:{os.environ['PATH']}"
    (no_real_mounts / "mkdir").unlink()  # the real mkdir, under the test's root only
    outcomes = {o.name: o for o in run_plan(Runner(progress=None), build_plan(p))}
    assert outcomes["rEFInd ext4 driver"].verified
    assert (p.root / "boot/efi" / REFIND_EXT4_DRIVER).read_bytes() == b"MZ-ext4"
    # and without a rEFInd package the step says where to get one
    (p.root / "boot/efi" / REFIND_EXT4_DRIVER).unlink()
    (refind / "share/refind/drivers_x64/ext4_x64.efi").unlink()
    with pytest.raises(VerifyFailed, match="rEFInd's ext4 driver is missing") as exc:
        run_plan(Runner(progress=None), build_plan(p))
    assert "nix-shell -p refind" in str(exc.value.fix)


def test_rebuild_command() -> None:
    assert rebuild_command(NixosSettings(user=User(ssh_keys=(KEY,)))) == [
        "nixos-rebuild", "switch", "-I", "nixos-config=/data/etc/nixos/configuration.nix"]
