"""The Target interface: where a phase writes.

Three implementations share it:

- :class:`~labkit.targets.image.ImageTarget` — the lab's sparse disk image, built and filled without
  mounting anything (``sgdisk``, ``mkfs.vfat --offset``, ``mke2fs -E offset=… -d``, mtools, debugfs);
- :class:`~labkit.targets.device.DeviceTarget` — a real block device (a loop device in the tests),
  written only after the safety checks pass and the typed fingerprint matches, again before every
  destructive command;
- :class:`~labkit.targets.device.PlanTarget` — records the device's commands (on the chosen device,
  or a named placeholder) and runs none.

A phase never asks which target it has: it describes what it puts on the disk (the layout, then one
staged directory per partition, :class:`Files`) and calls the primitives below. The read-back
(:meth:`Target.tree_problems`) is the same code for the image and the device: mtools for the FAT ESP,
``debugfs`` for ext4 — both read the filesystem without mounting it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labkit.core.errors import LabkitError, VerifyFailed
from labkit.core.layout import Extent, FsType, Layout, Role
from labkit.core.runner import Mode, Runner

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class Files:
    """What a phase puts on one partition: the whole content of ``tree`` (a directory labkit staged on
    the host) lands at the partition's root; what else the partition holds is left alone."""

    role: Role
    tree: Path  # may not exist in plan mode (nothing was staged)
    what: str  # for plans and errors: "rEFInd and its ext4 driver"


class Target(ABC):
    """Where the phases write; see the module docstring."""

    kind: str = "?"

    def __init__(self, runner: Runner, layout: Layout) -> None:
        self.runner = runner
        self.layout = layout

    @property
    def plan(self) -> bool:
        return self.runner.mode is Mode.PLAN

    # -- identity ----------------------------------------------------------------------------
    @abstractmethod
    def describe(self) -> str:
        """One line naming the target for plans and logs."""

    @property
    @abstractmethod
    def disk_size(self) -> int: ...

    def extents(self) -> tuple[Extent, ...]:
        return self.layout.extents(self.disk_size)

    def extent(self, role: Role) -> Extent:
        return next(e for e in self.extents() if e.partition.role is role)

    # -- the disk phase --------------------------------------------------------------------------
    @abstractmethod
    def table_matches(self) -> bool:
        """The partition table is exactly the layout's (positions, sizes, types, names)."""

    @abstractmethod
    def write_table(self, *, wipe: bool) -> None: ...

    @abstractmethod
    def nodes_ready(self) -> bool: ...

    @abstractmethod
    def make_nodes(self) -> None: ...

    @abstractmethod
    def fs_info(self, ext: Extent) -> dict[str, str]:
        """``blkid -p`` of the partition (empty when no filesystem is found)."""

    @abstractmethod
    def format(self, ext: Extent, *, wipe: bool) -> None: ...

    @abstractmethod
    def layout_problems(self) -> list[str]:
        """Read the table and filesystems back; every difference from the layout (sizes included)."""

    def fs_matches(self, ext: Extent) -> bool:
        info = self.fs_info(ext)
        p = ext.partition
        if info.get("TYPE") != p.fs.value or info.get("LABEL") != p.label:
            return False
        if p.fs is FsType.VFAT:
            return info.get("VERSION") == "FAT32"
        return info.get("BLOCK_SIZE") == str(p.block_size)

    # -- content ---------------------------------------------------------------------------------
    @abstractmethod
    def spec(self, role: Role) -> str:
        """How mtools (``-i SPEC``) and debugfs address the partition: ``IMG@@OFFSET`` / ``IMG?offset=N``
        for the image, the partition's node for a device."""

    @abstractmethod
    def put_ext4_tree(self, ext: Extent, files: Files) -> None: ...

    def put_tree(self, files: Files) -> None:
        """Copy ``files.tree`` onto its partition (plan mode: record the commands)."""
        ext = self.extent(files.role)
        if not self.plan and not files.tree.is_dir():
            raise LabkitError(f"nothing staged for {files.what}: {files.tree} is not a directory",
                              "run the phase again (it stages its files first)")
        if self.plan and files.tree.is_dir():
            staged = sorted(p.relative_to(files.tree).as_posix() for p in files.tree.rglob("*") if not p.is_dir())
            self.runner.note(f"{files.what}: " + (", ".join(staged[:12]) + (f" and {len(staged) - 12} more"
                                                                         if len(staged) > 12 else "")))
        if ext.partition.fs is FsType.VFAT:
            self._put_fat_tree(files)
        else:
            self.put_ext4_tree(ext, files)

    def _put_fat_tree(self, files: Files) -> None:
        spec = self.spec(files.role)
        if not files.tree.is_dir():  # plan mode, nothing staged
            self.runner.run(["mcopy", "-s", "-o", "-i", spec, f"{files.tree}/*", "::/"], env=MTOOLS_ENV)
            return
        dirs = sorted("::/" + p.relative_to(files.tree).as_posix() for p in files.tree.rglob("*") if p.is_dir())
        have = self._fat_dirs(spec) if dirs and not self.plan else set()
        missing = [d for d in dirs if d.upper() not in have]
        if missing:
            self.runner.run(["mmd", "-i", spec, *missing], env=MTOOLS_ENV)
        for f in sorted(p for p in files.tree.rglob("*") if p.is_file()):
            self.runner.run(["mcopy", "-o", "-i", spec, f, "::/" + f.relative_to(files.tree).as_posix()],
                            env=MTOOLS_ENV)

    def _fat_dirs(self, spec: str) -> set[str]:
        res = self.runner.run(["mdir", "-/", "-b", "-i", spec, "::/"], env=MTOOLS_ENV, query=True, check=False)
        return {ln.strip().rstrip("/").upper() for ln in res.stdout.splitlines() if ln.strip().endswith("/")}

    def tree_problems(self, files: Files) -> list[str]:
        """Every staged file missing or different on the partition (read back without mounting)."""
        if not files.tree.is_dir():
            return [f"nothing staged for {files.what} ({files.tree})"]
        ext = self.extent(files.role)
        want = manifest(files.tree, fat=ext.partition.fs is FsType.VFAT)
        with tempfile.TemporaryDirectory(prefix="labkit-readback-") as tmp:
            out = Path(tmp)
            if ext.partition.fs is FsType.VFAT:
                self._dump_fat(files.role, want, out)
            else:
                self._dump_ext4(files.role, files.tree, out)
            have = manifest(out, fat=ext.partition.fs is FsType.VFAT)
        problems = []
        for path, meta in want.items():
            got = have.get(path)
            if got is None:
                problems.append(f"{path} is missing")
            elif got != meta:
                problems.append(f"{path} differs ({_diff(meta, got)})")
        return problems

    def has_tree(self, files: Files) -> bool:
        if self.plan and not files.tree.is_dir():
            return False
        try:
            return not self.tree_problems(files)
        except LabkitError:
            return False

    def verify_tree(self, files: Files) -> None:
        problems = self.tree_problems(files)
        if problems:
            shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
            raise VerifyFailed(f"{files.what} did not read back from {self.describe()} "
                               f"(partition {self.extent(files.role).number}):\n    " + "\n    ".join(shown),
                               "run the phase again; if it fails again, check the disk (fsck) and its cable")

    def _dump_fat(self, role: Role, want: dict[str, tuple[object, ...]], out: Path) -> None:
        tops = sorted({p.split("/", 1)[0] for p in want})
        for top in tops:
            self.runner.run(["mcopy", "-s", "-n", "-i", self.spec(role), f"::/{top}", out], env=MTOOLS_ENV,
                            query=True, check=False)

    def _dump_ext4(self, role: Role, tree: Path, out: Path) -> None:
        cmds = "".join(f"rdump {_debugfs_quote('/' + p.name)} {_debugfs_quote(str(out))}\n"
                       for p in sorted(tree.iterdir()))
        script = out.parent / "debugfs.cmds"
        script.write_text(cmds)
        self.runner.run(["debugfs", "-f", script, self.spec(role)], query=True, check=False)

    def read_file(self, role: Role, path: str) -> bytes | None:
        """One file from a partition, read without mounting (None when it is not there)."""
        ext = self.extent(role)
        with tempfile.TemporaryDirectory(prefix="labkit-read-") as tmp:
            dest = Path(tmp) / "f"
            if ext.partition.fs is FsType.VFAT:
                self.runner.run(["mcopy", "-n", "-i", self.spec(role), f"::/{path}", dest], env=MTOOLS_ENV,
                                query=True, check=False)
            else:
                self.runner.run(["debugfs", "-R", f"dump {_debugfs_quote('/' + path)} {_debugfs_quote(str(dest))}",
                                 self.spec(role)], query=True, check=False)
            return dest.read_bytes() if dest.is_file() else None

    # -- booting -----------------------------------------------------------------------------------
    @abstractmethod
    def boot_disk(self) -> Path:
        """The file or device QEMU boots."""


