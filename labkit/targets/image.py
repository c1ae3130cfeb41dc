"""The image target: the lab's sparse disk image, written and read back without mounting anything.

- partition table: ``truncate`` + ``sgdisk`` on a new file (under a temporary name, renamed once the
  table is written), with a record of ownership beside it (``<image>.labkit.json``: the disk GUID
  labkit wrote). Like systemd-repart, the target refuses an existing file it did not make.
- filesystems, in place at each partition's offset: ``mkfs.vfat -F 32 --offset`` and
  ``mke2fs -t ext4 -b 4096 -E offset=…`` (4 KiB blocks: rEFInd's ext4 driver, see KNOWLEDGE.md);
- content: the FAT ESP through mtools (``-i IMG@@OFFSET``, as on a device's partition node); an
  ext4 partition is made again with ``mke2fs -d`` from the union of everything the phases staged for
  it, keeping its UUID and label (``-U``, ``-L``): the image is labkit's own, so the filesystem holds
  exactly what the phases put there — which is what a device's partition holds after labkit copied
  the same files onto it.
- read-back: the same mtools / debugfs code as a device (:class:`~labkit.targets.base.Target`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import CommandFailed, InputError, VerifyFailed
from labkit.core.layout import SECTOR, Extent, FsType, Layout, MiB, Role
from labkit.core.runner import Runner, atomic_write_text
from labkit.targets.base import MTOOLS_ENV, Files, Target
from labkit.targets.gpt import read_gpt, table_problems

#: FAT32 needs >= 65525 clusters: below this size use one sector per cluster.
SMALL_ESP = 256 * MiB
#: Chunk of the content digest; all-zero chunks (holes or written zeros) are skipped.
DIGEST_CHUNK = 1 * MiB
#: A filesystem may end this much before its partition (mkfs.vfat rounds down to its geometry).
FS_SLACK = 1 * MiB

__all__ = [
    "MTOOLS_ENV",
    "SMALL_ESP",
    "ImageInfo",
    "ImageTarget",
    "PartitionInfo",
    "content_sha256",
    "sgdisk_args",
    "verify_image",
]


@dataclass(frozen=True)
class PartitionInfo:
    number: int
    role: Role
    name: str  # GPT partition name
    type_code: str
    start: int  # bytes
    size: int  # bytes
    part_guid: str  # GPT unique partition GUID (PARTUUID)
    fs: FsType
    label: str
    fs_uuid: str  # ext4 UUID or FAT volume id (XXXX-XXXX)
    block_size: int | None  # ext4 only


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    size: int
    disk_guid: str
    #: sha256 over (offset, chunk) of every non-zero 1 MiB chunk plus the size: identical
    #: content gives the same digest whether zeros are holes or written; cost ~ data, not size.
    content_sha256: str
    partitions: tuple[PartitionInfo, ...]
    build_s: float = 0.0
    planned: bool = False  # plan mode: nothing was built, fields are placeholders

    def partition(self, role: Role) -> PartitionInfo:
        for p in self.partitions:
            if p.role is role:
                return p
        raise KeyError(role)

    def offset(self, role: Role) -> int:
        return self.partition(role).start


def sgdisk_args(extents: Iterable[Extent]) -> list[str]:
    """``sgdisk`` options creating a fresh GPT with these partitions (exact sector extents)."""
    args = ["--clear", "--set-alignment=2048"]
    for e in extents:
        n = e.number
        args += [f"--new={n}:{e.start_sector}:{e.end_sector}", f"--typecode={n}:{e.partition.type_code}",
                 f"--change-name={n}:{e.partition.name}"]
    return args


def mkfs_vfat_argv(ext: Extent, dest: str, *, offset: int | None = None) -> list[str]:
    """FAT32 for the ESP (one sector per cluster below 256 MiB: FAT32 needs 65525 clusters)."""
    p = ext.partition
    small = ["-s", "1"] if ext.size < SMALL_ESP else []
    if offset is None:
        return ["mkfs.vfat", "-F", "32", *small, "-n", p.label, dest]
    return ["mkfs.vfat", "-F", "32", *small, "-n", p.label, "--offset", str(offset // SECTOR), dest,
            str(ext.size // 1024)]


def mke2fs_argv(ext: Extent, dest: str, *, offset: int | None = None, tree: Path | None = None,
                uuid: str | None = None) -> list[str]:
    """ext4 with 4 KiB blocks (rEFInd's ext4 driver), optionally filled from ``tree`` and at ``offset``."""
    p = ext.partition
    if offset is None and tree is None and uuid is None:  # a device's partition: the post's plain mkfs.ext4
        return ["mkfs.ext4", "-q", "-F", "-b", str(p.block_size), "-L", p.label, dest]
    opts = "lazy_itable_init=1,lazy_journal_init=1" + (f",offset={offset}" if offset is not None else "")
    return ["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(p.block_size), "-L", p.label, "-E", opts,
            *(["-U", uuid] if uuid else []), *(["-d", str(tree)] if tree is not None else []), dest,
            f"{ext.size // 1024}k"]


class ImageTarget(Target):
    """A sparse disk image file owned by labkit (see the module docstring)."""

    kind = "image"

    def __init__(self, runner: Runner, layout: Layout, path: Path, *, size: int | None = None,
                 work: Path | None = None) -> None:
        super().__init__(runner, layout)
        self.path = Path(path)
        self.size = layout.disk_size if size is None else size
        #: per-partition staging: the union of every tree the phases put on each ext4 partition
        self.work = Path(work) if work is not None else self.path.with_name(f".{self.path.name}.d")
        layout.extents(self.size)  # raises when the layout does not fit

    @property
    def record_path(self) -> Path:
        return self.path.with_name(self.path.name + ".labkit.json")

    def describe(self) -> str:
        return f"image {self.path} ({self.layout.name} layout, {self.size // MiB} MiB, sparse)"

    @property
    def disk_size(self) -> int:
        return self.size

    def boot_disk(self) -> Path:
        return self.path

    # -- ownership ---------------------------------------------------------------------------------
    def _owned_guid(self) -> str | None:
        try:
            return str(json.loads(self.record_path.read_text())["disk_guid"]).upper()
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def owned(self) -> bool:
        """The file is the image labkit made: its GPT carries the disk GUID labkit recorded."""
        guid = self._owned_guid()
        if guid is None or not self.path.is_file():
            return False
        try:
            return read_gpt(self.path).disk_guid.upper() == guid
        except Exception:
            return False

    def _refuse_foreign(self) -> None:
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"{self.path} exists and is not a regular file",
                             "give a new file name for the lab image (a device is the device target's)")
        if self.path.is_file() and not self.owned():
            raise InputError(f"{self.path} exists and labkit did not make it (no matching {self.record_path.name})",
                             "give a new file name, or pass --wipe to replace it")

    # -- the disk phase ---------------------------------------------------------------------------
    def table_matches(self) -> bool:
        if not self.path.is_file() or self.path.stat().st_size != self.size or not self.owned():
            return False
        return not table_problems(read_gpt(self.path).entries, self.extents())

    def write_table(self, *, wipe: bool) -> None:
        if not wipe and not self.plan:
            self._refuse_foreign()
        tmp = self.path.with_name(f".{self.path.name}.new")
        if not self.plan:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.unlink(missing_ok=True)
            shutil.rmtree(self.work, ignore_errors=True)
        self.runner.run(["truncate", "-s", str(self.size), tmp])
        self.runner.run(["sgdisk", *sgdisk_args(self.extents()), tmp])
        if not self.plan:
            guid = read_gpt(tmp).disk_guid
            os.replace(tmp, self.path)
            atomic_write_text(self.record_path, json.dumps({"disk_guid": guid, "layout": self.layout.name,
                                                            "size": self.size}, indent=2) + "\n")
            self.runner.note(f"{self.path.name}: new GPT, disk GUID {guid}")

    def nodes_ready(self) -> bool:
        return True  # an image has no partition nodes: every tool addresses a partition by its offset

    def make_nodes(self) -> None:
        return None

    def fs_info(self, ext: Extent) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        res = self.runner.run(["blkid", "-p", "-O", str(ext.start), "-o", "export", self.path], query=True,
                              check=False)
        return dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)

    def format(self, ext: Extent, *, wipe: bool) -> None:
        if not self.plan and not self.owned():
            self._refuse_foreign()
        if ext.partition.fs is FsType.VFAT:
            self.runner.run(mkfs_vfat_argv(ext, str(self.path), offset=ext.start))
        else:
            self.runner.run(mke2fs_argv(ext, str(self.path), offset=ext.start))
        if not self.plan:
            shutil.rmtree(self.work / ext.partition.role.value, ignore_errors=True)

    def layout_problems(self) -> list[str]:
        if not self.path.is_file():
            return [f"{self.path} does not exist"]
        problems: list[str] = []
        if self.path.stat().st_size != self.size:
            problems.append(f"{self.path.name} is {self.path.stat().st_size} bytes, the layout wants {self.size}")
        table = read_gpt(self.path)
        self.runner.run(["sgdisk", "--verify", self.path], query=True)
        problems += table_problems(table.entries, self.extents())
        for ext in self.extents():
            problems += fs_problems(self.runner, ext, self.fs_info(ext), self._fs_spec(ext))
        return problems

    def _fs_spec(self, ext: Extent) -> str:
        return f"{self.path}@@{ext.start}" if ext.partition.fs is FsType.VFAT else f"{self.path}?offset={ext.start}"

    # -- content ---------------------------------------------------------------------------------
    def spec(self, role: Role) -> str:
        return self._fs_spec(self.extent(role))

    def put_ext4_tree(self, ext: Extent, files: Files) -> None:
        staging = self.work / ext.partition.role.value
        uuid = self.fs_info(ext).get("UUID") if not self.plan else None
        if not self.plan:
            _merge_tree(files.tree, staging)
        self.runner.note(f"{files.what}: partition {ext.number} ({ext.partition.label}) made again from everything "
                         f"staged for it ({staging}), keeping its UUID")
        self.runner.run(mke2fs_argv(ext, str(self.path), offset=ext.start, tree=staging, uuid=uuid))

    # -- the result ----------------------------------------------------------------------------------
    def info(self) -> ImageInfo:
        """The image as built (read back): table, filesystems, content digest."""
        if self.plan:
            parts = tuple(PartitionInfo(e.number, e.partition.role, e.partition.name, e.partition.type_code, e.start,
                                        e.size, "", e.partition.fs, e.partition.label, "",
                                        e.partition.block_size if e.partition.fs is FsType.EXT4 else None)
                          for e in self.extents())
            return ImageInfo(self.path, self.size, "", "", parts, planned=True)
        table = read_gpt(self.path)
        by_num = {e.number: e for e in table.entries}
        found: list[PartitionInfo] = []
        for ext in self.extents():
            fs = self.fs_info(ext)
            ent = by_num[ext.number]
            found.append(PartitionInfo(ext.number, ext.partition.role, ent.name, ext.partition.type_code, ent.start,
                                       ent.size, ent.part_guid, ext.partition.fs, fs.get("LABEL", ""),
                                       fs.get("UUID", ""),
                                       int(fs["BLOCK_SIZE"]) if "BLOCK_SIZE" in fs and
                                       ext.partition.fs is FsType.EXT4 else None))
        return ImageInfo(self.path, self.size, table.disk_guid, content_sha256(self.path), tuple(found))


