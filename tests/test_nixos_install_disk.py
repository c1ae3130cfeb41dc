"""The NixOS install writes only to the confirmed disk (review finding: mounting by label alone would
write to any disk carrying an ``ESP`` or ``data`` filesystem). Real loop disks, real blkid."""

from __future__ import annotations

import secrets
from dataclasses import replace
from pathlib import Path

import pytest
from conftest_loop import make_loop, needs_loop  # noqa: F401

from labkit.core.errors import InputError
from labkit.core.layout import LAB_LAYOUT
from labkit.core.runner import Mode, Runner
from labkit.phases.disk import DiskParams, run_disk_phase
from labkit.phases.nixos import InstallParams, resolve_install_disk
from labkit.systems.nixos.config import NixosSettings, User
from labkit.targets.disks import read_disk

pytestmark = [pytest.mark.root, needs_loop]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"


#: The lab layout with labels no other disk of this machine carries (other tests and other users
#: attach loop disks labelled ESP, nix, data...: the test must not depend on them).
TOKEN = secrets.token_hex(3)
LAYOUT = replace(LAB_LAYOUT, partitions=tuple(replace(p, label=f"{p.label[:4]}{TOKEN}")
                                              for p in LAB_LAYOUT.partitions))


def formatted(make_loop, name: str, state: Path) -> str:  # type: ignore[no-untyped-def]  # noqa: F811
    dev = make_loop(name=name)
    fp = read_disk(Runner(progress=None), dev).fingerprint
    run_disk_phase(Runner(progress=None), DiskParams(dev, LAYOUT, fp, state_path=state))
    return dev


def params(fp: str | None) -> InstallParams:
    return InstallParams(NixosSettings(user=User(ssh_keys=(KEY,))), root=Path("/nonexistent-mnt"),
                         layout=LAYOUT, disk_fingerprint=fp)


def test_install_disk_must_be_confirmed_and_unique(make_loop, tmp_path: Path) -> None:  # noqa: F811
    dev = formatted(make_loop, "one.img", tmp_path / "s1.json")
    fp = read_disk(Runner(progress=None), dev).fingerprint
    apply = Runner(Mode.APPLY, progress=None)
    with pytest.raises(InputError) as exc:
        resolve_install_disk(apply, params(None))
    assert "was not confirmed" in str(exc.value) and fp in str(exc.value)
    with pytest.raises(InputError, match="not on the confirmed disk"):
        resolve_install_disk(apply, params("0123456789ab"))
    nodes = resolve_install_disk(apply, params(fp))
    assert nodes == {f"nix{TOKEN}": dev + "p3", f"nixb{TOKEN}": dev + "p2", f"ESP{TOKEN}": dev + "p1",
                     f"data{TOKEN}": dev + "p5"}
    # a second disk with the same labels: nothing is mounted, whatever the fingerprint
    formatted(make_loop, "two.img", tmp_path / "s2.json")
    with pytest.raises(InputError, match="is on 2 devices"):
        resolve_install_disk(apply, params(fp))
    # plan mode shows the problem instead of stopping
    plan = Runner(Mode.PLAN, progress=None)
    assert resolve_install_disk(plan, params(fp)) is not None


def test_plan_without_a_disk_never_asks_the_host(make_loop, tmp_path: Path) -> None:  # noqa: F811
    """The plan of an unconfirmed install shows /dev/disk/by-label paths; a disk with the same labels
    attached meanwhile changes nothing in it."""
    from labkit.core.runner import read_transcript
    from labkit.phases.nixos import build_plan, plan_text, run_plan

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\n")

    def plan() -> str:
        tr = tmp_path / f"plan-{len(list(tmp_path.glob('plan-*')))}.jsonl"
        p = InstallParams(NixosSettings(user=User(ssh_keys=(KEY,))), root=tmp_path / "mnt", layout=LAB_LAYOUT,
                          meminfo=meminfo, mountinfo=tmp_path / "none", store_dirs=())
        run_plan(Runner(Mode.PLAN, tr, progress=None), build_plan(p))
        return plan_text(read_transcript(tr))

    (tmp_path / "none").write_text("")
    before = plan()
    dup = LAB_LAYOUT  # the plain lab labels, as another user's disk would carry them
    dev = make_loop(name="dup.img")
    fp = read_disk(Runner(progress=None), dev).fingerprint
    run_disk_phase(Runner(progress=None), DiskParams(dev, dup, fp, state_path=tmp_path / "d.json"))
    assert plan() == before
    assert "blkid" not in before and "mount -t ext4 /dev/disk/by-label/nix " in before
