"""The disk phase: one GPT with the layout's partitions, each formatted, then read back.

The phase is the same list of :class:`~labkit.core.steps.Step` on every target (``disk_steps``):
partition table ▸ partition nodes ▸ one ``format`` step per partition ▸ read back against the layout
(sizes, types, labels, block sizes, filesystem sizes). The target carries each step out: ``sgdisk``
on an image file or on a device, ``mkfs`` at an offset in the image or on the device's partition node
(see :mod:`labkit.targets`). Checks read the real state, so a second run on a finished disk executes
no command that changes it; a run killed anywhere resumes (the device target's state file links the
confirmed fingerprint to the one partitioning gives the disk).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.errors import LabkitError, VerifyFailed
from labkit.core.layout import Extent, Layout, Role
from labkit.core.runner import Mode, PlannedCommand, Runner
from labkit.core.steps import PhaseResult, Step, run_steps
from labkit.targets.base import Target
from labkit.targets.device import DeviceTarget
from labkit.targets.disks import DiskRecord, partition_node, read_disk

PHASE = "disk phase"


def disk_steps(target: Target, *, wipe: bool = False) -> list[Step]:
    """The disk phase on ``target``: what it puts on the disk is the layout, nothing else."""
    layout = target.layout

    def verify_table() -> None:
        if not target.table_matches():
            raise VerifyFailed(f"the partition table on {target.describe()} does not match layout {layout.name!r}",
                               "run `sgdisk --print` on it and the phase again")

    def verify_nodes() -> None:
        if not target.nodes_ready():
            raise VerifyFailed(f"the partitions of {target.describe()} are not visible to the kernel",
                               "run `partx -a DEVICE` (or `udevadm settle`) and the phase again")

    steps = [
        Step("partition table", lambda: target.write_table(wipe=wipe), target.table_matches, verify_table,
             f"a new GPT with {len(layout.partitions)} partitions (layout {layout.name!r})",
             erases=f"every partition on {target.describe()}" if wipe or target.kind != "image" else ""),
        Step("partition nodes", target.make_nodes, target.nodes_ready, verify_nodes,
             "the kernel re-reads the partition table"),
    ]
    for ext in target.extents():
        steps.append(_format_step(target, ext, wipe))
    return steps


def verify_layout(target: Target) -> None:
    """The disk phase's post-condition: table, filesystems, labels, block and filesystem sizes read back."""
    problems = target.layout_problems()
    if problems:
        raise VerifyFailed(f"{target.describe()} does not match layout {target.layout.name!r}:\n    "
                           + "\n    ".join(problems), "run the phase again with --wipe")


def _format_step(target: Target, ext: Extent, wipe: bool) -> Step:
    p = ext.partition

    def verify() -> None:
        if not target.fs_matches(ext):
            raise VerifyFailed(f"partition {ext.number} of {target.describe()} does not carry {p.fs.value} "
                               f"{p.label!r}", "run the phase again")

    return Step(f"format {ext.number} {p.fs.value} {p.label}", lambda: target.format(ext, wipe=wipe),
                lambda: target.fs_matches(ext), verify, f"{p.fs.value} labelled {p.label} on partition {ext.number}",
                erases=f"whatever partition {ext.number} holds")


def run_phase(target: Target, *, wipe: bool = False, state_dir: Path | None = None) -> PhaseResult:
    return run_steps(target.runner, f"{PHASE} on {target.describe()} ({target.layout.name})",
                     disk_steps(target, wipe=wipe), state_dir=state_dir, verify=lambda: verify_layout(target))


# -- the phase on a block device (labkit disk apply, 01_disk) ----------------------------------------
@dataclass(frozen=True)
class DiskParams:
    device: str
    layout: Layout
    confirm: str | None
    wipe: bool = False
    allow_removable: bool = False
    state_path: Path | None = None  # default: disk-state.json next to the runner's transcript
    protected: tuple[str, ...] | None = None  # None: /, this Python, labkit (see safety.protected_paths)


