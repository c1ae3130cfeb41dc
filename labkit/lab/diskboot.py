"""Boot an existing disk or image file in QEMU through OVMF → rEFInd (→ GRUB for NixOS), once, and
measure it like the lab does: ``labkit boot --disk PATH --system nixos|alpine``.

The rEFInd entry is chosen the lab's way, by rewriting ``default_selection`` in the ESP's
``EFI/BOOT/refind.conf`` (mtools, no mount); the original file is put back afterwards, whatever happens,
so the disk leaves this command as it came (except what the booted system itself writes).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import InputError, LabkitError
from labkit.core.layout import FsType, Role
from labkit.core.runner import Mode, Runner, atomic_write_text
from labkit.lab import qemu
from labkit.lab.boot import BootRecord, LabImage, run_boot, write_boots_csv
from labkit.measure.environment import capture_environment, write_environment
from labkit.measure.results import ResultRow, write_results_csv
from labkit.rehearsal.types import BootEntry, GuestBuild
from labkit.systems import bootchain
from labkit.targets.base import MTOOLS_ENV
from labkit.targets.disks import read_disk
from labkit.targets.gpt import TYPE_GUIDS, read_gpt
from labkit.targets.image import ImageInfo, PartitionInfo
from labkit.targets.safety import busy_nodes

SYSTEMS = ("alpine", "nixos")


@dataclass(frozen=True)
class DiskBoot:
    record: BootRecord
    rows: tuple[ResultRow, ...]
    out: Path
    title: str


def _esp_offset(disk: Path) -> int:
    table = read_gpt(disk)
    esp = [e for e in table.entries if e.type_guid == TYPE_GUIDS["ef00"]]
    if len(esp) != 1:
        raise InputError(f"{disk} has {len(esp)} EFI system partitions, labkit boots a disk with exactly one",
                         "install with `labkit install` (one ESP holding rEFInd)")
    return esp[0].start


def entry_titles(runner: Runner, disk: Path, esp_offset: int) -> list[str]:
    text = runner.run(["mtype", "-i", f"{disk}@@{esp_offset}", f"::/{bootchain.ESP_REFIND_CONF}"], env=MTOOLS_ENV,
                      query=True, check=False).stdout
    return [ln.split('"')[1] for ln in text.splitlines() if ln.strip().startswith("menuentry") and ln.count('"') >= 2]


def pick_title(titles: list[str], system: str) -> str:
    want = "alpine" if system == "alpine" else "nixos"
    found = [t for t in titles if want in t.lower()]
    if not found:
        raise InputError(f"refind.conf has no {system} entry (entries: {titles or 'none'})",
                         f"install {system} on this disk first (labkit install --systems {system})")
    return found[0]


def _check_disk_free(runner: Runner, disk: Path) -> None:
    """Never boot a disk something on this host is using (QEMU writing under a mounted filesystem
    corrupts it)."""
    st = os.stat(disk)
    if stat.S_ISBLK(st.st_mode):
        rec = read_disk(runner, disk)
        used = [*rec.mountpoints, *(m for p in rec.partitions for m in p.mountpoints)]
        busy = busy_nodes([rec.path, *(p.path for p in rec.partitions)])
        if used or busy:
            raise InputError(f"{disk} is in use on this host ({', '.join(used) or ', '.join(busy)})",
                             "unmount it (and stop whatever holds it) before booting it in QEMU")
        return
    res = runner.run(["losetup", "-j", str(disk)], query=True, check=False)
    if res.stdout.strip():
        raise InputError(f"{disk} is attached as a loop device ({res.stdout.strip().split(':')[0]})",
                         f"detach it first: losetup -d {res.stdout.strip().split(':')[0]}")


check_disk_free = _check_disk_free  # for labkit measure arm/disarm/collect on a disk


def _prepare(runner: Runner, disk: Path, system: str) -> tuple[LabImage, str, int]:
    if system not in SYSTEMS:
        raise InputError(f"--system {system!r}", f"choose {' or '.join(SYSTEMS)}")
    if not disk.exists():
        raise InputError(f"{disk} does not exist", "give the disk image file or block device labkit installed")
    if runner.mode is Mode.PLAN:
        raise InputError("labkit boot has no plan mode", "leave --plan away")
    _check_disk_free(runner, disk)
    esp = _esp_offset(disk)
    title = pick_title(entry_titles(runner, disk, esp), system)
    os_id = f"{system}-rehearsal" if "rehearsal" in title.lower() else system
    size = os.stat(disk).st_size if disk.is_file() else read_disk(runner, disk).size
    info = ImageInfo(disk, size, read_gpt(disk).disk_guid, "", (
        PartitionInfo(1, Role.ESP, "", "ef00", esp, 0, "", FsType.VFAT, "ESP", "", None),))
    guest = GuestBuild(os_id, BootEntry(title, Role.ESP.value, "", "", ""), (), "?")
    return LabImage(info, {system: guest}, {system: title}, esp), title, esp


def measure_disk(runner: Runner, disk: Path, systems: tuple[str, ...], out: Path, *, boots: int = 1,
                 accel_candidates: tuple[str, ...] = ("kvm", "tcg"), memory_mib: int = 512,
                 timeout_s: float = 300.0, report: bool = False) -> list[DiskBoot]:
    """Boot ``disk`` into each of ``systems``, ``boots`` times each (interleaved), and write the lab's run
    files in ``out`` (results.csv, boots.csv, serial/, bundles/, environment.json; report.html with
    ``report``). The ESP's refind.conf is put back as it was after every boot."""
    disk = Path(disk)
    out.mkdir(parents=True, exist_ok=True)
    prepared = {s: _prepare(runner, disk, s) for s in systems}
    esp = next(iter(prepared.values()))[2]
    original = runner.run(["mtype", "-i", f"{disk}@@{esp}", f"::/{bootchain.ESP_REFIND_CONF}"], env=MTOOLS_ENV,
                          query=True).stdout
    started = time.monotonic()
    done: list[DiskBoot] = []
    accel = qemu.choose_accelerator(runner, accel_candidates, workdir=out / "work" / "accel")
    try:
        for i in range(boots):
            for system in (systems if i % 2 == 0 else tuple(reversed(systems))):
                lab, title, _ = prepared[system]
                try:
                    rec, rows = run_boot(runner, lab, system, i, False, run_id=out.resolve().name, run_dir=out,
                                         accel=accel.accel, memory_mib=memory_mib, timeout_s=timeout_s)
                finally:
                    _restore_conf(runner, disk, esp, original, out)
                done.append(DiskBoot(rec, tuple(rows), out, title))
                write_boots_csv([d.record for d in done], out / "boots.csv")
    finally:
        write_results_csv([r for d in done for r in d.rows], out / "results.csv")
        kinds = {"rehearsal" if lab.guests[s].os_id.endswith("-rehearsal") else "real"
                 for s, (lab, _t, _e) in prepared.items()}
        extra = {"run_id": out.resolve().name, "target": "image" if disk.is_file() else "disk", "disk": str(disk),
                 "systems": list(systems), "entries": {s: t for s, (_l, t, _e) in prepared.items()},
                 "guest_kind": kinds.pop() if len(kinds) == 1 else "mixed", "accel": accel.accel,
                 "accel_tried": [list(t) for t in accel.tried], "wall_s": round(time.monotonic() - started, 1),
                 "boots_ok": sum(d.record.ok for d in done), "boots_failed": sum(not d.record.ok for d in done),
                 "host_versions": qemu.host_versions(runner)}
        write_environment(capture_environment({"disk": str(disk), "systems": list(systems), "boots": boots,
                                               "memory_mib": memory_mib}, extra, runner=runner), out)
        atomic_write_text(out / "run.json", json.dumps({"run_id": out.resolve().name,
                                                        "ok": all(d.record.ok for d in done)}) + "\n")
    if report and any(d.rows for d in done):
        from labkit.report.report import render_report

        render_report(out, runner=runner)
    return done


