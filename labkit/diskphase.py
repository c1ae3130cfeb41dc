"""The disk phase on a real block device: partition, format, verify — as check/apply/verify steps.

Safety: before every destructive step the disk is re-read and :func:`labkit.safety.check_disk`
runs again; any finding raises :class:`~labkit.safety.Refused` before a command is executed.

Idempotent: each step's ``check`` reads the disk (read-only queries) and skips work already
done, so a second run on a finished disk executes no mutating command.

Resumable across the fingerprint change. Partitioning writes a new partition table, hence a new
PTUUID, hence a new fingerprint. labkit picks the new disk GUID *before* partitioning and writes
a state file (atomically, next to the transcript) holding the confirmed fingerprint, the GUID it
is about to write and the fingerprint the disk will have afterwards. A run killed at any point
then finds the disk either unchanged (the confirmed fingerprint still matches) or carrying exactly
the recorded GUID (the state file links the confirmed fingerprint to the new one). Without the
state file the user confirms the new fingerprint shown by ``labkit disks``; since the table
matches the layout, no ``--wipe`` is needed. ``--wipe`` never re-wipes a disk whose table already
is the layout: re-running the same command on a finished install must not destroy it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labkit.disks import DiskRecord, blkid, fingerprint_of, partition_node, read_disk
from labkit.errors import LabkitError, VerifyFailed
from labkit.gpt import TYPE_GUIDS, read_gpt
from labkit.image import SMALL_ESP, sgdisk_args
from labkit.layout import Extent, FsType, Layout, Role
from labkit.runner import Mode, PlannedCommand, Runner, atomic_write_text
from labkit.safety import Code, Finding, Refused, check_disk, layout_matches_table

STATE_NAME = "disk-state.json"
NODE_TIMEOUT_S = 10.0


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
class DiskState:
    """Written before partitioning: what the disk will look like afterwards."""

    device: str
    confirmed: str
    layout: str
    disk_guid: str  # lower case, the PTUUID labkit writes
    fingerprint_after: str
    version: int = 1
    fingerprint_blank: str = ""  # after a --wipe, before the new table: also this run's disk
    formatted: tuple[str, ...] = ()  # UUIDs of the filesystems this run created (and only those)


@dataclass(frozen=True)
class Step:
    name: str
    check: Callable[[], bool]  # already done?
    apply: Callable[[], None]
    verify: Callable[[], None]


@dataclass(frozen=True)
class DiskResult:
    disk: DiskRecord | None  # None in plan mode
    ran: tuple[str, ...]  # steps applied (planned, in plan mode)
    skipped: tuple[str, ...]  # steps whose check said done
    planned: tuple[PlannedCommand, ...] = field(default=())

    @property
    def mutating(self) -> tuple[PlannedCommand, ...]:
        return tuple(c for c in self.planned if not c.query)


def fs_matches(info: dict[str, str], ext: Extent) -> bool:
    p = ext.partition
    if info.get("TYPE") != p.fs.value or info.get("LABEL") != p.label:
        return False
    if p.fs is FsType.VFAT:
        return info.get("VERSION") == "FAT32"
    return info.get("BLOCK_SIZE") == str(p.block_size)


def mkfs_argv(ext: Extent, node: str) -> list[str]:
    p = ext.partition
    if p.fs is FsType.VFAT:
        small = ["-s", "1"] if ext.size < SMALL_ESP else []
        return ["mkfs.vfat", "-F", "32", *small, "-n", p.label, node]
    return ["mkfs.ext4", "-q", "-F", "-b", str(p.block_size), "-L", p.label, node]


def udev_running() -> bool:
    return Path("/run/udev/control").exists()


class DiskPhase:
    def __init__(self, runner: Runner, params: DiskParams) -> None:
        self.runner = runner
        self.params = params
        self.device = os.path.realpath(params.device)
        self.layout = params.layout
        self.plan = runner.mode is Mode.PLAN
        self._pending = False  # plan mode: an earlier step was planned, later checks cannot read it
        self._written: DiskState | None = None  # the state this run wrote (kept even without a state file)
        self.disk = self.guard()

    # -- state -----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | None:
        if self.params.state_path is not None:
            return self.params.state_path
        t = self.runner.transcript
        return t.parent / STATE_NAME if t is not None else None

    def load_state(self) -> DiskState | None:
        if self._written is not None:
            return self._written
        sp = self.state_path
        if sp is None or not sp.is_file():
            return None
        try:
            data = json.loads(sp.read_text())
            data["formatted"] = tuple(data.get("formatted", ()))
            return DiskState(**data)
        except (ValueError, TypeError):
            return None

    def save_state(self, state: DiskState) -> None:
        self._written = state
        sp = self.state_path
        if sp is not None:
            atomic_write_text(sp, json.dumps(asdict(state), indent=2) + "\n")

    def _accepted(self) -> tuple[str, ...]:
        st = self.load_state()
        c = (self.params.confirm or "").strip().lower()
        if st and st.device == self.device and st.confirmed == c and st.layout == self.layout.name:
            return tuple(x for x in (st.fingerprint_after, st.fingerprint_blank) if x)
        return ()

    # -- guard -----------------------------------------------------------------------------
    def guard(self) -> DiskRecord:
        """Re-read the disk and refuse (before any command runs) on any finding."""
        try:
            disk = read_disk(self.runner, self.device)
        except LabkitError as exc:
            code = Code.NOT_FOUND if "does not exist" in exc.problem else Code.NOT_BLOCK
            self._refuse([Finding(code, exc.problem, exc.fix or "")])
        p = self.params
        findings = check_disk(disk, self.layout, confirm=p.confirm, wipe=p.wipe,
                              allow_removable=p.allow_removable, accepted_fingerprints=self._accepted(),
                              protected=p.protected)
        if findings:
            self._refuse(findings)
        self.disk = disk
        return disk

    def _refuse(self, findings: list[Finding]) -> None:
        exc = Refused(self.device, findings)
        for f in findings:
            self.runner.note(f"REFUSED {f.code.value}: {f.message}")
        raise exc

    # -- steps -----------------------------------------------------------------------------
    def extents(self) -> tuple[Extent, ...]:
        return self.layout.extents(self.disk.size)

    def steps(self) -> list[Step]:
        out = [
            Step("partition table", self._table_done, self._partition, self._verify_table),
            Step("partition nodes", self._nodes_done, self._reload_nodes, self._wait_nodes),
        ]
        for ext in self.extents():
            out.append(Step(f"format {ext.number} {ext.partition.fs.value} {ext.partition.label}",
                            functools.partial(self._fs_done, ext), functools.partial(self._format, ext),
                            functools.partial(self._verify_fs, ext)))
        return out

    def run(self) -> DiskResult:
        ran: list[str] = []
        skipped: list[str] = []
        start = len(self.runner.planned)
        with self.runner.step(f"disk phase {self.device} ({self.layout.name})"):
            for s in self.steps():
                with self.runner.step(s.name):
                    if not self._pending and s.check():
                        self.runner.note("done already: nothing to do")
                        skipped.append(s.name)
                        continue
                    s.apply()
                    ran.append(s.name)
                    if self.plan:
                        self._pending = True
                        continue
                    s.verify()
            disk = None
            if not self.plan:
                with self.runner.step("verify disk against layout"):
                    disk = self.verify()
        return DiskResult(disk, tuple(ran), tuple(skipped), tuple(self.runner.planned[start:]))

    # partition table
    def _table_done(self) -> bool:
        return layout_matches_table(self.guard(), self.layout)

    def _partition(self) -> None:
        disk = self.guard()
        # The state goes to disk BEFORE anything is written: a run killed at any point below leaves
        # the disk blank (after a wipe) or carrying this GUID, and both fingerprints are recorded,
        # so the same command resumes on this disk and on no other.
        guid = str(uuid.uuid4())
        after = fingerprint_of(disk.identity, disk.model, disk.size, guid)
        blank = fingerprint_of(disk.identity, disk.model, disk.size, "")
        state = DiskState(self.device, (self.params.confirm or "").strip().lower(), self.layout.name, guid, after,
                          fingerprint_blank=blank)
        if not self.plan:
            self.save_state(state)
        self.runner.note(f"new disk GUID {guid}: fingerprint after partitioning {after} (state: {self.state_path})")
        if self.params.wipe and (disk.partitions or disk.pttype or disk.whole_disk_fs):
            for part in disk.partitions:
                self.runner.run(["wipefs", "-a", part.path])
            self.runner.run(["sgdisk", "--zap-all", self.device])
            self.runner.run(["wipefs", "-a", self.device])
        self.runner.run(["sgdisk", *sgdisk_args(self.extents()), f"--disk-guid={guid}", self.device])

    def _verify_table(self) -> None:
        if not layout_matches_table(self.guard(), self.layout):
            raise VerifyFailed(f"the partition table on {self.device} does not match layout {self.layout.name!r}",
                               "run `sgdisk --print` on it and the phase again")

    # partition nodes
    def _nodes_done(self) -> bool:
        disk = read_disk(self.runner, self.device)
        for e in self.extents():
            p = disk.partition(e.number)
            if p is None or p.start != e.start or p.size != e.size or not os.path.exists(p.path):
                return False
        return len(disk.partitions) == len(self.extents())

    def _reload_nodes(self) -> None:
        if udev_running():
            self.runner.run(["udevadm", "settle", "--timeout=10"])
            return
        # no udev: ask the kernel to forget and re-add the partitions (nothing is mounted: guarded)
        self.runner.run(["partx", "-d", self.device], check=False)
        self.runner.run(["partx", "-a", self.device])

    def _wait_nodes(self) -> None:
        deadline = time.monotonic() + NODE_TIMEOUT_S
        while not self._nodes_done():
            if time.monotonic() > deadline:
                raise VerifyFailed(f"partition nodes of {self.device} did not appear within {NODE_TIMEOUT_S:g} s",
                                   f"run `partx -a {self.device}` (or `udevadm settle`) and the phase again")
            time.sleep(0.2)

    # filesystems
    def node(self, ext: Extent) -> str:
        return partition_node(self.device, ext.number)

    def _fs_done(self, ext: Extent) -> bool:
        return os.path.exists(self.node(ext)) and fs_matches(blkid(self.runner, self.node(ext)), ext)

    def _format(self, ext: Extent) -> None:
        disk = self.guard()
        node = self.node(ext)
        if not self._pending:
            info = blkid(self.runner, node)
            found = info.get("TYPE", "")
            st = self.load_state()
            # only a filesystem this labkit run recorded as its own may be formatted again without
            # --wipe; anything else on the partition (even under labkit's partition table) is data
            ours = st is not None and st.disk_guid == disk.ptuuid and info.get("UUID", "") in st.formatted
            if found and not ours and not self.params.wipe:
                self._refuse([Finding(Code.FOREIGN_FILESYSTEM,
                                      f"{node} holds a {found} filesystem {info.get('LABEL', '')!r} that labkit did "
                                      "not create",
                                      f"back it up, then pass --wipe --confirm {disk.fingerprint} to format it")])
        self.runner.run(mkfs_argv(ext, node))
        if not self.plan:
            made = blkid(self.runner, node).get("UUID", "")
            st = self.load_state()
            if made and st is not None and st.disk_guid == disk.ptuuid:
                self.save_state(dataclasses.replace(st, formatted=(*st.formatted, made)))

    def _verify_fs(self, ext: Extent) -> None:
        if not self._fs_done(ext):
            raise VerifyFailed(f"{self.node(ext)} does not carry {ext.partition.fs.value} {ext.partition.label!r}",
                               "run the phase again")

    # -- read back ---------------------------------------------------------------------------
    def verify(self) -> DiskRecord:
        """Read the table (GPT parsed in Python) and the filesystems back; compare with the layout."""
        disk = read_disk(self.runner, self.device)
        table = read_gpt(Path(self.device))
        self.runner.run(["sgdisk", "--verify", self.device], query=True)
        by_num = {e.number: e for e in table.entries}
        problems: list[str] = []
        if table.disk_guid.lower() != disk.ptuuid:
            problems.append(f"disk GUID {table.disk_guid} != blkid PTUUID {disk.ptuuid}")
        if set(by_num) != {e.number for e in self.extents()}:
            problems.append(f"partitions {sorted(by_num)}, layout wants {[e.number for e in self.extents()]}")
        for ext in self.extents():
            ent, p, rec = by_num.get(ext.number), ext.partition, disk.partition(ext.number)
            if ent is None or rec is None:
                problems.append(f"partition {ext.number} missing")
                continue
            if (ent.start, ent.size) != (ext.start, ext.size) or ent.name != p.name:
                problems.append(f"partition {ext.number}: {ent.start}+{ent.size} {ent.name!r}, layout wants "
                                f"{ext.start}+{ext.size} {p.name!r}")
            if ent.type_guid != TYPE_GUIDS[p.type_code.lower()]:
                problems.append(f"partition {ext.number}: type {ent.type_guid}, layout wants {p.type_code}")
            if (rec.fs_type, rec.label) != (p.fs.value, p.label):
                problems.append(f"partition {ext.number}: {rec.fs_type} {rec.label!r}, layout wants "
                                f"{p.fs.value} {p.label!r}")
            if p.fs is FsType.EXT4 and rec.fs_block_size != p.block_size:
                problems.append(f"partition {ext.number}: ext4 block size {rec.fs_block_size}, needs {p.block_size}")
        if problems:
            raise VerifyFailed(f"{self.device} does not match layout {self.layout.name!r}:\n    "
                               + "\n    ".join(problems), "run the phase again with --wipe")
        return disk


def run_disk_phase(runner: Runner, params: DiskParams) -> DiskResult:
    """Guard, then run (or, in plan mode, record) every step not yet done."""
    return DiskPhase(runner, params).run()


def plan_disk_phase(params: DiskParams, transcript: Path | None = None) -> DiskResult:
    """The exact commands the phase would run on the disk as it is now (queries run, nothing else)."""
    runner = Runner(mode=Mode.PLAN, transcript=transcript, progress=None)
    return DiskPhase(runner, params).run()


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
                runner.run(["mount", "-t", fstype, partition_node(device, ext.number), target])
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
