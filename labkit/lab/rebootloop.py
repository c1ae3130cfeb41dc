"""``labkit lab --reboot-loop --rounds N``: the hardware reboot loop (:mod:`labkit.lab.hwloop`) rehearsed in QEMU.

The lab image is built as for ``labkit lab``, armed against the image (loop.json on its /data through debugfs,
rEFInd's default on its ESP through mtools), and booted ONCE without ``-no-reboot``: each guest's probe saves its
bundle on /data, sets rEFInd's default to the next system and reboots; after the plan's last boot it disarms,
restores refind.conf and the lab's poweroff script ends QEMU. The bundles are then collected from the image's
/data (as ``labkit measure collect`` does on a PC) and each is matched to its copy on the serial console, so
the host's serial timestamps (``firmware_loaders_s``, ``total_to_probe_s``, counted from that boot's reset) sit
beside the in-guest figures (``firmware_s``/``loader_s`` from the ACPI FPDT where the firmware has one) in
results.csv and in ``method_check.csv``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from labkit.core.console import SerialLine
from labkit.core.errors import LabkitError
from labkit.core.runfolder import prepare_run_dir
from labkit.core.runner import Mode, Runner, atomic_write_text
from labkit.lab import hwloop, qemu
from labkit.lab.boot import with_host_load, write_boots_csv
from labkit.lab.run import LabParams, build_lab_image, cache_dir
from labkit.measure.bundle import extract_bundles

#: what the kernel prints when the guest reboots (kernel/reboot.c kernel_restart: pr_emerg, shown even with quiet)
RESTART_MARK = "reboot: Restarting system"
_SAVED_RE = re.compile(r"labkit-probe: bundle saved as /data/labkit/bundles/(?P<os>[a-z]+(?:-rehearsal)?)-"
                       r"(?P<id>[A-Za-z0-9-]+)\.txt")
#: seconds QEMU may take per planned boot (on top of the per-boot timeout: the last boot's disarm and poweroff)
MARGIN_S = 120.0


@dataclass(frozen=True)
class LoopRun:
    run_dir: Path
    collected: hwloop.Collected
    qemu_reason: str
    restored: bool  # refind.conf on the image is the original again
    plan: tuple[str, ...]


def serial_boots(lines: Sequence[SerialLine]) -> dict[str, float]:
    """boot id → host seconds from that boot's reset (QEMU start for the first, else the previous boot's
    ``reboot: Restarting system`` line) to its bundle's BEGIN line; boot ids from the probe's
    ``bundle saved as`` line that follows each bundle."""
    out: dict[str, float] = {}
    reset = 0.0
    begins = [b.t_begin for b in extract_bundles(lines, strict=False) if b.t_begin is not None]
    bi = 0
    last_begin: float | None = None
    for ln in lines:
        if RESTART_MARK in ln.text:
            reset = ln.t
        while bi < len(begins) and begins[bi] <= ln.t:
            last_begin = begins[bi] - reset
            bi += 1
        m = _SAVED_RE.search(ln.text)
        if m and last_begin is not None:
            out[m.group("id")] = last_begin
            last_begin = None
    return out


def method_check(collected: hwloop.Collected, path: Path) -> Path:
    """One row per measured boot: the host's serial-timed figures beside the in-guest ones."""
    by: dict[tuple[str, int], dict[str, float]] = {}
    for r in collected.rows:
        by.setdefault((r.os, r.boot), {})[r.metric] = r.value
    buf = io.StringIO()
    cols = ["os", "boot", "host_firmware_loaders_s", "guest_firmware_s", "guest_loader_s",
            "guest_firmware_plus_loader_s", "host_total_to_probe_s", "guest_uptime_at_probe_s"]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for (os_id, boot), m in sorted(by.items()):
        fw, ld = m.get("firmware_s"), m.get("loader_s")
        total = m.get("total_to_probe_s")
        fl = m.get("firmware_loaders_s")
        uptime = total - fl if total is not None and fl is not None else None
        vals = [fl, fw, ld, fw + ld if fw is not None and ld is not None else None, total, uptime]
        w.writerow([os_id, boot, *("" if v is None else f"{v:.3f}" for v in vals)])
    atomic_write_text(path, buf.getvalue())
    return path


