"""The reboot loop in the QEMU lab (``labkit lab --reboot-loop``): the guests reboot themselves through rEFInd,
the bundles come from the image's /data afterwards; and a loop whose one boot hangs ends disarmed with that
boot failed."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from labkit.core.runner import Runner
from labkit.lab import hwloop
from labkit.lab.rebootloop import run_reboot_loop
from labkit.lab.run import LabParams
from labkit.targets.base import MTOOLS_ENV


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.boot
@pytest.mark.timeout(3600)
def test_lab_reboot_loop_one_round(tmp_path: Path) -> None:
    """One QEMU run, the guests rebooting themselves (one round: each system once; `--rounds 2` is the same
    loop twice as long, and a warm reboot under TCG can take minutes, see the README)."""
    run = run_reboot_loop(LabParams(out=tmp_path / "run", keep_image=True), 1, progress=None)
    d = run.run_dir
    boots = _rows(d / "boots.csv")
    assert [(b["os"].split("-")[0], b["ok"]) for b in boots] == [(s, "True") for s in run.plan], \
        [b["reason"] for b in boots]
    assert run.restored, run.qemu_reason
    results = _rows(d / "results.csv")
    per_os: dict[str, set[str]] = {}
    for r in results:
        per_os.setdefault(r["os"].split("-")[0], set()).add(r["boot"])
    assert {k: len(v) for k, v in per_os.items()} == {"nixos": 1, "alpine": 1}
    # every boot's bundle was found on serial too: host-timed metrics beside the in-guest ones
    host = [r for r in results if r["metric"] == "firmware_loaders_s"]
    assert len(host) == 2 and all(0 < float(r["value"]) < 600 for r in host)
    check = _rows(d / "method_check.csv")
    assert len(check) == 2 and all(c["host_firmware_loaders_s"] for c in check)
    env = json.loads((d / "environment.json").read_text())
    assert env["params"]["target"] == "lab VM" and env["extra"]["refind_conf_restored"] is True
    assert env["extra"]["loop"]["armed"] is False and env["extra"]["loop"]["reason"].startswith("done")
    assert "Method check (reboot loop)" in (d / "report.html").read_text(encoding="utf-8")
    assert {"firmware_loader_diff_s", "to_probe_diff_s"} <= set(_rows(d / "tables" / "method_check.csv")[0])
    # the image: the original refind.conf back, no kept copy, the loop disarmed
    image = d / "work" / "disk.img"
    place = hwloop.locate(Runner(progress=None), image)
    kept = Runner(progress=None).run(["mtype", "-i", place.esp_spec, "::/EFI/BOOT/refind.conf.labkit-orig"],
                                     env=MTOOLS_ENV, query=True, check=False)
    assert kept.rc != 0
    # what the guests saw of the firmware (OVMF): recorded in each bundle's firmware section
    firmware = [ln for p in sorted((d / "bundles").iterdir()) for ln in p.read_text().split("\n")
                if ln.startswith(("fpdt", "efi"))]
    (d / "firmware-seen.txt").write_text("\n".join(firmware) + "\n")
    assert any(ln.startswith("efi ") for ln in firmware)


def _break_alpine(runner: Runner, place: hwloop.Place) -> None:
    """Point the Alpine entry's loader at a kernel that is not there: rEFInd cannot start it and stays in its
    menu, as a boot that hangs (the kept refind.conf.labkit-orig is the unbroken one)."""
    conf = hwloop.esp_text(runner, place)
    assert conf is not None and "loader /boot/vmlinuz-lts" in conf
    broken = conf.replace("loader /boot/vmlinuz-lts", "loader /boot/vmlinuz-missing")
    src = place.disk.parent / "broken.conf" if place.disk else Path("broken.conf")
    src.write_text(broken)
    runner.run(["mcopy", "-o", "-i", place.esp_spec, src, "::/EFI/BOOT/refind.conf"], env=MTOOLS_ENV)


@pytest.mark.boot
@pytest.mark.timeout(3600)
def test_lab_reboot_loop_with_a_boot_that_hangs(tmp_path: Path) -> None:
    """One QEMU run per boot (-no-reboot, rEFInd following the guest's default across runs: the cross-check
    mode), and the second boot hangs in rEFInd: QEMU is stopped at the boot's time limit, the boot is recorded
    failed, the loop ends disarmed with the original refind.conf back."""
    params = LabParams(out=tmp_path / "run", systems=("nixos", "alpine"), boot_timeout_s=60.0, report=False,
                       keep_image=True)
    run = run_reboot_loop(params, 1, progress=None, after_arm=_break_alpine, restart_qemu=True)
    boots = _rows(run.run_dir / "boots.csv")
    assert [(b["os"].split("-")[0], b["ok"]) for b in boots] == [("nixos", "True"), ("alpine", "False")], boots
    assert "never came back" in boots[1]["reason"]
    assert run.restored and boots[0]["serial_log"] == "serial/loop-0.log"
    assert float(boots[0]["wall_s"]) > 0 and float(boots[0]["host_qemu_cpu"]) > 0
    check = _rows(run.run_dir / "method_check.csv")
    assert len(check) == 1 and 0 < float(check[0]["host_firmware_loaders_s"]) < 300
    state = json.loads((run.run_dir / "environment.json").read_text())["extra"]["loop"]
    assert state["armed"] is False and state["boots"][-1]["status"] == "failed"
