"""The device target: a real block device (a loop device in the tests), and the plan target.

Safety: every primitive that writes re-reads the disk first and runs
:func:`labkit.targets.safety.check_disk` again (fingerprint, mounts, swap, holders, busy, system
disk, ...); any finding raises :class:`~labkit.targets.safety.Refused` before a command runs.
Partitions are found through sysfs (the disk's major:minor and its children), never by appending a
number to the path the user typed.

Resumable across the fingerprint change. Partitioning writes a new partition table, hence a new
PTUUID, hence a new fingerprint. labkit picks the new disk GUID *before* partitioning and writes a
state file (atomically) holding the confirmed fingerprint, the GUID it is about to write and the
fingerprint the disk will have afterwards. A run killed at any point then finds the disk either
unchanged (the confirmed fingerprint still matches) or carrying exactly the recorded GUID (the state
file links the confirmed fingerprint to the new one). ``--wipe`` never re-wipes a disk whose table
already is the layout: re-running the same command on a finished install must not destroy it.

Content goes onto an ext4 partition by mounting it on a private directory, copying the staged tree
with ``cp -a`` and unmounting; the FAT ESP is written with mtools on its partition node (this host's
kernel cannot mount FAT, and mtools needs no mount). What else a partition holds is left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.core.errors import LabkitError, VerifyFailed
from labkit.core.layout import Extent, FsType, Layout, Role
from labkit.core.runner import Runner, atomic_write_text
from labkit.targets.base import Files, Target
from labkit.targets.disks import DiskRecord, blkid, fingerprint_of, partition_node, read_disk
from labkit.targets.gpt import read_gpt, table_problems
from labkit.targets.image import fs_problems, mke2fs_argv, mkfs_vfat_argv, sgdisk_args
from labkit.targets.safety import Code, Finding, Refused, check_disk, layout_matches_table

STATE_NAME = "disk-state.json"
NODE_TIMEOUT_S = 10.0
#: What the plan target shows when no device was chosen: every command, on a name that is no disk.
PLACEHOLDER = "/dev/sdX"


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
    formatted_parts: tuple[int, ...] = ()  # partition numbers labkit formatted under this table


def udev_running() -> bool:
    return Path("/run/udev/control").exists()


class DeviceTarget(Target):
    """A whole disk, written after the safety checks and the typed fingerprint (module docstring)."""

    kind = "device"

    def __init__(self, runner: Runner, layout: Layout, device: str, *, confirm: str | None, wipe: bool = False,
                 allow_removable: bool = False, state_path: Path | None = None,
                 protected: tuple[str, ...] | None = None, work: Path | None = None) -> None:
        super().__init__(runner, layout)
        self.device = os.path.realpath(device) if not self.plan or os.path.exists(device) else device
        self.confirm = (confirm or "").strip().lower()
        self.allow_removable = allow_removable
        self._state_path = state_path
        self.protected = protected
        self.work = work
        self._written: DiskState | None = None
        self.disk: DiskRecord | None = None
        self.wipe = wipe
        self.disk = self.guard()

    # -- identity --------------------------------------------------------------------------------
    def describe(self) -> str:
        return self.disk.describe() if self.disk is not None else f"{self.device} (not read: plan only)"

    @property
    def disk_size(self) -> int:
        return self.disk.size if self.disk is not None else self.layout.disk_size

    def boot_disk(self) -> Path:
        return Path(self.device)

    # -- state -----------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path | None:
        if self._state_path is not None:
            return self._state_path
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
            data["formatted_parts"] = tuple(data.get("formatted_parts", ()))
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
        if st and st.device == self.device and st.confirmed == self.confirm and st.layout == self.layout.name:
            return tuple(x for x in (st.fingerprint_after, st.fingerprint_blank) if x)
        return ()

    # -- guard -------------------------------------------------------------------------------------
    def guard(self) -> DiskRecord | None:
        """Re-read the disk and refuse (before any command runs) on any finding. A plan on a device
        that does not exist (the placeholder) reads nothing."""
        if self.plan and not os.path.exists(self.device):
            self.runner.note(f"plan on {self.device}: no such device here, every step is shown as it would run")
            return None
        try:
            disk = read_disk(self.runner, self.device)
        except LabkitError as exc:
            code = Code.NOT_FOUND if "does not exist" in exc.problem else Code.NOT_BLOCK
            self._refuse([Finding(code, exc.problem, exc.fix or "")])
        findings = check_disk(disk, self.layout, confirm=self.confirm or None, wipe=self.wipe,
                              allow_removable=self.allow_removable, accepted_fingerprints=self._accepted(),
                              protected=self.protected)
        if findings:
            self._refuse(findings)
        self.disk = disk
        self.device = disk.path
        return disk

    def _refuse(self, findings: list[Finding]) -> None:
        for f in findings:
            self.runner.note(f"REFUSED {f.code.value}: {f.message}")
        raise Refused(self.device, findings)

    def node(self, ext: Extent) -> str:
        """The partition's device node, found through sysfs (plan on a placeholder: its usual name)."""
        if self.disk is None:
            return partition_node(self.device, ext.number)
        disk = self.disk if self.disk.partition(ext.number) else read_disk(self.runner, self.device)
        part = disk.partition(ext.number)
        if part is None and self.plan:  # planned after a planned sgdisk: the name the kernel will give it
            return partition_node(f"/dev/{disk.name}", ext.number)
        if part is None:
            raise LabkitError(f"{self.device} has no partition {ext.number} (the kernel does not list it)",
                              f"run `partx -a {self.device}` (or `udevadm settle`) and the phase again")
        return part.path

    # -- the disk phase -----------------------------------------------------------------------------
    def table_matches(self) -> bool:
        if self.disk is None:
            return False
        return layout_matches_table(self.guard() or self.disk, self.layout)

    def write_table(self, *, wipe: bool) -> None:
        self.wipe = wipe
        disk = self.guard()
        if disk is None:  # plan on the placeholder
            self.runner.run(["wipefs", "-a", self.device]) if wipe else None
            self.runner.run(["sgdisk", *sgdisk_args(self.extents()), "--disk-guid=<new GUID>", self.device])
            return
        # The state goes to disk BEFORE anything is written: a run killed at any point below leaves
        # the disk blank (after a wipe) or carrying this GUID, and both fingerprints are recorded,
        # so the same command resumes on this disk and on no other.
        guid = str(uuid.uuid4())
        after = fingerprint_of(disk.identity, disk.model, disk.size, guid)
        blank = fingerprint_of(disk.identity, disk.model, disk.size, "")
        state = DiskState(self.device, self.confirm, self.layout.name, guid, after, fingerprint_blank=blank)
        if not self.plan:
            self.save_state(state)
        self.runner.note(f"new disk GUID {guid}: fingerprint after partitioning {after} (state: {self.state_path})")
        if wipe and (disk.partitions or disk.pttype or disk.whole_disk_fs):
            for part in disk.partitions:
                self.runner.run(["wipefs", "-a", part.path])
            self.runner.run(["sgdisk", "--zap-all", self.device])
            self.runner.run(["wipefs", "-a", self.device])
        self.runner.run(["sgdisk", *sgdisk_args(self.extents()), f"--disk-guid={guid}", self.device])

    def nodes_ready(self) -> bool:
        if self.disk is None:
            return False
        disk = read_disk(self.runner, self.device)
        for e in self.extents():
            p = disk.partition(e.number)
            if p is None or p.start != e.start or p.size != e.size or not os.path.exists(p.path):
                return False
        return len(disk.partitions) == len(self.extents())

    def make_nodes(self) -> None:
        if udev_running():
            self.runner.run(["udevadm", "settle", "--timeout=10"])
        else:  # no udev: ask the kernel to forget and re-add the partitions (nothing is mounted: guarded)
            self.runner.run(["partx", "-d", self.device], check=False)
            self.runner.run(["partx", "-a", self.device])
        if self.plan:
            return
        deadline = time.monotonic() + NODE_TIMEOUT_S
        while not self.nodes_ready():
            if time.monotonic() > deadline:
                raise VerifyFailed(f"partition nodes of {self.device} did not appear within {NODE_TIMEOUT_S:g} s",
                                   f"run `partx -a {self.device}` (or `udevadm settle`) and the phase again")
            time.sleep(0.2)
        self.disk = read_disk(self.runner, self.device)

    def fs_info(self, ext: Extent) -> dict[str, str]:
        if self.disk is None:
            return {}
        part = read_disk(self.runner, self.device).partition(ext.number)
        return blkid(self.runner, part.path) if part is not None and os.path.exists(part.path) else {}

    def format(self, ext: Extent, *, wipe: bool) -> None:
        self.wipe = wipe
        disk = self.guard()
        node = self.node(ext)
        if disk is not None and os.path.exists(node) and not wipe:
            self._check_ours(disk, ext, node)
        argv = mkfs_vfat_argv(ext, node) if ext.partition.fs is FsType.VFAT else mke2fs_argv(ext, node)
        self.runner.run(argv)
        if not self.plan and disk is not None:
            made = blkid(self.runner, node).get("UUID", "")
            st = self.load_state()
            if made and st is not None and st.disk_guid == disk.ptuuid:
                self.save_state(dataclasses.replace(st, formatted=(*st.formatted, made),
                                                    formatted_parts=tuple(sorted({*st.formatted_parts, ext.number}))))

    def _check_ours(self, disk: DiskRecord, ext: Extent, node: str) -> None:
        """Without --wipe, labkit formats only a partition it can prove is its own and untouched: it wrote this
        very partition table (the state file holds the table's GUID) and has never formatted the partition
        since (a partition it formatted and that now carries no readable filesystem was damaged: its data
        may be recoverable, so it is not formatted again). Anything else — a filesystem, a signature, or an
        empty partition under a table labkit did not write — is treated as data."""
        info = blkid(self.runner, node)
        st = self.load_state()
        fix = f"back it up, then pass --wipe --confirm {disk.fingerprint} to format it"
        ours_table = st is not None and st.disk_guid == disk.ptuuid
        if info.get("TYPE"):
            what = f"a {info['TYPE']} filesystem {info.get('LABEL', '')!r}"
            mine = ours_table and st is not None and info.get("UUID", "") in st.formatted
            why = "that does not match the layout any more (changed since labkit made it)" if mine else \
                "that labkit did not create"
            self._refuse([Finding(Code.FOREIGN_FILESYSTEM, f"{node} holds {what} {why}", fix)])
        if not ours_table:
            self._refuse([Finding(Code.FOREIGN_FILESYSTEM,
                                  f"{node} carries no readable filesystem, and labkit did not write this partition "
                                  "table (no state file of this disk): it may hold data whose signature is damaged",
                                  fix + " (or run labkit again with the --out of the run that partitioned it)")])
        if st is not None and ext.number in st.formatted_parts:
            self._refuse([Finding(Code.FOREIGN_FILESYSTEM,
                                  f"{node} held a filesystem labkit made, and its signature is gone (damaged "
                                  "superblock?): its data may still be recoverable",
                                  "try `e2fsck -b 32768` (ext4) or `fsck.vfat` first; to start over pass "
                                  f"--wipe --confirm {disk.fingerprint}")])

    def layout_problems(self) -> list[str]:
        disk = read_disk(self.runner, self.device)
        table = read_gpt(Path(self.device))
        self.runner.run(["sgdisk", "--verify", self.device], query=True)
        problems: list[str] = []
        if table.disk_guid.lower() != disk.ptuuid:
            problems.append(f"disk GUID {table.disk_guid} != blkid PTUUID {disk.ptuuid}")
        problems += table_problems(table.entries, self.layout.extents(disk.size))
        for ext in self.layout.extents(disk.size):
            rec = disk.partition(ext.number)
            if rec is None:
                problems.append(f"partition {ext.number}: the kernel does not list it")
                continue
            if (rec.start, rec.size) != (ext.start, ext.size):
                problems.append(f"partition {ext.number}: the kernel sees {rec.start}+{rec.size}, the table says "
                                f"{ext.start}+{ext.size} (run partx -u)")
            problems += fs_problems(self.runner, ext, blkid(self.runner, rec.path), rec.path)
        return problems

    # -- content -------------------------------------------------------------------------------------
    def spec(self, role: Role) -> str:
        return self.node(self.extent(role))

    def put_ext4_tree(self, ext: Extent, files: Files) -> None:
        with self.mounted(ext) as mnt:
            self.runner.run(["cp", "-a", "--no-preserve=ownership", f"{files.tree}/.", f"{mnt}/"])
            self.runner.run(["sync", "-f", f"{mnt}/"])

    @contextlib.contextmanager
    def mounted(self, ext: Extent) -> Iterator[str]:
        """Mount the partition (after the guard, and only if it carries the layout's filesystem) on a
        private directory; unmount whatever happens."""
        self.guard()
        node = self.node(ext)
        p = ext.partition
        if self.disk is not None and not self.plan:
            info = blkid(self.runner, node)
            if (info.get("TYPE"), info.get("LABEL")) != (p.fs.value, p.label):
                raise VerifyFailed(f"{node} does not carry the {p.fs.value} filesystem {p.label!r} the disk phase made "
                                   f"(found {info.get('TYPE') or 'nothing'} {info.get('LABEL', '')!r})",
                                   "run the disk phase first (labkit install runs it)")
        if self.plan:
            mnt = f"<private mount dir for {p.label}>"
            self.runner.run(["mount", "-t", p.fs.value, "-o", "nodev,nosuid", node, mnt])
            yield mnt
            self.runner.run(["umount", mnt])
            return
        base = self.work if self.work is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        mnt = tempfile.mkdtemp(prefix=f".mnt-{p.label}-", dir=base)
        try:
            self.runner.run(["mount", "-t", p.fs.value, "-o", "nodev,nosuid", node, mnt])
            try:
                yield mnt
            finally:
                self.runner.run(["umount", mnt])
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(mnt)


class PlanTarget(DeviceTarget):
    """The device target's commands, recorded on the chosen device or on :data:`PLACEHOLDER`; nothing
    runs but read-only queries on a device that exists (so the plan shows only what is not done)."""

    kind = "plan"

    def __init__(self, runner: Runner, layout: Layout, device: str = PLACEHOLDER, **kwargs: object) -> None:
        if not runner.mode.value == "plan":
            raise LabkitError("the plan target needs a runner in plan mode", "use Runner(mode=Mode.PLAN)")
        kwargs.setdefault("confirm", None)
        super().__init__(runner, layout, device or PLACEHOLDER, **kwargs)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{super().describe()} [plan]"
