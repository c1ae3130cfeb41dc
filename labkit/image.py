"""Mount-free disk image builder (lab target).

Each partition is built as its own file (FAT32 with ``mkfs.vfat`` + mtools, ext4 with
``mke2fs -d``), the GPT is written with ``sgdisk`` on a sparse file, and the partitions are
copied in at their offsets with ``dd conv=sparse,notrunc``. The image is assembled under a
temporary name and renamed at the end, then read back and compared with the layout.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labkit.errors import CommandFailed, InputError, VerifyFailed
from labkit.gpt import TYPE_GUIDS, read_gpt
from labkit.layout import SECTOR, Extent, FsType, Layout, MiB, Role
from labkit.runner import Mode, Runner

MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
#: FAT32 needs >= 65525 clusters: below this size use one sector per cluster.
SMALL_ESP = 256 * MiB
#: Chunk of the content digest; all-zero chunks (holes or written zeros) are skipped.
DIGEST_CHUNK = 1 * MiB


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


EspFiles = Mapping[str, "bytes | Path"]


def build_image(
    runner: Runner,
    layout: Layout,
    out: Path,
    trees: Mapping[Role, Path | None],
    esp_files: EspFiles,
    *,
    disk_size: int | None = None,
) -> ImageInfo:
    """Build ``layout`` as a sparse raw image at ``out`` and verify it.

    ``trees`` gives the content of each ext4 partition (a directory copied with ``mke2fs -d``,
    or ``None`` for an empty filesystem); ``esp_files`` maps ESP paths (``EFI/BOOT/BOOTX64.EFI``)
    to their bytes or a host file. Plan mode records every command and executes none.
    """
    start = time.monotonic()
    size = layout.disk_size if disk_size is None else disk_size
    extents = layout.extents(size)
    for role in trees:
        if layout.partition(role).fs is not FsType.EXT4:
            raise InputError(f"a tree was given for {role.value}, which is not ext4",
                             "put ESP content in esp_files")
    for path in esp_files:
        _esp_path(path)  # validate early
    plan = runner.mode is Mode.PLAN
    out = Path(out)
    with runner.step(f"build image {out.name} ({layout.name})"):
        if plan:
            work = out.parent / f".{out.name}.build"
        else:
            out.parent.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
        tmp_image = work / "disk.img"
        try:
            part_files: dict[int, Path] = {}
            for ext in extents:
                pfile = work / f"p{ext.number}-{ext.partition.role.value}.img"
                part_files[ext.number] = pfile
                if ext.partition.fs is FsType.VFAT:
                    _make_esp(runner, ext, pfile, work, esp_files)
                else:
                    _make_ext4(runner, ext, pfile, trees.get(ext.partition.role))
            with runner.step("partition table"):
                runner.run(["truncate", "-s", str(size), tmp_image])
                runner.run(["sgdisk", *sgdisk_args(extents), tmp_image])
            with runner.step("copy partitions in"):
                for ext in extents:
                    runner.note(f"copy {part_files[ext.number].name} -> {tmp_image.name} at {ext.start} "
                                "(sparse: data extents only)")
                    if not plan:
                        sparse_copy(part_files[ext.number], tmp_image, ext.start)
            if not plan:
                os.replace(tmp_image, out)
        finally:
            if not plan:
                shutil.rmtree(work, ignore_errors=True)
        if plan:
            return _planned_info(layout, out, size)
        info = verify_image(runner, layout, out, esp_files=list(esp_files), disk_size=size)
    return ImageInfo(info.path, info.size, info.disk_guid, info.content_sha256, info.partitions,
                     build_s=time.monotonic() - start)


def sparse_copy(src: Path, dst: Path, offset: int) -> int:
    """Copy the data extents of ``src`` into ``dst`` at ``offset`` (holes stay holes); return bytes copied."""
    copied = 0
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        size = os.fstat(fin.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                data_at = os.lseek(fin.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            hole_at = os.lseek(fin.fileno(), data_at, os.SEEK_HOLE)
            n = hole_at - data_at
            while n > 0:
                try:
                    done = os.copy_file_range(fin.fileno(), fout.fileno(), n, data_at, offset + data_at)
                except OSError:
                    fin.seek(data_at)
                    fout.seek(offset + data_at)
                    done = fout.write(fin.read(min(n, 16 * MiB)))
                if done <= 0:
                    raise OSError(f"short copy from {src} at {data_at}")
                data_at += done
                n -= done
                copied += done
            pos = hole_at
    return copied


def sgdisk_args(extents: Iterable[Extent]) -> list[str]:
    """``sgdisk`` options creating a fresh GPT with these partitions (exact sector extents)."""
    args = ["--clear", "--set-alignment=2048"]
    for e in extents:
        n = e.number
        args += [f"--new={n}:{e.start_sector}:{e.end_sector}", f"--typecode={n}:{e.partition.type_code}",
                 f"--change-name={n}:{e.partition.name}"]
    return args


def _esp_path(path: str) -> PurePosixPath:
    p = PurePosixPath(path.replace("\\", "/").lstrip("/"))
    if not p.parts or ".." in p.parts:
        raise InputError(f"bad ESP path {path!r}", "use a relative path like EFI/BOOT/BOOTX64.EFI")
    return p


def _make_esp(runner: Runner, ext: Extent, pfile: Path, work: Path, files: EspFiles) -> None:
    p = ext.partition
    with runner.step(f"ESP {p.label} ({ext.size // MiB} MiB, FAT32)"):
        runner.run(["truncate", "-s", str(ext.size), pfile])
        small = ["-s", "1"] if ext.size < SMALL_ESP else []
        runner.run(["mkfs.vfat", "-F", "32", *small, "-n", p.label, pfile])
        dirs: list[str] = []
        for name in files:
            for parent in reversed(_esp_path(name).parents[:-1]):
                d = f"::/{parent}"
                if d not in dirs:
                    dirs.append(d)
        if dirs:
            runner.run(["mmd", "-i", pfile, *dirs], env=MTOOLS_ENV)
        for i, (name, content) in enumerate(files.items()):
            src = content if isinstance(content, Path) else work / f"esp-file-{i}"
            if isinstance(content, bytes) and runner.mode is Mode.APPLY:
                src.write_bytes(content)
            runner.run(["mcopy", "-o", "-i", pfile, src, f"::/{_esp_path(name)}"], env=MTOOLS_ENV)


def _make_ext4(runner: Runner, ext: Extent, pfile: Path, tree: Path | None) -> None:
    p = ext.partition
    with runner.step(f"ext4 {p.label} ({ext.size // MiB} MiB)"):
        if tree is not None and not Path(tree).is_dir():
            raise InputError(f"content tree for {p.role.value} is not a directory: {tree}",
                             "build the tree first or pass None for an empty filesystem")
        data = ["-d", str(tree)] if tree is not None else []
        runner.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(p.block_size), "-L", p.label,
                    "-E", "lazy_itable_init=1,lazy_journal_init=1", *data, pfile,
                    f"{ext.size // 1024}k"])


def _planned_info(layout: Layout, out: Path, size: int) -> ImageInfo:
    parts = tuple(
        PartitionInfo(e.number, e.partition.role, e.partition.name, e.partition.type_code, e.start, e.size,
                      "", e.partition.fs, e.partition.label, "",
                      e.partition.block_size if e.partition.fs is FsType.EXT4 else None)
        for e in layout.extents(size)
    )
    return ImageInfo(out, size, "", "", parts, planned=True)


# -- verification --------------------------------------------------------------------------
def verify_image(
    runner: Runner,
    layout: Layout,
    image: Path,
    *,
    esp_files: Iterable[str] = (),
    disk_size: int | None = None,
) -> ImageInfo:
    """Read ``image`` back and compare it with ``layout``; raise :class:`VerifyFailed` on mismatch."""
    image = Path(image)
    with runner.step(f"verify image {image.name}"):
        if not image.is_file():
            raise VerifyFailed(f"image {image} does not exist", "build it first")
        size = image.stat().st_size
        expect_size = layout.disk_size if disk_size is None else disk_size
        if size != expect_size:
            raise VerifyFailed(f"image {image} is {size} bytes, the layout wants {expect_size}",
                               "rebuild the image")
        table = read_gpt(image)
        runner.run(["sgdisk", "--verify", image], query=True)
        extents = layout.extents(size)
        by_num = {e.number: e for e in table.entries}
        problems: list[str] = []
        if set(by_num) != {e.number for e in extents}:
            problems.append(f"partition numbers on disk {sorted(by_num)}, layout wants "
                            f"{[e.number for e in extents]}")
        infos: list[PartitionInfo] = []
        for ext in extents:
            ent = by_num.get(ext.number)
            if ent is None:
                continue
            p = ext.partition
            want_type = TYPE_GUIDS.get(p.type_code.lower())
            if ent.start != ext.start or ent.size != ext.size:
                problems.append(f"partition {ext.number} ({p.name}) spans {ent.start}+{ent.size}, "
                                f"layout wants {ext.start}+{ext.size}")
            if want_type is not None and ent.type_guid != want_type:
                problems.append(f"partition {ext.number} type {ent.type_guid}, layout wants {p.type_code} "
                                f"({want_type})")
            if ent.name != p.name:
                problems.append(f"partition {ext.number} is named {ent.name!r}, layout wants {p.name!r}")
            fs = _read_fs(runner, image, ext, problems)
            infos.append(PartitionInfo(ext.number, p.role, ent.name, p.type_code, ent.start, ent.size,
                                       ent.part_guid, p.fs, fs.get("LABEL", ""), fs.get("UUID", ""),
                                       int(fs["BLOCK_SIZE"]) if p.fs is FsType.EXT4 and "BLOCK_SIZE" in fs
                                       else None))
        if not problems:
            esp = layout.extent(Role.ESP, size)
            problems += _check_esp_files(runner, image, esp.start, esp_files)
        if problems:
            raise VerifyFailed(f"image {image.name} does not match layout {layout.name!r}:\n    "
                               + "\n    ".join(problems), "rebuild the image (labkit never patches it)")
        digest = content_sha256(image)
    return ImageInfo(image, size, table.disk_guid, digest, tuple(infos))


def _read_fs(runner: Runner, image: Path, ext: Extent, problems: list[str]) -> dict[str, str]:
    p = ext.partition
    res = runner.run(["blkid", "-p", "-O", str(ext.start), "-o", "export", image], query=True, check=False)
    fs = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    where = f"partition {ext.number} ({p.name}, offset {ext.start})"
    if res.rc != 0 or "TYPE" not in fs:
        problems.append(f"{where}: no filesystem found (blkid rc={res.rc})")
        return fs
    if fs["TYPE"] != p.fs.value:
        problems.append(f"{where}: filesystem {fs['TYPE']}, layout wants {p.fs.value}")
    if fs.get("LABEL") != p.label:
        problems.append(f"{where}: label {fs.get('LABEL')!r}, layout wants {p.label!r}")
    if p.fs is FsType.VFAT and fs.get("VERSION") != "FAT32":
        problems.append(f"{where}: {fs.get('VERSION')}, the ESP must be FAT32")
    if p.fs is FsType.EXT4:
        try:
            dump = runner.run(["dumpe2fs", "-h", f"{image}?offset={ext.start}"], query=True).stdout
        except CommandFailed as exc:
            problems.append(f"{where}: dumpe2fs cannot read the superblock ({exc.problem.splitlines()[0]})")
            return fs
        bs = next((ln.split(":", 1)[1].strip() for ln in dump.splitlines() if ln.startswith("Block size:")), "")
        if bs != str(p.block_size):
            problems.append(f"{where}: ext4 block size {bs or '?'}, rEFInd's ext4 driver needs {p.block_size}")
        fs["BLOCK_SIZE"] = bs or "0"
    return fs


def _check_esp_files(runner: Runner, image: Path, offset: int, files: Iterable[str]) -> list[str]:
    wanted = [str(_esp_path(f)).upper() for f in files]
    if not wanted:
        return []
    res = runner.run(["mdir", "-i", f"{image}@@{offset}", "-/", "-b", "::/"], env=MTOOLS_ENV, query=True)
    have = {ln.strip().removeprefix("::/").upper() for ln in res.stdout.splitlines()}
    return [f"ESP file {f} is missing" for f in wanted if f not in have]


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


__all__ = ["SECTOR", "ImageInfo", "PartitionInfo", "build_image", "content_sha256", "sgdisk_args",
           "sparse_copy", "verify_image"]
