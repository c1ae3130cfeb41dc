"""Real, signed apk-tools v2 packages and a signed ``APKINDEX.tar.gz``, and the real ``apk`` to read them.

Formats (citations: apk-tools ``v2.14.4`` "apk214", abuild ``3.13.0`` "abuild313"):

* A ``.apk`` is three gzip members read as one tar stream (apk214 ``src/io_archive.c:132-278``; abuild313
  ``abuild.in:1850-1870``): the signature tar (``.SIGN.RSA.<keyfile>``), the control tar (``.PKGINFO`` and the
  scripts), both cut before their end-of-archive blocks (``abuild-tar --cut``, abuild313 ``abuild-tar.c:307-308``),
  then the data tar, which keeps them.
* The signature is RSA PKCS#1 v1.5 over the SHA-1 of the raw control member: ``openssl dgst -sha1 -sign``
  (abuild313 ``abuild-sign.in:20-51``), checked by apk with ``EVP_VerifyFinal`` at the end of the control member
  (apk214 ``src/package.c:738-747``). apk opens the key as ``<root>/etc/apk/keys/<keyfile>``, ``<keyfile>``
  taken literally from the member name (apk214 ``src/package.c:597``, ``src/database.c:1653-1655``).
* ``.PKGINFO`` carries ``datahash`` = sha256 of the raw data member (apk214 ``src/package.c:626-632``,
  ``:709-717``); every file and symlink of the data tar carries a pax ``APK-TOOLS.checksum.SHA1`` record
  (apk214 ``src/io_archive.c:89-130``, ``src/database.c:2656-2665``; symlinks: sha1 of the target, abuild313
  ``abuild-tar.c:320-333``) and every parent directory comes before its content (``src/database.c:2538-2546``).
* ``size`` (installed size) must not be 0 when the package has files: apk 2.14 never opens such a package
  (apk214 ``src/database.c:2967-2977``; abuild forces 1, abuild313 ``abuild.in:1139-1148``).
* The index is written by the real ``apk index`` (apk214 ``src/app_index.c:164-302``; it verifies each package
  with the keys dir, ``:236-248``) and signed as abuild signs it (abuild313 ``abuild.in:1934-1939``): a
  signature member over the SHA-1 of the whole unsigned index file, prepended.

The ``apk`` that runs here is the Alpine minirootfs's own, through its musl loader (no chroot):
``ROOT/lib/ld-musl-x86_64.so.1 --library-path ROOT/lib:ROOT/usr/lib ROOT/sbin/apk``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from labkit.core.download import ChecksumMismatch, download, verify_file_sha512
from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_bytes, require_tool
from labkit.rehearsal.payloads import EPOCH, PkgEntry, nix_base32

ARCH = "x86_64"
#: The script types apk runs (apk214 ``src/package.c:446-454``), as control members ``.<type>``.
SCRIPT_TYPES = ("pre-install", "post-install", "pre-deinstall", "post-deinstall", "pre-upgrade", "post-upgrade",
                "trigger")
#: The lab key's file name: apk looks it up literally (``.SIGN.RSA.<name>``) in ``etc/apk/keys``; the
#: ``.rsa.pub`` suffix is abuild's convention (abuild313 ``abuild-sign.in:20-22``).
KEY_NAME = "labkit-rehearsal-lab.rsa.pub"
#: Bumped whenever the data member written for the same entries changes (it keys the data cache).
DATA_FORMAT = "apk2-data-v1"


@dataclass(frozen=True)
class ApkTool:
    """The minirootfs's ``apk`` (apk-tools 2.14.4 in Alpine 3.20.3), run through its own musl loader."""

    root: Path  # the unpacked minirootfs

    def argv(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        r = self.root
        return [r / "lib" / "ld-musl-x86_64.so.1", "--library-path", f"{r / 'lib'}:{r / 'usr' / 'lib'}",
                r / "sbin" / "apk", *args]

    def check(self) -> None:
        for rel in ("lib/ld-musl-x86_64.so.1", "sbin/apk", "lib/apk/db/installed"):
            if not (self.root / rel).exists():
                raise LabkitError(f"{self.root} is not an unpacked Alpine minirootfs: {rel} is missing",
                                  "give the official alpine-minirootfs-*-x86_64.tar.gz (--alpine-rootfs)")


@dataclass(frozen=True)
class LabKey:
    """The lab's RSA key pair: ``private`` signs, ``public`` goes to the guest's ``etc/apk/keys/<name>``."""

    private: Path
    public: Path

    @property
    def name(self) -> str:
        return self.public.name


def lab_key(runner: Runner, directory: Path) -> LabKey:
    """The lab key in ``directory`` (a build dir or the apk cache), generated once as abuild-keygen does
    (``openssl genrsa``, then ``openssl rsa -pubout``: a PEM SubjectPublicKeyInfo, read by apk with
    ``PEM_read_bio_PUBKEY``, apk214 ``src/package.c:601``)."""
    require_tool("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    priv = directory / KEY_NAME.removesuffix(".pub")
    pub = directory / KEY_NAME
    if not (priv.is_file() and pub.is_file()):
        tmp = directory / f".{priv.name}.tmp-{os.getpid()}"
        runner.run(["openssl", "genrsa", "-out", tmp, "2048"])
        os.chmod(tmp, 0o600)
        runner.run(["openssl", "rsa", "-in", tmp, "-pubout", "-out", f"{pub}.tmp"])
        os.replace(f"{pub}.tmp", pub)
        os.replace(tmp, priv)
    return LabKey(priv, pub)


@dataclass(frozen=True)
class ApkSpec:
    """One package: its ``.PKGINFO`` fields (apk214 ``src/package.c:860-879``), scripts and files."""

    name: str
    version: str
    entries: tuple[PkgEntry, ...]
    description: str = ""
    url: str = ""
    license: str = ""
    origin: str = ""
    maintainer: str = ""
    commit: str = ""
    builddate: int = EPOCH
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    install_if: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    scripts: tuple[tuple[str, bytes], ...] = ()  # (type, content), type in SCRIPT_TYPES
    installed_size: int | None = None  # None: the sum of the regular files' sizes
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        return f"{self.name}-{self.version}.apk"

    @property
    def size(self) -> int:
        if self.installed_size is not None:
            return self.installed_size
        return sum(e.size for e in self.entries if e.kind == "file")

    def content_key(self) -> str:
        h = hashlib.sha256(DATA_FORMAT.encode())
        for e in sorted(self.entries, key=lambda e: e.path):
            h.update(f"{e.path}\0{e.kind}\0{e.mode:o}\0{e.target or ''}\0{e.size}\0".encode())
            if e.source is not None:
                st = e.source.stat()
                h.update(f"{e.source}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            elif e.data is not None:
                h.update(hashlib.sha256(e.data).digest())
        return nix_base32(h.digest()[:20])


def _gzip(data: bytes, level: int = 9) -> bytes:
    """One gzip member, no name and mtime 0 (``gzip -n``: the header does not matter to apk, reproducible)."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def _cut_tar(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar stream cut before its end-of-archive blocks (``abuild-tar --cut``)."""
    buf = io.BytesIO()
    tf = tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT)
    for ti, data in members:
        tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    end = tf.offset
    tf.close()
    return buf.getvalue()[:end]


def _ti(name: str, size: int = 0, mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = size, mode, EPOCH
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    return ti


def signature_member(runner: Runner, key: LabKey, signed: bytes) -> bytes:
    """The gzip member ``tar{.SIGN.RSA.<key name>}`` holding ``openssl dgst -sha1 -sign`` over ``signed``
    (abuild313 ``abuild-sign.in:27-48``)."""
    with tempfile.TemporaryDirectory(prefix="labkit-sign-") as tmp:
        src, sig = Path(tmp) / "signed", Path(tmp) / "sig"
        src.write_bytes(signed)
        runner.run(["openssl", "dgst", "-sha1", "-sign", key.private, "-out", sig, src])
        raw = sig.read_bytes()
    return _gzip(_cut_tar([(_ti(f".SIGN.RSA.{key.name}", len(raw)), raw)]))


def _parents(entries: Sequence[PkgEntry]) -> dict[str, int]:
    dirs: dict[str, int] = {}
    for e in entries:
        parts = PurePosixPath(e.path).parts
        for i in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:i]), 0o755)
    for e in entries:
        if e.kind == "dir":
            dirs[e.path] = e.mode
    return dirs