@dataclass(frozen=True)
class DiskResult:
    disk: DiskRecord | None  # None in plan mode
    ran: tuple[str, ...]  # steps applied (planned, in plan mode)
    skipped: tuple[str, ...]  # steps whose check said done
    planned: tuple[PlannedCommand, ...] = field(default=())

    @property
    def mutating(self) -> tuple[PlannedCommand, ...]:
        return tuple(c for c in self.planned if not c.query)


def device_target(runner: Runner, params: DiskParams) -> DeviceTarget:
    return DeviceTarget(runner, params.layout, params.device, confirm=params.confirm, wipe=params.wipe,
                        allow_removable=params.allow_removable, state_path=params.state_path,
                        protected=params.protected)


def run_disk_phase(runner: Runner, params: DiskParams) -> DiskResult:
    """Guard, then run (or, in plan mode, record) every step not yet done."""
    target = device_target(runner, params)
    res = run_phase(target, wipe=params.wipe)
    disk = None if runner.mode is Mode.PLAN else read_disk(runner, target.device)
    return DiskResult(disk, res.ran, res.skipped, res.planned)


def plan_disk_phase(params: DiskParams, transcript: Path | None = None) -> DiskResult:
    """The exact commands the phase would run on the disk as it is now (queries run, nothing else)."""
    return run_disk_phase(Runner(mode=Mode.PLAN, transcript=transcript, progress=None), params)


# -- mounts for the installs -------------------------------------------------------------------
class EspMountUnsupported(LabkitError):
    pass


MOUNT_ORDER = (Role.NIXOS_BOOT, Role.NIX_STORE, Role.DATA, Role.ESP)


def kernel_filesystems() -> set[str]:
    return {ln.split()[-1] for ln in Path("/proc/filesystems").read_text().splitlines() if ln.strip()}


def mount_install(runner: Runner, device: str, layout: Layout, root: Path, *, tmpfs_size: str = "2G",
                  esp: bool = True) -> list[Path]:
    """tmpfs on ``root``, then /boot, /nix, /data and /boot/efi from ``device``; returns the mount
    points in mount order. On any error everything mounted so far is unmounted in reverse."""
    device = os.path.realpath(device)
    mounted: list[Path] = []
    plan = runner.mode is Mode.PLAN
    try:
        with runner.step(f"mount install root {root}"):
            runner.run(["mount", "-t", "tmpfs", "-o", f"mode=755,size={tmpfs_size}", "tmpfs", root])
            mounted.append(root)
            disk_size = int(Path(f"/sys/class/block/{Path(device).name}/size").read_text()) * 512
            for role in MOUNT_ORDER if esp else MOUNT_ORDER[:-1]:
                ext = layout.extent(role, disk_size)
                target = root / ext.partition.mount_point.lstrip("/")
                fstype = ext.partition.fs.value
                if fstype == "vfat" and "vfat" not in kernel_filesystems():
                    raise EspMountUnsupported(
                        f"this kernel cannot mount FAT (no vfat in /proc/filesystems): {target} stays unmounted",
                        "modprobe vfat (install the kernel's modules), or prepare the ESP without mounting (mtools)")
                if not plan:
                    target.mkdir(parents=True, exist_ok=True)
                runner.run(["mount", "-t", fstype, _node(runner, device, ext.number), target])
                mounted.append(target)
    except BaseException:
        unmount_install(runner, mounted)
        raise
    return mounted


def unmount_install(runner: Runner, mounted: list[Path]) -> None:
    """Unmount in reverse order (keeps going on errors, raises the first at the end)."""
    first: LabkitError | None = None
    with runner.step("unmount install"):
        for target in reversed(mounted):
            try:
                runner.run(["umount", target])
            except LabkitError as exc:
                first = first or exc
    if first is not None:
        raise first


def _node(runner: Runner, device: str, number: int) -> str:
    """A partition's node through sysfs (never the disk's path with a number appended)."""
    if runner.mode is Mode.PLAN and not os.path.exists(device):
        return partition_node(device, number)
    part = read_disk(runner, device).partition(number)
    if part is None:
        raise LabkitError(f"{device} has no partition {number}", f"run the disk phase on {device} first")
    return part.path
