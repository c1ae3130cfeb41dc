"""Real package payloads, repacked offline from Debian packages installed on the host.

Alpine side: ``apks/.boot_repository`` + ``apks/x86_64/<name>-<version>.apk`` (reproducible gzip
tarballs) + ``apks/x86_64/LABKIT-INDEX`` (``name version file compressed-bytes installed-bytes``,
tab separated). Nix side: ``store/<hash>-<name>-<version>/`` with the files unpacked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from labkit.core.data import GUEST_DIR
from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_bytes, atomic_write_text
from labkit.rehearsal.types import PackageInfo

BASE_PACKAGE = "busybox-static"
#: Fixed mtime for everything labkit packs (reproducible archives).
EPOCH = 1_700_000_000
INDEX_NAME = "LABKIT-INDEX"

@dataclass(frozen=True)
class PkgEntry:
    path: str  # relative, e.g. "usr/bin/sgdisk"
    kind: str  # "file" | "symlink"
    mode: int
    size: int
    source: Path | None = None  # host file (kind == "file")
    target: str | None = None  # link target (kind == "symlink")
    data: bytes | None = None  # the content, for files labkit writes itself (kind == "file", no source)


@dataclass(frozen=True)
class Payload:
    name: str
    version: str
    entries: tuple[PkgEntry, ...]

    @property
    def installed_size(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")

    @property
    def fs_version(self) -> str:
        """The version as used in file names (no epoch colon)."""
        return self.version.replace(":", "_")

    def content_hash(self) -> str:
        """Nix-style 32-char base32 hash of the payload's content."""
        h = hashlib.sha256(f"{self.name}\0{self.version}\0".encode())
        for e in self.entries:
            h.update(f"{e.path}\0{e.kind}\0{e.mode:o}\0{e.target or ''}\0".encode())
            if e.source is not None:
                h.update(file_sha256(e.source))
            elif e.data is not None:
                h.update(hashlib.sha256(e.data).digest())
        return nix_base32(h.digest()[:20])


def file_sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def nix_base32(data: bytes) -> str:
    """Nix's base32 (alphabet without e, o, u, t; least significant digit last)."""
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    n = len(data) * 8 // 5 + (1 if len(data) * 8 % 5 else 0)
    out = []
    for i in range(n - 1, -1, -1):
        b = i * 5
        j, k = divmod(b, 8)
        c = data[j] >> k
        if j + 1 < len(data):
            c |= data[j + 1] << (8 - k)
        out.append(alphabet[c & 0x1F])
    return "".join(out)


def host_package(runner: Runner, name: str) -> Payload:
    """The files of an installed Debian package (regular files and symlinks that exist)."""
    q = runner.run(["dpkg-query", "-W", "-f=${Version} ${db:Status-Status}", name], query=True, check=False)
    fields = q.stdout.split()
    if q.rc != 0 or len(fields) < 2 or fields[1] != "installed":
        raise LabkitError(
            f"Debian package {name!r} is not installed on this host, so it cannot be repacked as a payload",
            f"install it (apt-get install -y {name}) or drop it from the package set",
        )
    listing = runner.run(["dpkg", "-L", name], query=True)
    paths = [ln for ln in listing.stdout.splitlines() if ln.startswith("/") and ln != "/."]
    # Directories of the package (on a merged-/usr host /bin, /sbin, /lib are symlinks): skip them.
    parents = {str(PurePosixPath(p).parent) for p in paths}
    entries: dict[str, PkgEntry] = {}
    for line in paths:
        if line in parents:
            continue
        try:
            st = os.lstat(line)
        except FileNotFoundError:
            continue  # excluded by dpkg path-exclude (docs/man in minimal images)
        rel = line.lstrip("/")
        if stat.S_ISLNK(st.st_mode):
            entries[rel] = PkgEntry(rel, "symlink", 0o777, 0, target=os.readlink(line))
        elif stat.S_ISREG(st.st_mode):
            entries[rel] = PkgEntry(rel, "file", stat.S_IMODE(st.st_mode), st.st_size, source=Path(line))
    return Payload(name, fields[0], tuple(entries[k] for k in sorted(entries)))


