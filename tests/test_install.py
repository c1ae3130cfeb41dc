"""The one install path: disk ▸ rEFInd ▸ NixOS ▸ Alpine on the plan, image and device targets, rerun and
resume, then the installed disk booted (``labkit install`` / ``labkit boot``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest_loop import make_loop, mutating_executed, needs_loop, sh  # noqa: F401

from labkit.cli.main import main
from labkit.core.layout import LAB_LAYOUT, GiB, Role
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.phases.install import InstallOptions, prepare, run_install
from labkit.rehearsal.kernel import default_cache_dir
from labkit.targets.device import PLACEHOLDER, PlanTarget
from labkit.targets.disks import read_disk
from labkit.targets.image import ImageTarget, content_sha256

ROOT_HASH = "$6$saltsalt$" + "b" * 86  # a well-formed sha-512 crypt hash (the shape is what is checked)
WORLD = "base"  # the smallest package set: the tests are about the path, not the payloads


def _opts(**kw: object) -> InstallOptions:
    return InstallOptions(world=WORLD, cache_dir=default_cache_dir(), **kw)  # type: ignore[arg-type]


def test_plan_target_shows_every_phase_and_runs_nothing(tmp_path: Path) -> None:
    runner = Runner(mode=Mode.PLAN, transcript=tmp_path / "plan.jsonl", progress=None)
    target = PlanTarget(runner, LAB_LAYOUT)
    res = run_install(target, _opts(), tmp_path / "work")
    assert [r.phase for r in res.phases] == ["disk phase", "refind phase", "nixos phase", "alpine phase"]
    shell = "\n".join(res.planned)
    assert "sgdisk --clear" in shell and PLACEHOLDER in shell
    assert shell.count("mkfs.ext4") == 4 and "mkfs.vfat -F 32" in shell
    for esp_file in ("EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/drivers_x64/ext4_x64.efi", "EFI/BOOT/refind.conf"):
        assert f"::/{esp_file}" in shell, esp_file
    alpine = next(r for r in res.phases if r.phase == "alpine phase")
    assert "alpinelab.apkovl.tar.gz" in alpine.outcomes[0].describe
    assert any(o.erases for o in res.phases[0].outcomes), "the plan says what the disk phase erases"
    events = [e for e in read_transcript(tmp_path / "plan.jsonl") if e.get("event") == "command"]
    assert events and not [e for e in events if e["executed"] and not e.get("query")]


@pytest.fixture(scope="module")
def installed_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("install-image")
    runner = Runner(transcript=work / "t1.jsonl", progress=None)
    target = ImageTarget(runner, LAB_LAYOUT, work / "disk.img", work=work / "image.d")
    run_install(target, _opts(), work / "work", wipe=True)
    return work, work / "disk.img"


def test_image_target_install_reads_back_and_reruns_as_a_no_op(installed_image: tuple[Path, Path]) -> None:
    work, image = installed_image
    before = content_sha256(image)
    runner = Runner(transcript=work / "t2.jsonl", progress=None)
    target = ImageTarget(runner, LAB_LAYOUT, image, work=work / "image.d")
    res = run_install(target, _opts(), work / "work")
    assert all(r.ran == () for r in res.phases), [r.ran for r in res.phases]
    assert content_sha256(image) == before
    touched = [e["argv"] for e in mutating_executed(work / "t2.jsonl") if str(image) in " ".join(e["argv"])]
    assert touched == []
    esp = target.read_file(Role.ESP, "EFI/BOOT/refind.conf")
    assert esp is not None and b'menuentry "Alpine-style rehearsal"' in esp
    assert target.read_file(Role.ALPINE, "alpinelab.apkovl.tar.gz") is not None
    assert target.read_file(Role.ALPINE, "apks/.boot_repository") is not None


def test_image_target_refuses_a_file_it_did_not_make(tmp_path: Path) -> None:
    from labkit.core.errors import InputError

    foreign = tmp_path / "theirs.img"
    foreign.write_bytes(b"precious" * 1000)
    target = ImageTarget(Runner(progress=None), LAB_LAYOUT, foreign)
    with pytest.raises(InputError, match="labkit did not make it"):
        target.write_table(wipe=False)
    assert foreign.read_bytes() == b"precious" * 1000


def test_image_target_resumes_after_an_interrupted_install(tmp_path: Path) -> None:
    runner = Runner(transcript=tmp_path / "t.jsonl", progress=None)
    target = ImageTarget(runner, LAB_LAYOUT, tmp_path / "disk.img", work=tmp_path / "image.d")
    prepared = prepare(runner, LAB_LAYOUT, tmp_path / "work", _opts())
    first = run_install(target, _opts(), tmp_path / "work", wipe=True, phases=("disk", "refind"), prepared=prepared)
    assert [r.phase for r in first.phases] == ["disk phase", "refind phase"]
    again = run_install(target, _opts(), tmp_path / "work", prepared=prepared)
    by = {r.phase: r for r in again.phases}
    assert by["disk phase"].ran == () and by["refind phase"].ran == ()
    assert by["nixos phase"].ran and by["alpine phase"].ran


@pytest.mark.root
@pytest.mark.boot
@needs_loop
def test_install_on_a_loop_disk_then_boot_both_systems(tmp_path: Path, make_loop, capsys) -> None:  # noqa: F811
    """The issue's check: plan (byte-identical), install, second install with the new fingerprint executes
    nothing destructive, then the detached image boots to the probe for both systems."""
    backing = tmp_path / "disk.img"
    dev = make_loop(size=3 * GiB, backing=None, name="disk.img")
    fp = read_disk(Runner(progress=None), dev).fingerprint
    before = content_sha256(backing)
    base = ["install", "--device", dev, "--confirm", fp, "--wipe", "--layout", "lab", "--world", WORLD]
    # a real disk is somebody's: an Alpine nobody can log in to is refused before anything is planned
    assert main([*base, "--plan", "--out", str(tmp_path / "nologin")]) == 2
    assert "nobody could log in to the Alpine installed on this disk" in capsys.readouterr().err
    hash_file = tmp_path / "root.hash"
    hash_file.write_text(ROOT_HASH + "\n")
    args = [*base, "--alpine-root-password-hash-file", str(hash_file)]
    assert main([*args, "--plan", "--out", str(tmp_path / "plan")]) == 0
    shown = capsys.readouterr().out
    assert ROOT_HASH not in shown
    for needle in ("sgdisk --clear", "mkfs.vfat -F 32", "mkfs.ext4 -q -F -b 4096 -L alpine",
                   "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/BOOT/drivers_x64/ext4_x64.efi", "alpinelab.apkovl.tar.gz"):
        assert needle in shown, needle
    assert content_sha256(backing) == before
    assert main([*args, "--out", str(tmp_path / "run1")]) == 0
    fp2 = read_disk(Runner(progress=None), dev).fingerprint
    assert fp2 != fp
    assert main(["install", "--device", dev, "--confirm", fp2, "--layout", "lab", "--world", WORLD,
                 "--alpine-root-password-hash-file", str(hash_file), "--out", str(tmp_path / "run2")]) == 0
    parts = re.compile(re.escape(dev) + r"(p\d+)?$")
    touched = [e["argv"] for e in mutating_executed(tmp_path / "run2" / "transcript.jsonl")
               if any(parts.match(str(a)) for a in e["argv"])]
    assert touched == [], touched
    sh("partx", "-d", dev, check=False)
    sh("losetup", "-d", dev)
    # the Alpine on the disk is the owner's: no poweroff after the probe, DHCP on eth0, no login warning
    from labkit.systems.alpine.diskaudit import audit_disk

    (ovl, findings), = audit_disk(Runner(progress=None), backing).apkovls.values()
    names = {m.name for m in ovl.members}
    assert "etc/shadow" in names and "etc/local.d/labkit-probe.start" in names
    assert "etc/local.d/zz-labkit-poweroff.start" not in names
    assert not [f for f in findings if f.severity == "warning"], findings
    for system in ("alpine", "nixos"):
        out = tmp_path / f"boot-{system}"
        assert main(["boot", "--disk", str(backing), "--system", system, "--out", str(out), "--accel", "tcg"]) == 0
        rows = (out / "results.csv").read_text()
        assert "total_to_probe_s" in rows
        env = json.loads((out / "environment.json").read_text())
        assert env["extra"]["guest_kind"] == "rehearsal" and env["extra"]["target"] == "image"
        assert list((out / "bundles").glob(f"{system}-0.txt"))


@pytest.mark.root
@needs_loop
def test_boot_refuses_an_image_attached_to_a_loop_device(tmp_path: Path, make_loop) -> None:  # noqa: F811
    backing = tmp_path / "disk.img"
    make_loop(size=2 * GiB, name="disk.img")
    assert main(["boot", "--disk", str(backing), "--system", "alpine", "--out", str(tmp_path / "b")]) == 2


def test_a_disk_target_needs_a_way_into_alpine(tmp_path: Path) -> None:
    """The notebooks' disk target installs somebody's Alpine: without a hash file or a key it is refused
    with the two settings that fix it; the lab target keeps the measurement-only overlay."""
    from labkit.core.errors import InputError
    from labkit.core.settings import Settings
    from labkit.guide.phase import install_options

    with pytest.raises(InputError, match="nobody could log in") as exc:
        install_options(Settings(target="disk", device="/dev/sdz", fingerprint="0" * 12))
    assert "alpine_root_password_hash_file" in exc.value.fix and "alpine_ssh_keys" in exc.value.fix
    assert install_options(Settings(target="lab")).alpine_login is None
    disk = {"target": "disk", "device": "/dev/sdz", "fingerprint": "0" * 12}
    assert install_options(Settings(**disk, systems=("nixos",))).alpine_login is None
    f = tmp_path / "h"
    f.write_text(ROOT_HASH)
    login = install_options(Settings(target="disk", device="/dev/sdz", fingerprint="0" * 12,
                                             alpine_root_password_hash_file=str(f))).alpine_login
    assert login is not None and login.root_password_hash == ROOT_HASH