def boot_disk(runner: Runner, disk: Path, system: str, out: Path, *, accel_candidates: tuple[str, ...] = ("kvm", "tcg"),
              memory_mib: int = 512, timeout_s: float = 300.0) -> DiskBoot:
    """Boot ``disk`` (an image file or a block device) into ``system`` once; write ``out/results.csv``,
    ``out/boots.csv``, ``out/serial/``, ``out/bundles/``, ``out/environment.json``."""
    res = measure_disk(runner, Path(disk), (system,), out, accel_candidates=accel_candidates, memory_mib=memory_mib,
                       timeout_s=timeout_s)[0]
    if not res.record.ok:
        raise LabkitError(f"the {system} boot of {disk} failed: {res.record.reason}",
                          f"read the serial log {out / res.record.serial_log}")
    return res


def _restore_conf(runner: Runner, disk: Path, esp: int, original: str, out: Path) -> None:
    now = runner.run(["mtype", "-i", f"{disk}@@{esp}", f"::/{bootchain.ESP_REFIND_CONF}"], env=MTOOLS_ENV,
                     query=True, check=False).stdout
    if now == original:
        return
    tmp = out / "work" / "refind.conf.original"
    atomic_write_text(tmp, original)
    runner.run(["mcopy", "-o", "-i", f"{disk}@@{esp}", tmp, f"::/{bootchain.ESP_REFIND_CONF}"], env=MTOOLS_ENV)
    tmp.unlink(missing_ok=True)