def busybox_payload(runner: Runner, store_layout: bool = False) -> Payload:
    """busybox-static plus its applet links (absolute /bin/busybox, or flat relative bin/ links for the store)."""
    pkg = host_package(runner, BASE_PACKAGE)
    bb = next((e for e in pkg.entries if e.path.endswith("bin/busybox") and e.kind == "file"), None)
    if bb is None:
        raise LabkitError("busybox-static ships no bin/busybox here", "reinstall busybox-static")
    applets = runner.run([str(bb.source), "--list-full"], query=True).stdout.split()
    have = {e.path for e in pkg.entries}
    links: dict[str, PkgEntry] = {}
    for a in applets:
        rel = f"bin/{PurePosixPath(a).name}" if store_layout else a.strip("/")
        if rel in have or rel == bb.path:
            continue
        target = "busybox" if store_layout else f"/{bb.path}"
        links[rel] = PkgEntry(rel, "symlink", 0o777, 0, target=target)
    entries = sorted([*pkg.entries, *links.values()], key=lambda e: e.path)
    return Payload(pkg.name, pkg.version, tuple(entries))


def shared_libraries(runner: Runner, files: Iterable[Path]) -> tuple[PkgEntry, ...]:
    """The shared libraries (and the ELF interpreter) the host's dynamically linked ``files`` load, as
    found by ``ldd``, at the paths the loader looks them up (``lib/x86_64-linux-gnu/...``,
    ``lib64/ld-linux-x86-64.so.2``): each symlink hop kept as a symlink, the last one a file."""
    wanted: set[str] = set()
    for f in files:
        with open(f, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        res = runner.run(["ldd", str(f)], query=True, check=False)
        for line in res.stdout.splitlines():
            parts = line.split()
            path = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0] if parts else ""
            if path.startswith("/"):
                wanted.add(path)
    out: dict[str, PkgEntry] = {}
    for path in sorted(wanted):
        cur = path
        for _hop in range(8):
            rel = cur.lstrip("/")
            if rel in out:
                break
            if os.path.islink(cur):
                target = os.readlink(cur)
                out[rel] = PkgEntry(rel, "symlink", 0o777, 0, target=target)
                cur = target if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(cur), target))
                continue
            st = os.stat(cur)
            out[rel] = PkgEntry(rel, "file", stat.S_IMODE(st.st_mode), st.st_size, source=Path(cur))
            break
    return tuple(out[k] for k in sorted(out))


#: The rehearsal's init, shipped in its base package as Alpine ships its init in alpine-base/openrc/
#: busybox (the apkovl then only carries configuration: etc/local.d/*.start, the runlevel links).
GUEST_DATA = GUEST_DIR
REHEARSAL_MARKER = "etc/labkit-rehearsal"
#: Alpine's inittab (alpinelinux/aports main/alpine-baselayout/inittab): busybox init runs OpenRC.
ALPINE_BASE_FILES = (("etc/inittab", "alpine-inittab", 0o644),)
#: Debian's librc reads /etc/insserv.conf (its LSB compatibility patch), which belongs to Debian's insserv
#: package: an empty one (and an empty insserv.conf.d) keeps it from printing an error for every service.
INSSERV_CONF = b"# labkit rehearsal: read by Debian's librc (LSB facilities); empty: no LSB scripts here\n"
OPENRC_PACKAGES = ("openrc", "librc1", "libeinfo1")
#: Debian's openrc files the rehearsal leaves out: its sysv-rc glue (init.d/rc, rcS run the Debian
#: runlevels), the agetty service, the runlevel links Debian ships (Alpine's openrc ships none: aports
#: main/openrc/APKBUILD ``rm -f "$pkgdir"/etc/runlevels/*/*``), documentation and shell completions.
_OPENRC_SKIP = ("etc/init.d/rc", "etc/init.d/rcS", "etc/init.d/agetty", "etc/runlevels/", "usr/share/")
#: The services of Alpine's runlevels, as OpenRC init scripts (labkit/data/guest/openrc/): the upstream
#: OpenRC 0.45.2 scripts where they run with busybox, labkit stand-ins for Alpine's own (see each file).
OPENRC_SCRIPTS_DIR = "openrc/init.d"
#: Directories alpine-baselayout ships (its Makefile installs them), that the services expect.
_BASE_DIRS = (("dev", 0o755), ("media", 0o755), ("proc", 0o555), ("root", 0o700), ("run", 0o755),
              ("sys", 0o555), ("tmp", 0o1777), ("var/lib/misc", 0o755), ("var/log", 0o755), ("var/run", 0o755),
              ("var/tmp", 0o1777), ("etc/crontabs", 0o755), ("etc/local.d", 0o755), ("etc/conf.d", 0o755),
              ("etc/insserv.conf.d", 0o755),
              *((f"etc/network/if-{s}.d", 0o755) for s in ("pre-up", "up", "down", "post-down")))