def fs_problems(runner: Runner, ext: Extent, info: dict[str, str], spec: str) -> list[str]:
    """What is wrong with the filesystem on ``ext``: type, label, FAT32, ext4 block size, and its size
    against the partition's (a filesystem bigger than its partition would be cut off)."""
    p = ext.partition
    where = f"partition {ext.number} ({p.name})"
    if "TYPE" not in info:
        return [f"{where}: no filesystem found"]
    problems = []
    if info["TYPE"] != p.fs.value:
        problems.append(f"{where}: filesystem {info['TYPE']}, the layout wants {p.fs.value}")
        return problems
    if info.get("LABEL") != p.label:
        problems.append(f"{where}: label {info.get('LABEL')!r}, the layout wants {p.label!r}")
    size = 0
    if p.fs is FsType.VFAT:
        if info.get("VERSION") != "FAT32":
            problems.append(f"{where}: {info.get('VERSION')}, the ESP must be FAT32")
        res = runner.run(["minfo", "-i", spec], env=MTOOLS_ENV, query=True, check=False)
        sectors = next((int(ln.split(":")[1].split()[0]) for ln in res.stdout.splitlines()
                        if ln.strip().startswith("big size:")), 0)
        size = sectors * SECTOR
    else:
        try:
            dump = runner.run(["dumpe2fs", "-h", spec], query=True).stdout
        except CommandFailed as exc:
            return [*problems, f"{where}: dumpe2fs cannot read the superblock ({exc.problem.splitlines()[0]})"]
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in dump.splitlines())}
        bs = fields.get("Block size", "")
        if bs != str(p.block_size):
            problems.append(f"{where}: ext4 block size {bs or '?'}, rEFInd's ext4 driver needs {p.block_size}")
        try:
            size = int(fields.get("Block count", "0")) * int(bs or "0")
        except ValueError:
            size = 0
    if size > ext.size:
        problems.append(f"{where}: the filesystem is {size} bytes, larger than its {ext.size}-byte partition")
    elif size < ext.size - FS_SLACK:
        problems.append(f"{where}: the filesystem is {size} bytes, the partition {ext.size} (not made for it)")
    return problems