def data_member(entries: Sequence[PkgEntry], level: int = 6) -> bytes:
    """The data member: a pax tar (each parent directory first, every file and symlink with its
    ``APK-TOOLS.checksum.SHA1`` record), end blocks kept, one gzip member."""
    dirs = _parents(entries)
    items: list[tuple[str, str, PkgEntry | None]] = [(d, "dir", None) for d in dirs]
    items += [(e.path, e.kind, e) for e in entries if e.kind != "dir"]
    out = io.BytesIO()
    gz = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0, filename="")
    with gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, kind, e in sorted(items, key=lambda m: (m[0].split("/"), m[1] != "dir")):
            if kind == "dir":
                ti = _ti(path, 0, dirs[path])
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
                continue
            assert e is not None
            if kind == "symlink":
                ti = _ti(path, 0, 0o777)
                ti.type = tarfile.SYMTYPE
                ti.linkname = e.target or ""
                ti.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(ti.linkname.encode()).hexdigest()}
                tf.addfile(ti)
                continue
            if e.data is not None:
                content: bytes | None = e.data
                digest = hashlib.sha1(e.data).hexdigest()
                size = len(e.data)
            else:
                assert e.source is not None
                content = None
                h = hashlib.sha1()
                with open(e.source, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
                digest, size = h.hexdigest(), e.source.stat().st_size
            ti = _ti(path, size, e.mode)
            ti.pax_headers = {"APK-TOOLS.checksum.SHA1": digest}
            if content is not None:
                tf.addfile(ti, io.BytesIO(content))
            else:
                assert e.source is not None
                with open(e.source, "rb") as fh:
                    tf.addfile(ti, fh)
    return out.getvalue()


def pkginfo(spec: ApkSpec, datahash: str) -> bytes:
    """``.PKGINFO`` in abuild's key order (abuild313 ``abuild.in:1157-1227``), ``datahash`` last (``:1855``)."""
    size = spec.size
    if size == 0 and (spec.entries or spec.scripts):
        size = 1  # abuild313 abuild.in:1139-1148: apk 2.14 skips a package of size 0
    lines = ["# Generated by labkit (rehearsal repository)", f"pkgname = {spec.name}", f"pkgver = {spec.version}",
             f"pkgdesc = {spec.description}", f"url = {spec.url}", f"builddate = {spec.builddate}",
             "packager = labkit rehearsal", f"size = {size}", f"arch = {ARCH}", f"origin = {spec.origin or spec.name}"]
    if spec.commit:
        lines.append(f"commit = {spec.commit}")
    if spec.maintainer:
        lines.append(f"maintainer = {spec.maintainer}")
    lines += [f"{k} = {spec.extra[k]}" for k in ("replaces_priority", "provider_priority") if k in spec.extra]
    lines.append(f"license = {spec.license}")
    lines += [f"replaces = {r}" for r in spec.replaces]
    lines += [f"depend = {d}" for d in spec.depends]
    lines += [f"provides = {p}" for p in spec.provides]
    if spec.triggers:
        lines.append(f"triggers = {' '.join(spec.triggers)}")
    if spec.install_if:
        lines.append(f"install_if = {' '.join(spec.install_if)}")
    lines += [f"{k} = {v}" for k, v in spec.extra.items() if k not in ("replaces_priority", "provider_priority")]
    lines.append(f"datahash = {datahash}")
    return ("\n".join(lines) + "\n").encode()


def control_member(spec: ApkSpec, datahash: str) -> bytes:
    info = pkginfo(spec, datahash)
    members: list[tuple[tarfile.TarInfo, bytes | None]] = [(_ti(".PKGINFO", len(info)), info)]
    for kind, script in spec.scripts:
        if kind not in SCRIPT_TYPES:
            raise LabkitError(f"package {spec.name}: unknown script type {kind!r}",
                              f"use one of {', '.join(SCRIPT_TYPES)}")
        members.append((_ti(f".{kind}", len(script), 0o755), script))
    return _gzip(_cut_tar(members))


def build_apk(runner: Runner, key: LabKey, spec: ApkSpec, cache: Path | None = None) -> bytes:
    """The signed ``.apk`` bytes: signature + control + data members. With ``cache``, the data member (the
    slow part: chromium's takes ~15 s) is kept by content and reused."""
    cached = cache / f"{spec.content_key()}-{spec.name}.data.gz" if cache is not None else None
    if cached is not None and cached.is_file():
        data = cached.read_bytes()
    else:
        data = data_member(spec.entries)
        if cached is not None:
            atomic_write_bytes(cached, data)
    control = control_member(spec, hashlib.sha256(data).hexdigest())
    return signature_member(runner, key, control) + control + data


def write_repository(runner: Runner, tool: ApkTool, key: LabKey, specs: Sequence[ApkSpec], repo: Path,
                     description: str, cache: Path | None = None) -> list[Path]:
    """``repo/x86_64/<name>-<version>.apk`` for each spec and ``repo/x86_64/APKINDEX.tar.gz``, written by the real
    ``apk index`` and signed with ``key``. Returns the .apk paths."""
    arch = repo / ARCH
    arch.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in specs:
        path = arch / spec.file_name
        atomic_write_bytes(path, build_apk(runner, key, spec, cache))
        paths.append(path)
    write_index(runner, tool, key, arch, paths, description)
    return paths


def write_index(runner: Runner, tool: ApkTool, key: LabKey, arch_dir: Path, apks: Sequence[Path],
                description: str) -> Path:
    """``arch_dir/APKINDEX.tar.gz``: ``apk index`` over ``apks`` (which checks each package's signature against
    the key: apk214 ``src/app_index.c:236-248``), then abuild-sign's signature member prepended."""
    out = arch_dir / "APKINDEX.tar.gz"
    with tempfile.TemporaryDirectory(prefix="labkit-apkindex-") as tmp:
        keys = Path(tmp) / "keys"
        keys.mkdir()
        shutil.copyfile(key.public, keys / key.name)
        unsigned = Path(tmp) / "APKINDEX.unsigned.tar.gz"
        runner.run(tool.argv("index", "--quiet", "--keys-dir", keys, "--rewrite-arch", ARCH, "-d", description,
                             "-o", unsigned, *[p.name for p in apks]),
                   cwd=arch_dir, env={"SOURCE_DATE_EPOCH": str(EPOCH)})
        body = unsigned.read_bytes()
    atomic_write_bytes(out, signature_member(runner, key, body) + body)
    return out


def unpack_minirootfs(runner: Runner, tarball: Path, cache: Path) -> ApkTool:
    """The minirootfs ``tarball`` unpacked once under ``cache/<sha256 prefix>/`` (``tar`` keeps its links and
    modes); returns its ``apk``."""
    h = hashlib.sha256()
    with open(tarball, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    dest = cache / f"minirootfs-{h.hexdigest()[:16]}"
    if not (dest / "lib" / "apk" / "db" / "installed").is_file():
        tmp = cache / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        runner.run(["tar", "-xzf", tarball, "-C", tmp, "--no-same-owner"])
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    tool = ApkTool(dest)
    tool.check()
    return tool


def members(apk: bytes) -> list[bytes]:
    """The raw gzip members of an .apk or APKINDEX (as apk splits them, apk214 ``src/io_gunzip.c:87-124``)."""
    out = []
    while apk:
        d = zlib.decompressobj(31)
        d.decompress(apk)
        rest = d.unused_data
        out.append(apk[: len(apk) - len(rest)])
        apk = rest
    return out


def tamper_data(apk: bytes) -> bytes:
    """``apk`` with its data member compressed again (same tar, other gzip bytes): the datahash signed in the
    control member no longer matches. For tests and the lab's broken-package check."""
    sig, control, data = members(apk)
    return sig + control + gzip.compress(gzip.decompress(data), compresslevel=1, mtime=0)


#: The Alpine minirootfs the real-apk rehearsal is built and tested with (apk-tools 2.14.4): Alpine's official
#: release file and the sha512 Alpine publishes beside it (``<url>.sha512``).
MINIROOTFS_NAME = "alpine-minirootfs-3.20.3-x86_64.tar.gz"
MINIROOTFS_ENV = "LABKIT_ALPINE_ROOTFS"
MINIROOTFS_URL = f"https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/x86_64/{MINIROOTFS_NAME}"
MINIROOTFS_SHA512 = ("9d5405f61f8a6ebc02461ba75346fbf1a63a4eab8510a0158dd321cee0c4dafe"
                     "28c2a3d2cb7c3d75e2a8130dae0c3c92382f5b6adeea309eafc97621c5bf6400")


def obtain_minirootfs(runner: Runner, given: Path | None, cache: Path, *, network: bool = True,
                      timeout: float = 20.0, url: str = MINIROOTFS_URL) -> tuple[Path | None, str]:
    """The verified Alpine minirootfs and how it was found: ``given`` or ``$LABKIT_ALPINE_ROOTFS`` (checked against
    the published sha512), a
    copy in ``cache``, or a download from Alpine's official release URL (the ISOs' download code, resumable,
    sha512 checked). ``(None, reason)`` when there is none (no file given, no copy, no network): the lab then
    builds the Alpine-style rehearsal with labkit's own package install and says so."""
    if given is None and os.environ.get(MINIROOTFS_ENV):
        given = Path(os.environ[MINIROOTFS_ENV])
    if given is not None:
        return verify_file_sha512(Path(given), MINIROOTFS_SHA512), f"given: {given}"
    dest = cache / MINIROOTFS_NAME
    if dest.is_file():
        try:
            return verify_file_sha512(dest, MINIROOTFS_SHA512), f"cached: {dest}"
        except LabkitError:
            dest.unlink()
    if not network:
        return None, "no alpine_rootfs given, no cached copy, downloads disabled"
    try:
        got = download(url, dest, None, sha512=MINIROOTFS_SHA512, timeout=timeout)
    except ChecksumMismatch:
        raise  # a damaged or substituted file is an error, never a silent fallback
    except LabkitError as exc:
        runner.note(f"Alpine minirootfs not downloaded: {exc.problem}")
        return None, f"no alpine_rootfs given, no cached copy, download failed ({exc.problem})"
    return got, f"downloaded: {url}"