def openrc_payload(runner: Runner) -> tuple[PkgEntry, ...]:
    """Debian's OpenRC (openrc, librc1, libeinfo1 as installed on this host: ``/sbin/openrc``,
    ``openrc-run``, ``rc-status``, ``/lib/rc``...) with the glibc libraries its programs load."""
    entries: dict[str, PkgEntry] = {}
    for name in OPENRC_PACKAGES:
        for e in host_package(runner, name).entries:
            if not e.path.startswith(_OPENRC_SKIP):
                entries[e.path] = e
    for e in shared_libraries(runner, [e.source for e in entries.values() if e.source is not None]):
        entries.setdefault(e.path, e)
    return tuple(entries[k] for k in sorted(entries))


def alpine_base_payload(runner: Runner, with_busybox: bool = True) -> Payload:
    """The Alpine-style rehearsal's base package, standing in for what ``alpine-base`` pulls in on
    Alpine (busybox, openrc, alpine-baselayout): busybox + applet links, Debian's OpenRC with its
    libraries, the services of Alpine's runlevels as OpenRC scripts, Alpine's ``etc/inittab`` (busybox init
    runs ``openrc sysinit``/``boot``/``default``), the base directories, and ``etc/labkit-rehearsal``, the
    marker from which the probe reports ``alpine-rehearsal`` whatever the apkovl says (real media:
    ``alpine``). The initramfs installs it first, whatever the world; a world naming ``alpine-base`` gets it.
    Which services run comes from the apkovl's ``etc/runlevels`` links (or the initramfs's defaults), as on
    Alpine. ``with_busybox=False``: without Debian's busybox (the real-apk repository takes Alpine's from the
    minirootfs)."""
    bb = busybox_payload(runner) if with_busybox else Payload("labkit-rehearsal-base", "0", ())
    extra = [PkgEntry(path, "file", mode, (GUEST_DATA / src).stat().st_size, source=GUEST_DATA / src)
             for path, src, mode in ALPINE_BASE_FILES]
    for script in sorted((GUEST_DATA / OPENRC_SCRIPTS_DIR).iterdir()):
        extra.append(PkgEntry(f"etc/init.d/{script.name}", "file", 0o755, script.stat().st_size, source=script))
    marker = b"alpine-rehearsal\n"
    extra.append(PkgEntry(REHEARSAL_MARKER, "file", 0o644, len(marker), data=marker))
    extra.append(PkgEntry("etc/insserv.conf", "file", 0o644, len(INSSERV_CONF), data=INSSERV_CONF))
    extra += [PkgEntry(d, "dir", mode, 0) for d, mode in _BASE_DIRS]
    have = {e.path for e in extra}
    extra += [e for e in openrc_payload(runner) if e.path not in have]
    have = {e.path for e in extra}
    entries = sorted([*(e for e in bb.entries if e.path not in have), *extra], key=lambda e: e.path)
    return Payload(bb.name, bb.version, tuple(entries))


def collect(runner: Runner, names: Iterable[str]) -> list[Payload]:
    return [host_package(runner, n) for n in dict.fromkeys(names)]


# -- Alpine side ---------------------------------------------------------------------------------
def _tarinfo(name: str, kind: str, mode: int, size: int = 0, target: str | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}[kind]
    ti.mode = mode
    ti.size = size
    ti.mtime = EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    if target is not None:
        ti.linkname = target
    return ti


def reproducible_targz(members: Sequence[tuple[str, str, int, bytes | Path | str | None]], level: int = 6) -> bytes:
    """A gzip tarball (no gzip timestamp, root-owned, fixed mtimes, parents first, sorted).

    ``members``: ``(path, kind, mode, data)`` with kind file (data = bytes or host Path), symlink
    (data = target) or dir.
    """
    dirs: set[str] = set()
    for path, kind, _mode, _data in members:
        parts = PurePosixPath(path).parts
        for i in range(1, len(parts) + (kind == "dir")):
            dirs.add("/".join(parts[:i]))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=level, mtime=0, filename="") as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            explicit = {p: m for p, k, m, _ in members if k == "dir"}
            items: list[tuple[str, str, int, bytes | Path | str | None]] = [
                (d, "dir", explicit.get(d, 0o755), None) for d in dirs
            ]
            items += [m for m in members if m[1] != "dir"]
            for path, kind, mode, data in sorted(items, key=lambda m: (m[0].split("/"), m[1] != "dir")):
                if kind == "dir":
                    tar.addfile(_tarinfo(path + "/", "dir", mode))
                elif kind == "symlink":
                    tar.addfile(_tarinfo(path, "symlink", 0o777, target=str(data)))
                else:
                    if isinstance(data, Path):
                        with open(data, "rb") as fh:
                            tar.addfile(_tarinfo(path, "file", mode, data.stat().st_size), fh)
                    else:
                        raw = data if isinstance(data, bytes) else str(data or "").encode()
                        tar.addfile(_tarinfo(path, "file", mode, len(raw)), io.BytesIO(raw))
    return buf.getvalue()