# -- manifests ---------------------------------------------------------------------------------------
def manifest(root: Path, *, fat: bool = False) -> dict[str, tuple[object, ...]]:
    """path -> (kind, mode, size, sha256 | link target) for everything under ``root``. On FAT there are
    no modes, links or case: files only, names upper-cased, modes left out."""
    out: dict[str, tuple[object, ...]] = {}
    for p in _walk(root):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        if fat:
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                out[rel.upper()] = ("f", _sha256(p))
            continue
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", oct(mode))
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("f", oct(mode), st.st_size, _sha256(p))
    return out


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            yield base / name


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _diff(want: tuple[object, ...], got: tuple[object, ...]) -> str:
    names = {"d": ("kind", "mode"), "l": ("kind", "target"), "f": ("kind", "mode", "size", "sha256")}
    fields = names.get(str(want[0]), ())
    if len(want) == 2 and want[0] == "f":  # FAT
        fields = ("kind", "sha256")
    return ", ".join(f"{n}: want {w}, found {g}" for n, w, g in zip(fields, want, got, strict=False) if w != g) \
        or "kind differs"


def _debugfs_quote(text: str) -> str:
    """debugfs splits its command lines on blanks; it takes double quotes around a word."""
    if '"' in text or "\n" in text:
        raise LabkitError(f"cannot address {text!r} with debugfs (a quote or newline in the name)",
                          "rename the file")
    return f'"{text}"'


def check_relative(path: str) -> PurePosixPath:
    """A path inside a partition: relative, no '..', no empty parts."""
    p = PurePosixPath(path.replace("\\", "/").lstrip("/"))
    if not p.parts or ".." in p.parts:
        raise LabkitError(f"bad path inside a partition: {path!r}", "use a relative path like EFI/BOOT/refind.conf")
    return p