def _merge_tree(src: Path, dest: Path) -> None:
    """Copy ``src`` into ``dest`` (hard links where the filesystem allows), keeping modes and links;
    what ``dest`` already holds stays unless ``src`` has the same path."""
    dest.mkdir(parents=True, exist_ok=True)
    os.chmod(dest, 0o755)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in dirnames:
            s, d = Path(dirpath) / name, dest / rel / name
            if s.is_symlink():
                _replace(d)
                os.symlink(os.readlink(s), d)
            else:
                if d.is_symlink() or (d.exists() and not d.is_dir()):
                    _replace(d)
                d.mkdir(exist_ok=True)
                shutil.copystat(s, d)
        for name in filenames:
            s, d = Path(dirpath) / name, dest / rel / name
            _replace(d)
            if s.is_symlink():
                os.symlink(os.readlink(s), d)
                continue
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)


def _replace(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def content_sha256(image: Path) -> str:
    """sha256 of the non-zero 1 MiB chunks (with their offsets) and the size; reads data only."""
    h = hashlib.sha256()
    size = image.stat().st_size
    h.update(size.to_bytes(8, "little"))
    zero = bytes(DIGEST_CHUNK)
    with open(image, "rb") as fh:
        fd = fh.fileno()
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # no more data
                break
            hole_at = os.lseek(fd, data_at, os.SEEK_HOLE)
            chunk_at = data_at // DIGEST_CHUNK * DIGEST_CHUNK
            while chunk_at < hole_at:
                fh.seek(chunk_at)
                chunk = fh.read(DIGEST_CHUNK)
                if chunk and chunk != zero[: len(chunk)]:
                    h.update(chunk_at.to_bytes(8, "little"))
                    h.update(chunk)
                chunk_at += DIGEST_CHUNK
            pos = max(hole_at, chunk_at)
    return h.hexdigest()


def verify_image(runner: Runner, layout: Layout, image: Path, *, esp_files: Iterable[str] = (),
                 disk_size: int | None = None) -> ImageInfo:
    """Read ``image`` back and compare it with ``layout`` (and that ``esp_files`` are on its ESP);
    raise :class:`VerifyFailed` naming every difference. Reads only: works on any image."""
    image = Path(image)
    if not image.is_file():
        raise VerifyFailed(f"image {image} does not exist", "build it first")
    target = ImageTarget(runner, layout, image, size=disk_size if disk_size is not None else image.stat().st_size)
    with runner.step(f"verify image {image.name}"):
        problems = target.layout_problems()
        if disk_size is None and image.stat().st_size != layout.disk_size:
            problems.insert(0, f"{image.name} is {image.stat().st_size} bytes, the layout wants {layout.disk_size}")
        wanted = [str(f).replace("\\", "/").strip("/").upper() for f in esp_files]
        if wanted and not problems:
            res = runner.run(["mdir", "-i", target.spec(Role.ESP), "-/", "-b", "::/"], env=MTOOLS_ENV, query=True)
            have = {ln.strip().removeprefix("::/").upper() for ln in res.stdout.splitlines()}
            problems += [f"ESP file {f} is missing" for f in wanted if f not in have]
        if problems:
            raise VerifyFailed(f"image {image.name} does not match layout {layout.name!r}:\n    "
                               + "\n    ".join(problems), "rebuild the image (labkit never patches it)")
        return target.info()