#: Bumped whenever write_apk's output for the same payload changes (it keys the .apk cache).
APK_FORMAT = "targz6-v1"


def write_apk(payload: Payload, out_dir: Path, cache: Path | None = None) -> PackageInfo:
    """``out_dir/<name>-<version>.apk``. The archive is reproducible, so with ``cache`` (a directory) it is
    compressed once per content and copied from ``cache/<content hash>-<file name>`` afterwards: the
    load-cost sets share most packages, and chromium alone takes ~15 s to compress."""
    name = f"{payload.name}-{payload.fs_version}.apk"
    cached = cache / f"{nix_base32(hashlib.sha256(f'{APK_FORMAT}{payload.content_hash()}'.encode()).digest()[:20])}" \
        f"-{name}" if cache is not None else None
    if cached is not None and cached.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".{name}.tmp-{os.getpid()}"
        shutil.copyfile(cached, tmp)
        os.replace(tmp, out_dir / name)
        size = (out_dir / name).stat().st_size
    else:
        members = [
            (e.path, e.kind, e.mode, (e.data if e.data is not None else e.source) if e.kind == "file" else e.target)
            for e in payload.entries
        ]
        data = reproducible_targz(members)
        atomic_write_bytes(out_dir / name, data)
        if cached is not None:
            atomic_write_bytes(cached, data)
        size = len(data)
    return PackageInfo(payload.name, payload.version, payload.installed_size, size, f"apks/x86_64/{name}")


def write_alpine_repo(payloads: Sequence[Payload], tree: Path, cache: Path | None = None) -> list[PackageInfo]:
    """``tree/apks`` with ``.boot_repository``, the .apk files and LABKIT-INDEX (``cache``: see write_apk)."""
    repo = tree / "apks"
    arch = repo / "x86_64"
    arch.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(repo / ".boot_repository", b"")
    infos = [write_apk(p, arch, cache) for p in payloads]
    lines = ["# name\tversion\tfile\tcompressed-bytes\tinstalled-bytes\n"]
    lines += [
        f"{i.name}\t{i.version}\t{PurePosixPath(i.file).name}\t{i.compressed_size}\t{i.installed_size}\n"
        for i in infos
    ]
    atomic_write_text(arch / INDEX_NAME, "".join(lines))
    return infos


# -- Nix side ------------------------------------------------------------------------------------
def store_name(payload: Payload) -> str:
    """``<hash>-<name>-<version>``, with the characters a Nix store name cannot hold (``~``, ``:``) as ``_``
    (Nix allows ``[A-Za-z0-9+._?=-]``)."""
    return re.sub(r"[^A-Za-z0-9+._?=-]", "_", f"{payload.content_hash()}-{payload.name}-{payload.fs_version}")


def nix_layout(payload: Payload, name: str | None = None) -> Payload:
    """A Debian package's files laid out as a Nix store path: ``usr/`` folded into the top (``/usr/bin/x``
    and ``/bin/x`` → ``bin/x``, ``/lib/systemd`` → ``lib/systemd``), as nixpkgs builds install to ``$out``.
    Symlinks keep their targets (absolute ones resolve through the guest's FHS view)."""
    out: dict[str, PkgEntry] = {}
    for e in payload.entries:
        rel = e.path[4:] if e.path.startswith("usr/") else e.path
        out.setdefault(rel, PkgEntry(rel, e.kind, e.mode, e.size, e.source, e.target, e.data))
    return Payload(name or payload.name, payload.version, tuple(out[k] for k in sorted(out)))


def write_store_path(payload: Payload, store: Path) -> PackageInfo:
    """Unpack ``payload`` into ``store/<hash>-<name>-<version>/`` (skipped when already there)."""
    name = store_name(payload)
    final = store / name
    if not final.is_dir():
        tmp = store / f".{name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        for e in payload.entries:
            dest = tmp / e.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if e.kind == "symlink":
                os.symlink(e.target or "", dest)
            elif e.data is not None:
                dest.write_bytes(e.data)
                os.chmod(dest, e.mode)
            else:
                assert e.source is not None
                shutil.copyfile(e.source, dest)
                os.chmod(dest, e.mode)
        tmp.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    return PackageInfo(payload.name, payload.version, payload.installed_size, 0, f"store/{name}")


def fix_mtimes(root: Path, mtime: int = EPOCH) -> None:
    """Set every mtime under ``root`` (symlinks themselves included) to ``mtime``, bottom-up."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for n in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, n), (mtime, mtime), follow_symlinks=False)
    os.utime(root, (mtime, mtime))