def run_reboot_loop(params: LabParams, rounds: int, *, progress: TextIO | None = sys.stderr,
                    runs_root: Path = Path("runs"), order: str = "interleaved",
                    after_arm: Callable[[Runner, hwloop.Place], None] | None = None,
                    restart_qemu: bool = False) -> LoopRun:
    """``after_arm`` runs once the image is armed (the tests break one entry there, to make one boot fail).
    ``restart_qemu``: QEMU with ``-no-reboot``, started again after each guest reboot (a cross-check of the warm
    reboots: under TCG they made some boots' firmware + loader span much longer, see the README)."""
    params.validate()
    params.validate_lab()
    plan = hwloop.plan(tuple(params.systems), rounds, order)
    run_id, run_dir = prepare_run_dir(params.path("out"), runs_root)
    runner = Runner(Mode.APPLY, run_dir / "transcript.jsonl", progress=progress)
    started = time.monotonic()
    runner.note(f"labkit lab --reboot-loop {run_id} → {run_dir}: {' '.join(plan)}")
    work = run_dir / "work"
    work.mkdir(exist_ok=True)
    with runner.step("build the lab image (rehearsal guests)"):
        lab = build_lab_image(runner, work, systems=params.systems, world=params.world, cache_dir=cache_dir(params),
                              alpine_iso=params.path("alpine_iso"), alpine_iso_sha256=params.alpine_iso_sha256 or None,
                              alpine_world=params.alpine_world, alpine_rootfs=params.path("alpine_rootfs"))
    image = lab.image.path
    accel = qemu.choose_accelerator(runner, params.accel_candidates, workdir=work / "accel")
    place = hwloop.locate(runner, image)
    original = hwloop.esp_text(runner, place)
    with runner.step(f"arm the loop on the image: {len(plan)} boots"):
        hwloop.arm(runner, place, rounds=rounds, systems=tuple(params.systems), order=order,
                   titles={s: lab.titles[s] for s in params.systems})
        if after_arm is not None:
            after_arm(runner, place)
    (run_dir / "serial").mkdir(exist_ok=True)
    runs: list[qemu.BootResult] = []
    t_begin: dict[str, float] = {}
    per_boot: dict[str, qemu.BootResult] = {}  # boot id -> its own QEMU run (restart_qemu)
    if not restart_qemu:
        timeout = params.boot_timeout_s * len(plan) + MARGIN_S
        with runner.step(f"boot the image once; the guests reboot {len(plan) - 1} times (limit {timeout:.0f} s)"):
            res = qemu.boot(runner, image, workdir=work / "qemu", accel=accel.accel, memory_mib=params.memory_mib,
                            timeout_s=timeout, serial_log=run_dir / "serial" / "loop.log", reboot=True)
        runs.append(res)
        t_begin = serial_boots(res.lines)
    else:
        # a cross-check of the warm reboots: every guest reboot ends QEMU (-no-reboot) and the lab starts a new
        # QEMU on the same image (rEFInd still follows the default the guest set): a cold start per boot
        for k in range(len(plan) + 1):
            with runner.step(f"QEMU run {k + 1} (one boot; the guest's reboot ends it)"):
                res = qemu.boot(runner, image, workdir=work / "qemu", accel=accel.accel,
                                memory_mib=params.memory_mib, timeout_s=params.boot_timeout_s,
                                serial_log=run_dir / "serial" / f"loop-{k}.log")
            runs.append(res)
            found = serial_boots(res.lines)
            t_begin.update(found)
            per_boot.update({b: res for b in found})
            said = [ln.text for ln in res.lines if ln.text.startswith("labkit-loop:")]
            if not res.ok or not said or not said[-1].endswith("rebooting"):
                break
    reason = "; ".join(r.reason for r in runs)
    runner.note(f"QEMU: {reason} after {sum(r.wall_s for r in runs):.0f} s")
    restored = hwloop.esp_text(runner, place) == original
    if not restored:
        runner.note("refind.conf is not the original after the loop: disarming from the host")
        hwloop.disarm(runner, place, reason=f"disarmed by the lab after QEMU ended ({runs[-1].reason})")
        restored = hwloop.esp_text(runner, place) == original
    extra = {"target_detail": "lab image, reboot loop", "accel_tried": [list(t) for t in accel.tried],
             "qemu": [{"reason": r.reason, "wall_s": round(r.wall_s, 1), "rc": r.rc} for r in runs],
             "qemu_restarted_per_boot": restart_qemu,
             "refind_conf_restored": restored, "serial_matched_boots": len(t_begin),
             "guests": {s: {"os_id": g.os_id, "title": g.entry.title, "cmdline": g.entry.cmdline}
                        for s, g in lab.guests.items()},
             "image_sha256_before_loop": lab.image.content_sha256,
             "wall_s": round(time.monotonic() - started, 1)}
    collected = hwloop.collect(runner, place, run_dir, report=False, serial_t_begin=t_begin, accel=accel.accel,
                               extra_env=extra)
    if per_boot:  # each boot had its own QEMU run: its wall time, serial log and the host's load meanwhile
        recs = []
        for rec in collected.boots:
            bid = next((b for b in per_boot if rec.bundle and rec.bundle.endswith(f"-{b}.txt")), None)
            if bid is not None:
                r = per_boot[bid]
                log = str(r.serial_log.relative_to(run_dir)) if r.serial_log else ""
                rec = with_host_load(replace(rec, wall_s=round(r.wall_s, 3), serial_log=log), r.host_load)
            recs.append(rec)
        write_boots_csv(recs, run_dir / "boots.csv")
        collected = replace(collected, boots=tuple(recs))
    method_check(collected, run_dir / "method_check.csv")
    if not params.keep_image:
        image.unlink(missing_ok=True)
    if params.report and collected.rows:
        from labkit.report.report import render_report

        render_report(run_dir, runner=runner)
    elif params.report:
        raise LabkitError("no boot of the loop produced a usable bundle; there is nothing to report",
                          f"read {run_dir / 'serial' / 'loop.log'} and {run_dir / 'boots.csv'}")
    atomic_write_text(run_dir / "run.json", json.dumps({"run_id": run_id, "ok": all(b.ok for b in collected.boots)
                                                        and restored}) + "\n")
    return LoopRun(run_dir, collected, reason, restored, tuple(plan))
