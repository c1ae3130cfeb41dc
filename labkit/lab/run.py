"""The offline QEMU lab: build the dual-boot image, boot each system N times, measure, report.

One call, :func:`run_lab`, does the whole main job. Its output directory holds::

    transcript.jsonl      every command (argv, cwd, rc, duration, output tail)
    environment.json      host, tool versions, accelerator, guest kernel, image hash, parameters
    boots.csv             one row per boot: os, index, ok, reason, wall time, serial log, bundle
    serial/<os>-<n>.log   serial console, one "<host seconds since QEMU start>\\t<line>" per line
    bundles/<os>-<n>.txt  the raw probe bundle of each boot
    results.csv           one row per run/os/boot/metric (value, unit, source)
    loadcost.csv          the load-cost boots (Alpine-style guest per package set): rows + package_set + host load
    loadcost_packages.csv the load-cost boots' per-package points (installed size, seconds)
    decompression.json    the guest's own gzip rate on the largest set's .apk files, and the host's gzip/zstd
    report.ipynb / .html  the executed report notebook and its HTML export
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from labkit.core.errors import LabkitError
from labkit.core.layout import LAB_LAYOUT, Layout, Role
from labkit.core.pkgsets import package_set, rehearsal_payloads
from labkit.core.runfolder import prepare_run_dir
from labkit.core.runner import Mode, Runner, atomic_write_text
from labkit.core.settings import Settings
from labkit.lab import qemu
from labkit.lab.boot import (
    BootRecord,
    LabImage,
    boot_order,
    run_boot,
    write_boots_csv,
)
from labkit.measure.environment import capture_environment, write_environment
from labkit.measure.loadcost import LOADCOST_FILE, PACKAGES_FILE, decompression_throughput, write_loadcost_csv
from labkit.measure.results import ResultRow, write_results_csv
from labkit.measure.stats import ADAPTIVE_METRIC, more_boots_reason
from labkit.phases.alpine_media import AlpineMedia
from labkit.phases.install import InstallOptions, run_install
from labkit.rehearsal import GuestBuild
from labkit.rehearsal.kernel import default_cache_dir
from labkit.systems import bootchain
from labkit.targets.image import ImageInfo, ImageTarget

if TYPE_CHECKING:
    from labkit.measure.bundle import Bundle
    from labkit.phases.nixos import InstallParams
    from labkit.systems.nixos.iso import IsoBootFiles

SYSTEMS = ("alpine", "nixos")


#: A lab run's parameters are the settings table (:mod:`labkit.core.settings`): one declaration for the CLI,
#: the notebooks, the widget form and the lab.
LabParams = Settings


@dataclass(frozen=True)
class LabRun:
    run_id: str
    run_dir: Path
    boots: tuple[BootRecord, ...]
    rows: tuple[ResultRow, ...]
    accel: str
    report: Path | None
    image: ImageInfo | None
    loadcost_rows: tuple[dict[str, object], ...] = ()

    @property
    def failed(self) -> list[BootRecord]:
        return [b for b in self.boots if not b.ok]


# -- building -------------------------------------------------------------------------------------
def build_lab_image(
    runner: Runner,
    work: Path,
    *,
    systems: Sequence[str] = SYSTEMS,
    world: str = "default",
    cache_dir: Path,
    layout: Layout = LAB_LAYOUT,
    alpine_iso: Path | None = None,
    alpine_iso_sha256: str | None = None,
    alpine_world: Sequence[str] = (),
    nixos_iso: Path | None = None,
    nixos_iso_sha256: str | None = None,
    keep_stage: bool = False,
    alpine_rootfs: Path | None = None,
) -> LabImage:
    """The lab disk: the install (:func:`labkit.phases.install.run_install`: disk ▸ rEFInd ▸ NixOS ▸
    Alpine) on an :class:`~labkit.targets.image.ImageTarget` at ``work/disk.img``.

    With ``alpine_iso`` the Alpine partition comes from that ISO (:mod:`labkit.phases.alpine_media`). With
    ``nixos_iso`` the NixOS partitions stay empty and the ESP gets the NixOS stanza without GRUB: the
    install over the serial console (:func:`labkit.lab.nixos_install.install_over_serial`) fills them.
    ``keep_stage`` keeps ``work/stage`` (what each phase staged: the load-cost experiment reads the
    repository's .apk files there)."""
    nixos_boot: IsoBootFiles | None = None
    if "nixos" in systems and nixos_iso is not None:
        from labkit.systems.nixos.iso import checked_iso, iso_boot_files

        with runner.step(f"NixOS installer ISO {nixos_iso}"):
            iso = checked_iso(Path(nixos_iso), nixos_iso_sha256)
            nixos_boot = iso_boot_files(runner, iso, work / "nixos-iso")
    opts = InstallOptions(systems=tuple(systems), world=world, cache_dir=cache_dir, alpine_iso=alpine_iso,
                          alpine_rootfs=alpine_rootfs,
                          alpine_iso_sha256=alpine_iso_sha256, alpine_world=tuple(alpine_world),
                          nixos_from_installer=nixos_boot is not None,
                          nixos_title=nixos_boot.title if nixos_boot is not None else "NixOS")
    target = ImageTarget(runner, layout, work / "disk.img", work=work / "image.d")
    res = run_install(target, opts, work, wipe=True)
    guests: dict[str, GuestBuild] = {}
    for name, sc in res.prepared.systems.items():
        if sc.guest is not None:
            guests[name] = sc.guest
    if nixos_boot is not None:
        from labkit.lab.nixos_install import installed_guest

        guests["nixos"] = installed_guest(nixos_boot)
    image = target.info()
    # Flush the image to the host's disk before any boot: the host writing back a freshly built image's
    # dirty pages while the first boot runs would slow that boot (here a fresh image's first boot ran up to
    # 1.5-2x slower than its later ones) and make the first measured boot unlike the others.
    runner.run(["sync", image.path])
    shutil.rmtree(work / "image.d", ignore_errors=True)
    if not keep_stage:
        shutil.rmtree(work / "stage", ignore_errors=True)
    media = res.prepared.systems["alpine"].media if "alpine" in res.prepared.systems else None
    return LabImage(image, guests, res.prepared.titles, image.offset(Role.ESP),
                    media if isinstance(media, AlpineMedia) else None, nixos_boot)


# -- booting --------------------------------------------------------------------------------------
def cache_dir(params: Settings) -> Path:
    return Path(params.cache_dir) if params.cache_dir else default_cache_dir()


def run_lab(params: LabParams, *, progress: TextIO | None = sys.stderr, runs_root: Path = Path("runs"),
            record: Mapping[str, object] | None = None) -> LabRun:
    """``record``: more items for environment.json's ``extra`` (the matrix cell, the run repeated by ``--like``)."""
    params.validate()
    params.validate_lab()
    run_id, run_dir = prepare_run_dir(params.path("out"), runs_root)
    runner = Runner(Mode.APPLY, run_dir / "transcript.jsonl", progress=progress)
    started = time.monotonic()
    runner.note(f"labkit lab run {run_id} → {run_dir}")
    work = run_dir / "work"
    work.mkdir(exist_ok=True)
    boots: list[BootRecord] = []
    rows: list[ResultRow] = []
    loadcost_rows: list[dict[str, object]] = []
    host_decompression: dict[str, object] = {}
    lab: LabImage | None = None
    accel_choice: qemu.AccelChoice | None = None
    try:
        what = "rehearsal guests" if not params.alpine_iso else f"Alpine partition from {Path(params.alpine_iso).name}"
        rehearsal_alpine = "alpine" in params.systems and not params.alpine_iso
        with runner.step(f"build the lab image ({what})"):
            lab = build_lab_image(runner, work, systems=params.systems, world=params.world, cache_dir=cache_dir(params),
                                  alpine_iso=params.path("alpine_iso"),
                                  alpine_iso_sha256=params.alpine_iso_sha256 or None,
                                  alpine_world=params.alpine_world, nixos_iso=params.path("nixos_iso"),
                                  nixos_iso_sha256=params.nixos_iso_sha256 or None,
                                  alpine_rootfs=params.path("alpine_rootfs"), keep_stage=rehearsal_alpine)
            if rehearsal_alpine:
                # the host's gzip/zstd on the main set's .apk files: context for the guest's own rate, which the
                # main run's Alpine-style boots measure on the same files (decompression.json)
                apks = sorted((work / "stage" / "alpine" / "apks").rglob("*.apk"))
                host_decompression = decompression_throughput(runner, apks, work / "decomp").record()
                shutil.rmtree(work / "stage", ignore_errors=True)
        accel_choice = qemu.choose_accelerator(runner, params.accel_candidates, workdir=work / "accel",
                                                   smoke_last=False)
        if lab.nixos_boot is not None:
            install_nixos(runner, params, lab, run_dir=run_dir, accel=accel_choice.accel)
        order = boot_order(params.systems, params.boots, params.warmup)
        done = params.boots
        gunzip = GunzipOnce(lab) if rehearsal_alpine and "alpine" in lab.guests else None
        while order:
            for n, (os_name, index, warm) in enumerate(order, start=1):
                runner.note(f"[{n}/{len(order)}]")
                if gunzip is not None and os_name == "alpine":
                    gunzip.before(runner, warm, work=work)
                rec, brows = run_boot(
                    runner, lab, os_name, index, warm, run_id=run_id, run_dir=run_dir, accel=accel_choice.accel,
                    memory_mib=params.memory_mib, timeout_s=params.boot_timeout_s,
                )
                boots.append(rec)
                rows.extend(brows)
                if gunzip is not None and os_name == "alpine":
                    gunzip.after(rec, [b.host_contended for b in boots])
                write_boots_csv(boots, run_dir / "boots.csv")  # progress survives an interrupted run
            order = []
            samples, contended = adaptive_samples(rows, boots, params.systems)
            why = more_boots_reason(samples, done=done, cap=params.boot_cap, threshold=params.spread_threshold,
                                    minimum=params.boots, contended=contended)
            if why is not None:
                runner.note(f"adaptive ({ADAPTIVE_METRIC}): {why}: one more round ({done + 1}/{params.boot_cap})")
                first = params.warmup + done
                seq = list(params.systems) if first % 2 == 0 else list(reversed(params.systems))
                order = [(s, first, False) for s in seq]
                done += 1
        write_results_csv(rows, run_dir / "results.csv")
        if params.load_cost and "alpine" in params.systems and params.alpine_iso:
            runner.note("load-cost experiment skipped: it rebuilds the rehearsal guest per package set, and the "
                        "Alpine partition comes from --alpine-iso")
        elif params.load_cost and "alpine" in params.systems:
            with runner.step("load-cost experiment (Alpine-style guest per package set)"):
                loadcost_rows, packages = run_load_cost(runner, params, run_id=run_id, run_dir=run_dir,
                                                        accel=accel_choice.accel, boots=boots)
            write_boots_csv(boots, run_dir / "boots.csv")
            write_decompression(run_dir, package_set(params.world).name, host_decompression,
                                guest_decompression(run_dir, [b for b in boots if b.os == "alpine" and not b.warmup
                                                              and b.boot < LOADCOST_FIRST_BOOT], rows),
                                loadcost_rows, packages)
    finally:
        extra: dict[str, object] = {
            "run_id": run_id,
            "target": "lab",
            "guest_kind": _guest_kind(lab),
            "alpine_media": lab.media.record() if lab and lab.media else None,
            "nixos_media": nixos_media_record(lab.nixos_boot) if lab and lab.nixos_boot else None,
            "accel": accel_choice.accel if accel_choice else None,
            "accel_tried": [list(t) for t in accel_choice.tried] if accel_choice else None,
            "guest_kernel": next(iter(lab.guests.values())).kernel_version if lab and lab.guests else None,
            "image": (
                {"sha256": lab.image.content_sha256, "size": lab.image.size, "disk_guid": lab.image.disk_guid,
                 "build_s": round(lab.image.build_s, 3),
                 "partitions": [{"number": p.number, "role": p.role.value, "label": p.label,
                                 "fs_uuid": p.fs_uuid, "size": p.size} for p in lab.image.partitions]}
                if lab else None
            ),
            "guests": (
                {os_name: {"os_id": g.os_id, "title": g.entry.title, "cmdline": g.entry.cmdline,
                           "packages": len(g.packages), "installed_bytes": g.installed_size,
                           "compressed_bytes": g.compressed_size,
                           # Alpine-style: who installs the packages at boot (apk-tools, or labkit's tarballs)
                           "package_install": dict(g.files).get("packages")}
                 for os_name, g in lab.guests.items()}
                if lab else None
            ),
            "qemu_argv_example": None,
            "load_cost": {"sets": list(dict.fromkeys(params.load_sets)), "rows": len(loadcost_rows)}
            if params.load_cost and "alpine" in params.systems and not params.alpine_iso else None,
            "boots_ok": sum(b.ok for b in boots),
            "boots_failed": sum(not b.ok for b in boots),
            "wall_s": round(time.monotonic() - started, 1),
            **(record or {}),
        }
        if lab is not None:
            extra["qemu_argv_example"] = qemu.qemu_argv(lab.image.path, vars_file=work / "qemu" / "OVMF_VARS.fd",
                                                        accel=accel_choice.accel if accel_choice else "tcg",
                                                        memory_mib=params.memory_mib)
            extra["host_versions"] = qemu.host_versions(runner)
        write_environment(capture_environment(params.as_record(), extra, runner=runner), run_dir)
        if lab is not None and not params.keep_image:
            lab.image.path.unlink(missing_ok=True)
    report = None
    if params.report:
        if not rows:
            raise LabkitError(
                "no boot produced a usable bundle; there is nothing to report",
                f"read {run_dir / 'boots.csv'} and the serial logs in {run_dir / 'serial'}",
            )
        from labkit.report.report import render_report

        report = render_report(run_dir, runner=runner)
        runner.note(f"report: {report}")
    runner.note(f"done in {time.monotonic() - started:.0f} s: {sum(b.ok for b in boots)}/{len(boots)} boots ok")
    atomic_write_text(run_dir / "run.json", json.dumps({"run_id": run_id, "ok": not [b for b in boots if not b.ok]}))
    return LabRun(run_id, run_dir, tuple(boots), tuple(rows), accel_choice.accel if accel_choice else "?",
                  report, lab.image if lab else None, tuple(loadcost_rows))


def adaptive_samples(rows: Sequence[ResultRow], boots: Sequence[BootRecord], systems: Sequence[str]
                     ) -> tuple[dict[str, list[float]], dict[str, list[bool]]]:
    """Per system, the measured boots' ADAPTIVE_METRIC values in boot order, and whether each boot ran
    under host contention."""
    flag = {(b.os, b.boot): b.host_contended for b in boots}
    samples: dict[str, list[float]] = {}
    contended: dict[str, list[bool]] = {}
    for s in systems:
        got = sorted((r.boot, r.value) for r in rows
                     if r.os.startswith(s) and r.metric == ADAPTIVE_METRIC and not r.warmup)
        samples[s] = [v for _, v in got]
        contended[s] = [flag.get((s, b), False) for b, _ in got]
    return samples, contended


def nixos_install_params(params: LabParams) -> InstallParams:
    """The installed NixOS's settings for the lab: the user's way in, a tmpfs root of half the RAM."""
    from labkit.phases.nixos import InstallParams
    from labkit.systems.nixos.config import NixosSettings, User
    from labkit.systems.nixos.hashes import read_hash_file

    hashed = read_hash_file(Path(params.nixos_hashed_password_file)) if params.nixos_hashed_password_file else None
    settings = NixosSettings(user=User(hashed_password=hashed, ssh_keys=tuple(params.nixos_ssh_keys)),
                             tmpfs_size="50%")
    return InstallParams(settings, install_timeout_s=params.nixos_install_timeout_s)


def install_nixos(runner: Runner, params: LabParams, lab: LabImage, *, run_dir: Path, accel: str) -> None:
    """Install NixOS from ``lab.nixos_boot`` onto the lab image over the serial console (log in
    ``run_dir/install``). The real ISO gets a user-mode NIC (nixos-install downloads); the rehearsal none."""
    from labkit.lab.nixos_install import install_over_serial

    boot = lab.nixos_boot
    assert boot is not None
    install_over_serial(runner, boot, lab.image.path, nixos_install_params(params), log_dir=run_dir / "install",
                        accel=accel,
                        memory_mib=params.nixos_install_memory_mib, network=boot.rehearsal is None)


def nixos_media_record(boot: IsoBootFiles) -> dict[str, object]:
    return {"iso": str(boot.iso), "kernel": boot.config.kernel, "initrd": boot.config.initrd,
            "append": boot.append, "loader_config": boot.config.source, "rehearsal": boot.rehearsal is not None,
            "os_id": boot.os_id}


def _guest_kind(lab: LabImage | None) -> str:
    """``rehearsal`` when every guest is a rehearsal guest, ``real`` when none is, else ``mixed``."""
    if lab is None or not lab.guests:
        return "rehearsal"
    kinds = {g.os_id.endswith("-rehearsal") for g in lab.guests.values()}
    return "rehearsal" if kinds == {True} else "real" if kinds == {False} else "mixed"


# -- the load-cost experiment -----------------------------------------------------------------------
def _saved_bundle(run_dir: Path, rec: BootRecord) -> Bundle | None:
    """The boot's bundle as :func:`labkit.lab.boot.run_boot` saved it (None when the boot gave none)."""
    if not rec.ok or rec.bundle is None:
        return None
    from labkit.measure.bundle import parse_bundle_text

    return parse_bundle_text((run_dir / rec.bundle).read_text(encoding="utf-8"))


def _loadcost_dicts(rows: Sequence[ResultRow], package_set: str, rec: BootRecord, bundle: Bundle | None
                    ) -> list[dict[str, object]]:
    """The boot's result rows with its set, host load and where its probe ran (``probe_stage``: ``initramfs``
    for LOAD_PROBE, else ``userspace``)."""
    stage = "userspace"
    if bundle is not None and "probe_stage" in bundle.sections:
        from labkit.measure.parsers.system import parse_probe_stage

        stage = parse_probe_stage(bundle.sections["probe_stage"])
    host = {"host_contended": rec.host_contended, "host_other_cpu": rec.host_other_cpu,
            "host_qemu_wait": rec.host_qemu_wait, "probe_stage": stage}
    return [{**asdict(r), "package_set": package_set, **host} for r in rows if r.os.startswith("alpine")]


def _package_dicts(run_dir: Path, rec: BootRecord, bundle: Bundle | None, package_set: str, run_id: str
                   ) -> list[dict[str, object]]:
    """The boot's per-package points, from its saved bundle and serial log."""
    if bundle is None:
        return []
    from labkit.core.console import read_serial_log
    from labkit.measure.loadcost import package_rows

    serial = read_serial_log(run_dir / rec.serial_log)
    marks = qemu.read_cpu_marks(qemu.cpu_marks_path(run_dir / rec.serial_log))
    return [{"run_id": run_id, "package_set": package_set, "boot": rec.boot, "host_contended": rec.host_contended,
             **p} for p in package_rows(bundle, serial, marks)]


#: The largest set is booted again while the per-MiB cost's 95 % interval is wider than this share of it.
LOAD_CI_TARGET = 0.25


def per_mib_ci_width(rows: Sequence[dict[str, object]], packages: Sequence[dict[str, object]]) -> float | None:
    """Half the width of b's 95 % interval over b, as the report will compute it (None: no fit yet)."""
    import pandas as pd

    from labkit.measure.loadcost import LoadCostError, analyse

    try:
        lc = analyse(pd.DataFrame(list(rows)), pd.DataFrame(list(packages)), resamples=400)
    except (LoadCostError, KeyError):
        return None
    m = lc.model
    if m is None or not m.b > 0 or not all(math.isfinite(v) for v in m.b_ci):
        return None
    return (m.b_ci[1] - m.b_ci[0]) / 2.0 / m.b


#: Kernel command-line switch of the probe: no guest gzip measurement (labkit/data/guest/probe.sh).
NO_GUNZIP = "labkit.gunzip=0"
#: The load-cost boots' switches: the probe runs in the initramfs right after the package install and the guest
#: powers off (labkit/data/guest/alpine-init.sh), with no settle and no gzip run: what those boots measure ends
#: with the install, and OpenRC's ~20 s of services would only lengthen them.
LOAD_PROBE = f"labkit.probe=initramfs labkit.settle=0 {NO_GUNZIP}"
#: Extra boot time allowed per MiB of the largest load-cost set (see run_load_cost).
LOAD_TIMEOUT_S_PER_MIB = 1.5
#: Boots of the load-cost images are numbered from here, apart from the main run's.
LOADCOST_FIRST_BOOT = 100


def persistent_load(flags: Sequence[bool], patience: int = 2) -> bool:
    """The host has been busy for the last ``patience`` boots: booting again will not find it quiet."""
    return len(flags) >= patience and all(flags[-patience:])


class GunzipOnce:
    """The guest's own gzip rate, measured once per run: the main run's Alpine-style boots run the probe's
    ``gzip -dc`` over their .apk files (after every metric of the boot) until one measured boot did it on a quiet
    host, or the host has stayed busy; the others boot with ``labkit.gunzip=0`` (it costs ~0.1 s per MiB
    under TCG, ~5 s of each boot of the default set)."""

    def __init__(self, lab: LabImage) -> None:
        self.lab = lab
        self.cmdline = lab.guests["alpine"].entry.cmdline
        self.done = False

    def before(self, runner: Runner, warmup: bool, *, work: Path) -> None:
        on = not warmup and not self.done
        bootchain.set_entry_options(runner, self.lab.image.path, self.lab.esp_offset, self.lab.titles["alpine"],
                                    self.cmdline if on else f"{self.cmdline} {NO_GUNZIP}", work=work)

    def after(self, rec: BootRecord, flags: Sequence[bool]) -> None:
        if not rec.warmup:
            self.done = self.done or (rec.ok and (not rec.host_contended or persistent_load(flags)))


def load_memory_mib(params: LabParams, installed_mib: float) -> int:
    """RAM of the load-cost boots: the parameter, or enough for the largest set in the tmpfs root (which
    gets half the RAM, as on Alpine) with room to spare, in steps of 256 MiB; never less than the main run's."""
    if params.load_memory_mib:
        return params.load_memory_mib
    need = 2.0 * installed_mib * 1.15 + 256
    return max(params.memory_mib, math.ceil(need / 256.0) * 256)


def run_load_cost(
    runner: Runner,
    params: LabParams,
    *,
    run_id: str,
    run_dir: Path,
    accel: str,
    boots: list[BootRecord],
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Boot the Alpine-style guest with each package set, smallest first, all with the same RAM (an
    Alpine-only image per set; the largest set ``load_top_boots`` times, and again up to ``load_top_max``
    while the per-MiB cost's 95 % interval is wider than LOAD_CI_TARGET); a boot under host load is kept,
    flagged, and booted again (``load_redo``) unless the load looks persistent. Every boot runs the probe in
    the initramfs right after the package install (LOAD_PROBE). Write loadcost.csv and loadcost_packages.csv;
    return their rows."""
    from labkit.rehearsal.build import alpine_payloads, resolve_world

    by_content: dict[tuple[str, ...], str] = {}
    for s in params.load_sets:
        by_content.setdefault(tuple(rehearsal_payloads(s)), s)
    sets = sorted(by_content.values(), key=lambda s: len(rehearsal_payloads(s)))
    largest = sets[-1]
    top_mib = sum(p.installed_size for p in alpine_payloads(runner, resolve_world(largest))) / 1024**2
    memory = load_memory_mib(params, top_mib)
    # the load takes ~0.06 s/MiB on a quiet host under TCG, several times more on a busy one: a hard limit that
    # grows with the set, so only a hung boot reaches it
    timeout = params.boot_timeout_s + LOAD_TIMEOUT_S_PER_MIB * top_mib
    runner.note(f"load cost: sets {', '.join(sets)}; every boot with {memory} MiB of RAM (the largest set, "
                f"{largest}, installs {top_mib:.0f} MiB into the tmpfs root) and the probe in the initramfs "
                f"({LOAD_PROBE}); timeout {timeout:.0f} s")
    out: list[dict[str, object]] = []
    packages: list[dict[str, object]] = []
    flags = [b.host_contended for b in boots]
    index = LOADCOST_FIRST_BOOT
    for name in sets:
        work = run_dir / "work" / f"loadcost-{name}"
        work.mkdir(parents=True, exist_ok=True)
        with runner.step(f"image with package set {name!r}"):
            lab = build_lab_image(runner, work, systems=("alpine",), world=name, cache_dir=cache_dir(params),
                                  alpine_rootfs=params.path("alpine_rootfs"))
            bootchain.set_entry_options(runner, lab.image.path, lab.esp_offset, lab.titles["alpine"],
                                        f"{lab.guests['alpine'].entry.cmdline} {LOAD_PROBE}", work=work)
        wanted = params.load_top_boots if name == largest else 1
        good = redone = 0
        if name == largest:
            # warm-up boots of the largest set's image (load_warmup, default 0): in boots.csv as warm-up boots,
            # left out of the fit
            for _ in range(params.load_warmup):
                rec, _rows = run_boot(runner, lab, "alpine", index, True, run_id=run_id, run_dir=run_dir,
                                      accel=accel, memory_mib=memory, timeout_s=timeout)
                index += 1
                boots.append(rec)
                write_boots_csv(boots, run_dir / "boots.csv")
        while True:
            if good >= wanted:
                # adaptive: more boots of the largest set while the per-MiB cost's interval is too wide (a host
                # whose load comes and goes moves it from boot to boot), up to load_top_max
                width = per_mib_ci_width(out, packages) if name == largest and good < params.load_top_max else None
                if width is None and name == largest and good < params.load_top_max:
                    runner.note(f"load cost: no per-MiB fit from the {name} boots so far (a boot without its package "
                                "load time?): no more boots of it")
                if width is None or width <= LOAD_CI_TARGET:
                    break
                runner.note(f"load cost: the per-MiB cost's 95 % interval is ±{width:.0%} (> ±{LOAD_CI_TARGET:.0%}): "
                            f"one more {name} boot ({good + 1}/{params.load_top_max})")
            rec, brows = run_boot(runner, lab, "alpine", index, False, run_id=run_id, run_dir=run_dir, accel=accel,
                                  memory_mib=memory, timeout_s=timeout)
            index += 1
            boots.append(rec)
            write_boots_csv(boots, run_dir / "boots.csv")
            flags.append(rec.host_contended)
            bundle = _saved_bundle(run_dir, rec)
            out += _loadcost_dicts(brows, name, rec, bundle)
            packages += _package_dicts(run_dir, rec, bundle, name, run_id)
            if rec.ok and rec.host_contended and redone < params.load_redo and not persistent_load(flags):
                redone += 1
                runner.note(f"load cost: {name} boot #{rec.boot} ran under host load ({rec.host_reason}): "
                            "booting it again")
                continue
            good += 1
        lab.image.path.unlink(missing_ok=True)
    write_loadcost_csv(out, run_dir / LOADCOST_FILE)
    write_loadcost_csv(packages, run_dir / PACKAGES_FILE)
    return out, packages


def guest_decompression(run_dir: Path, alpine_boots: Sequence[BootRecord], rows: Sequence[ResultRow]
                        ) -> dict[str, object]:
    """The guest's gzip rate on the .apk files of the packages it installed, from the main run's Alpine-style
    boots that measured it (:class:`GunzipOnce`; the median over those on a quiet host, else over all), and the
    package load against it: in the same boot, the seconds ``gzip -dc`` took over the seconds the whole package
    load took, both on the guest's clock, for the same packages (= the load's MiB/s over gzip's)."""
    import numpy as np

    from labkit.measure.bundle import parse_bundle_text
    from labkit.measure.loadcost import guest_gunzip

    def value(boot: int, metric: str) -> float:
        return next((r.value for r in rows if r.os.startswith("alpine") and r.boot == boot and r.metric == metric),
                    float("nan"))

    measured = []
    for b in alpine_boots:
        if not (b.ok and b.bundle):
            continue
        gz = guest_gunzip(parse_bundle_text((run_dir / str(b.bundle)).read_text(encoding="utf-8")))
        if gz is not None and gz.status == 0 and gz.seconds > 0:
            measured.append((b, gz, value(b.boot, "installed_size_mib"), value(b.boot, "alpine_package_load_s")))
    quiet = [m for m in measured if not m[0].host_contended]
    use = quiet or measured
    out: dict[str, object] = {"guest_boots": [m[0].boot for m in use], "guest_contended": bool(use and not quiet)}
    if not use:
        return out
    out.update({
        "guest_gzip_mib_s": float(np.median([g.mib_s for _, g, _, _ in use])),
        "guest_gzip_installed_mib_s": float(np.median([i / g.seconds for _, g, i, _ in use])),
        "guest_gzip_s": float(np.median([g.seconds for _, g, _, _ in use])),
        "guest_files": use[0][1].files,
        "guest_compressed_bytes": use[0][1].compressed_bytes,
        "guest_uncompressed_bytes": use[0][1].uncompressed_bytes,
        "guest_tool": "busybox gzip -dc > /dev/null, timed by /proc/uptime in the guest, after the probe",
        "load_s": float(np.median([t for _, _, _, t in use])),
        # > 1: the load ran faster than busybox's gzip (apk-tools links zlib; busybox has its own inflate)
        "load_fraction_of_guest_gzip": float(np.median([g.seconds / t for _, g, _, t in use])),
    })
    return out


def write_decompression(run_dir: Path, package_set: str, host: Mapping[str, object], guest: Mapping[str, object],
                        rows: Sequence[dict[str, object]], packages: Sequence[dict[str, object]]) -> None:
    """decompression.json: the guest's gzip rate and the load against it (``guest``, the main run's set), the host's
    gzip/zstd on the same files (``host``, context), and the load-cost model's marginal rate. Strict JSON: a value
    that could not be computed is null, never NaN."""
    import pandas as pd

    from labkit.measure.loadcost import LoadCostError, analyse

    out: dict[str, object] = {**host, "package_set": package_set, **guest}
    try:
        lc = analyse(pd.DataFrame(list(rows)), pd.DataFrame(list(packages)), resamples=200)
    except LoadCostError:
        lc = None
    if lc is not None:
        out["load_rate_mib_s"] = lc.rate_mib_s  # marginal, 1 / b (the model's basis: see load_rate_basis)
        out["load_rate_basis"] = lc.model.basis if lc.model is not None else "boot totals"
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
    atomic_write_text(run_dir / "decompression.json", json.dumps(clean, indent=2, allow_nan=False) + "\n")


def lab_plan(params: LabParams) -> list[str]:
    """What :func:`run_lab` would do with ``params``, without building or booting anything."""
    params.validate()
    params.validate_lab()
    lines = [f"build one image: rehearsal guests {', '.join(params.systems)} with package set {params.world!r} "
             f"({len(rehearsal_payloads(params.world))} Debian payloads)"
             if not params.alpine_iso else
             f"build one image: Alpine partition from {params.alpine_iso} (checksum, xorriso extraction, labkit's "
             f"apkovl, world {' '.join(params.alpine_world) or 'the ISO default'})"
             + (f"; NixOS-style rehearsal with package set {params.world!r}" if "nixos" in params.systems else ""),
             *([f"NixOS: boot the installer ISO {params.nixos_iso} (checksum, kernel/initrd read with xorriso), "
                "install over the serial console onto the empty NixOS partitions, then boot through rEFInd -> GRUB"]
               if params.nixos_iso else []),
             "boot order (interleaved; warm-up boots reported, not measured): "
             + ", ".join(f"{s}#{i}{'(w)' if w else ''}" for s, i, w in boot_order(params.systems, params.boots,
                                                                                  params.warmup)),
             f"adaptive: up to {params.boot_cap} boots per system while MAD/median of {ADAPTIVE_METRIC} > "
             f"{params.spread_threshold:.0%}"]
    if params.load_cost and "alpine" in params.systems and not params.alpine_iso:
        sets = sorted(dict.fromkeys(params.load_sets), key=lambda s: len(rehearsal_payloads(s)))
        mem = f"{params.load_memory_mib} MiB" if params.load_memory_mib else "RAM for the largest set's tmpfs root"
        lines.append(f"load cost: one Alpine-only image per set {', '.join(sets)}, booted once ({sets[-1]}: "
                     f"{params.load_warmup} warm-up boot(s), then {params.load_top_boots} times, up to "
                     f"{params.load_top_max} while the per-MiB cost's 95 % "
                     f"interval is wider than ±{LOAD_CI_TARGET:.0%}), all with {mem} and the probe in the initramfs "
                     f"right after the package install ({LOAD_PROBE}); a boot under host load is booted "
                     f"again (up to {params.load_redo} per set); per-package timing")
        lines.append(f"the guest's gzip -dc rate on the {params.world} set's .apk files: once, in the first measured "
                     "Alpine-style boot on a quiet host (after its probe); the host's gzip/zstd on the same files as "
                     "context")
    lines.append("report: results.csv, loadcost.csv, tables/*.csv, report.html" if params.report else "no report")
    return lines
