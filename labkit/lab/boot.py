"""One lab boot: select the entry in rEFInd, boot through OVMF, keep the serial log and the bundle,
turn the bundle into result rows. Shared by the lab run (:mod:`labkit.lab.run`) and the NixOS
real-media path (:mod:`labkit.lab.nixos_install`)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.core.runner import Runner, atomic_write_text
from labkit.lab import qemu
from labkit.measure.bundle import Bundle, extract_bundles
from labkit.measure.hostload import HostLoad
from labkit.measure.metrics import measure_bundle, missing_json
from labkit.measure.results import ResultRow, rows_from_bundle
from labkit.rehearsal import GuestBuild
from labkit.systems import bootchain
from labkit.targets.image import ImageInfo

if TYPE_CHECKING:
    from labkit.phases.alpine_media import AlpineMedia
    from labkit.systems.nixos.iso import IsoBootFiles


#: The start of a boot's ``reason`` when QEMU never started the guest (:attr:`qemu.BootResult.failed_to_start`):
#: an infrastructure failure, which :mod:`labkit.lab.matrix` retries, unlike a guest that failed.
QEMU_START_FAILED = "QEMU failed to start"


@dataclass(frozen=True)
class BootRecord:
    os: str
    boot: int
    warmup: bool
    ok: bool
    reason: str
    wall_s: float
    accel: str
    timed_out: bool
    serial_log: str
    bundle: str | None
    #: the metrics that apply to this system but have no value in the bundle: JSON {metric: reason}
    missing: str = ""
    memory_mib: int = 0  # the guest's RAM (0: not recorded)
    # the host's load meanwhile (labkit.measure.hostload; NaN when unknown)
    host_other_cpu: float = float("nan")  # cores used by other processes
    host_steal: float = float("nan")  # cores stolen by the hypervisor
    host_qemu_cpu: float = float("nan")  # cores used by QEMU
    host_qemu_wait: float = float("nan")  # share of the wall time QEMU's threads waited for a CPU
    host_cpu_pressure: float = float("nan")  # PSI cpu "some" share of the wall time
    host_contended: bool = False
    host_reason: str = ""

    @property
    def host_load_text(self) -> str:
        """E.g. ``other processes 1.02 CPUs, QEMU waited 8 % of the time``."""
        wait = "" if self.host_qemu_wait != self.host_qemu_wait else \
            f", QEMU waited for a CPU {self.host_qemu_wait:.0%} of the time"
        return f"other processes {self.host_other_cpu:.2f} CPUs{wait}"


@dataclass(frozen=True)
class LabImage:
    image: ImageInfo
    guests: dict[str, GuestBuild]
    titles: dict[str, str]  # os -> rEFInd entry title
    esp_offset: int
    media: AlpineMedia | None = None  # the real-media path's record (alpine_iso)
    nixos_boot: IsoBootFiles | None = None  # the NixOS installer ISO to install from (nixos_iso)


def bundle_ended(text: str) -> bool:
    """The serial line that ends a probe bundle (docs/contracts.md)."""
    return text.startswith("@@LABKIT-BUNDLE-END ")


def boot_order(systems: Sequence[str], boots: int, warmup: int) -> list[tuple[str, int, bool]]:
    """Interleaved order (a b, b a, a b, ...) so drift on the host hits both systems alike."""
    order: list[tuple[str, int, bool]] = []
    for i in range(warmup + boots):
        seq = list(systems) if i % 2 == 0 else list(reversed(systems))
        order += [(s, i, i < warmup) for s in seq]
    return order


def _bundle_text(b: Bundle) -> str:
    from labkit.measure.bundle import format_bundle

    return format_bundle(b.os, b.guest, b.sections)


def run_boot(
    runner: Runner,
    lab: LabImage,
    os_name: str,
    index: int,
    warmup: bool,
    *,
    run_id: str,
    run_dir: Path,
    accel: str,
    memory_mib: int,
    timeout_s: float,
) -> tuple[BootRecord, list[ResultRow]]:
    """One boot: select the entry in rEFInd, boot, keep the serial log and the bundle, measure."""
    serial_rel = f"serial/{os_name}-{index}.log"
    (run_dir / "serial").mkdir(exist_ok=True)
    with runner.step(f"boot {os_name} #{index}{' (warm-up)' if warmup else ''}"):
        bootchain.set_default_selection(runner, lab.image.path, lab.esp_offset, lab.titles[os_name])
        res = qemu.boot(
            runner,
            lab.image.path,
            workdir=run_dir / "work" / "qemu",
            accel=accel,
            memory_mib=memory_mib,
            timeout_s=timeout_s,
            serial_log=run_dir / serial_rel,
            # The bundle is all the boot has to give: stop at its END line rather than wait for the OS to
            # shut down (OpenRC's and systemd's shutdown take tens of seconds under TCG, and measure nothing).
            stop_on=bundle_ended,
        )
        bundles = extract_bundles(res.lines, strict=False)
        ok, reason = res.ok, res.reason
        bundle_rel: str | None = None
        rows: list[ResultRow] = []
        missing = ""
        good = [b for b in bundles if b.ok]
        if res.failed_to_start:
            ok, reason = False, f"{QEMU_START_FAILED}: {res.reason}"
        elif not bundles:
            ok, reason = False, f"no probe bundle on serial ({res.reason})"
        elif not good:
            ok, reason = False, f"bundle incomplete: {'; '.join(bundles[0].problems)} ({res.reason})"
        else:
            b = good[-1]
            expected = lab.guests[os_name].os_id
            if b.os != expected:
                ok, reason = False, f"bundle comes from {b.os!r}, expected {expected!r} (wrong entry booted?)"
            else:
                bundle_rel = f"bundles/{os_name}-{index}.txt"
                atomic_write_text(run_dir / bundle_rel, _bundle_text(b))
                ok = res.ok or res.stopped
                # a boot that did not end cleanly (QEMU error, killed at the timeout after the bundle)
                # keeps its bundle as evidence but feeds no number into the results
                rows = rows_from_bundle(b, run_id=run_id, boot=index, warmup=warmup, accel=accel) if ok else []
                measured = measure_bundle(b) if ok else None
                missing = missing_json(measured.missing) if measured is not None else ""
                if not ok:
                    reason = f"bundle complete, but the boot did not end cleanly: {res.reason}"
                elif res.stopped:
                    reason = "bundle complete (QEMU stopped at its END line)"
                lost = next((m for m in measured.metrics if m.name == "packages_missing" and m.value > 0), None) \
                    if measured is not None else None
                if lost is not None:  # never a fast load: the report and the load-cost fit leave it out
                    reason = (f"incomplete install: {lost.value:.0f} world package(s) missing "
                              f"({lost.source.split(': ', 1)[-1]}); " + reason)
        load = res.host_load
        runner.note(
            f"{os_name} #{index}: {'ok' if ok else 'FAILED'} in {res.wall_s:.1f} s"
            + ("" if ok else f" — {reason}")
            + (f" [host load: {load.describe()}]" if load is not None and load.contended else "")
        )
    rec = BootRecord(os_name, index, warmup, ok, reason, round(res.wall_s, 3), accel, res.timed_out,
                     serial_rel, bundle_rel, missing, memory_mib)
    return with_host_load(rec, res.host_load), rows


def with_host_load(rec: BootRecord, load: HostLoad | None) -> BootRecord:
    """``rec`` with the host-load columns of ``load`` (unchanged when the load is unknown)."""
    if load is None:
        return rec
    return replace(rec, host_other_cpu=load.other_cpu, host_steal=load.steal, host_qemu_cpu=load.qemu_cpu,
                   host_qemu_wait=load.qemu_wait, host_cpu_pressure=load.cpu_pressure,
                   host_contended=load.contended, host_reason=load.reason)


def write_boots_csv(boots: Sequence[BootRecord], path: Path) -> None:
    buf = io.StringIO()
    fields = list(BootRecord.__dataclass_fields__)
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for b in boots:
        w.writerow(asdict(b))
    atomic_write_text(path, buf.getvalue())


# -- the whole run --------------------------------------------------------------------------------
