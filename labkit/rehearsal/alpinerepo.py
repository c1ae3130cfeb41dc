"""The Alpine-style rehearsal's package repository as real apk-tools packages (see :mod:`labkit.rehearsal.apk`).

* The base system re-packed from the Alpine minirootfs's own files: one package per record of its
  ``lib/apk/db/installed`` (apk214 ``src/database.c:922-1000``, the letters of apk-tools notes §6), with its real
  name, version, description, dependencies, provides, replaces, install_if, directory and file list (modes
  from ``M:``/``a:``), its installed size (``I:``), its scripts (``lib/apk/db/scripts.tar``, members
  ``<name>-<version>.<C:>.<type>``) and triggers (``lib/apk/db/triggers``, ``<C:> <globs>``).
* ``labkit-rehearsal-base``: what the rehearsal adds for stage 2 (Debian's OpenRC with its glibc libraries,
  the services of Alpine's runlevels, the rehearsal marker), depending on the minirootfs's world
  (``etc/apk/world``) and providing ``alpine-base`` (the initramfs always asks for it: mkinitfs 3.10.1
  ``initramfs-init.in:864-865``), as Alpine's alpine-base pulls in busybox, openrc and alpine-baselayout.
* The larger sets' payloads (Debian packages on the host) as packages of their sizes, under an apk version
  made from the Debian one (:func:`apk_version`).
"""

from __future__ import annotations

import re
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_bytes
from labkit.rehearsal.apk import ApkSpec, ApkTool, LabKey, write_repository
from labkit.rehearsal.payloads import BASE_PACKAGE, Payload, PkgEntry, alpine_base_payload, collect
from labkit.rehearsal.types import PackageInfo

REHEARSAL_BASE = "labkit-rehearsal-base"
REHEARSAL_BASE_VERSION = "0-r0"
DESCRIPTION = "labkit rehearsal repository (Alpine minirootfs packages + rehearsal payloads; not Alpine's)"
#: apk 3's strict version grammar (apk306 ``src/version.c:25``), which 2.14 accepts too (apk-tools notes §3.3).
_APK_VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+)*[a-z]?(?:_(?:alpha|beta|pre|rc|cvs|svn|git|hg|p)[0-9]*)*"
                             r"(?:-r[0-9]+)?$")


def apk_version(debian: str) -> str:
    """An apk version for a Debian version: epoch dropped, the upstream version's leading
    ``digits(.digits)*[letter]``, the Debian revision's leading digits as ``-rN`` (``1:2.3.4-5ubuntu1`` →
    ``2.3.4-r5``, ``0.11.0+ds-1`` → ``0.11.0-r1``). Lossy, and labelled so by the repository's description."""
    v = debian.split(":", 1)[-1]
    upstream, _, revision = v.rpartition("-") if "-" in v else (v, "", "")
    m = re.match(r"[0-9]+(?:\.[0-9]+)*[a-z]?", upstream)
    r = re.match(r"[0-9]+", revision)
    out = f"{m.group(0) if m else '0'}-r{r.group(0) if r else '0'}"
    assert _APK_VERSION_RE.match(out), out
    return out


def _records(text: str) -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    cur: list[tuple[str, str]] = []
    for line in text.split("\n"):
        if len(line) < 2:
            if cur:
                out.append(cur)
            cur = []
            continue
        if line[1] != ":":
            raise LabkitError(f"lib/apk/db/installed: unreadable line {line!r}",
                              "give the official Alpine minirootfs (its database is written by apk)")
        cur.append((line[0], line[2:]))
    if cur:
        out.append(cur)
    return out


def _mode(field: str, default: int) -> int:
    """``uid:gid:octal mode[:xattr csum]`` (apk214 ``src/database.c:972-987``)."""
    parts = field.split(":")
    return int(parts[2], 8) if len(parts) >= 3 else default


def minirootfs_specs(tool: ApkTool) -> list[ApkSpec]:
    """One :class:`ApkSpec` per package of the minirootfs's installed database, its files from the rootfs."""
    root = tool.root
    db = (root / "lib" / "apk" / "db" / "installed").read_text()
    scripts: dict[str, bytes] = {}
    scripts_tar = root / "lib" / "apk" / "db" / "scripts.tar"
    if scripts_tar.is_file():
        with tarfile.open(scripts_tar) as tf:
            for m in tf.getmembers():
                fh = tf.extractfile(m)
                if fh is not None:
                    scripts[m.name] = fh.read()
    triggers: dict[str, tuple[str, ...]] = {}
    trig = root / "lib" / "apk" / "db" / "triggers"
    if trig.is_file():
        for line in trig.read_text().splitlines():
            csum, *globs = line.split()
            triggers[csum] = tuple(globs)
    specs = []
    for rec in _records(db):
        f: dict[str, list[str]] = {}
        entries: list[PkgEntry] = []
        cur_dir = ""
        last: PkgEntry | None = None
        for k, v in rec:
            if k == "F":
                cur_dir = v
                last = PkgEntry(v, "dir", 0o755, 0)
                entries.append(last)
            elif k == "M" and last is not None and last.kind == "dir":
                entries[-1] = PkgEntry(last.path, "dir", _mode(v, 0o755), 0)
            elif k == "R":
                path = f"{cur_dir}/{v}" if cur_dir else v
                src = root / path
                st = src.lstat()
                if stat.S_ISLNK(st.st_mode):
                    last = PkgEntry(path, "symlink", 0o777, 0, target=str(src.readlink()))
                else:
                    last = PkgEntry(path, "file", 0o644, st.st_size, source=src)
                entries.append(last)
            elif k == "a" and last is not None and last.kind == "file":
                entries[-1] = PkgEntry(last.path, "file", _mode(v, 0o644), last.size, source=last.source)
            else:
                f.setdefault(k, []).append(v)
        one = {k: v[0] for k, v in f.items()}
        name, version, csum = one["P"], one["V"], one.get("C", "")
        prefix = f"{name}-{version}.{csum}."
        pkg_scripts = tuple((n[len(prefix):], data) for n, data in sorted(scripts.items()) if n.startswith(prefix))
        specs.append(ApkSpec(
            name, version, tuple(entries), description=one.get("T", ""), url=one.get("U", ""),
            license=one.get("L", ""), origin=one.get("o", ""), maintainer=one.get("m", ""), commit=one.get("c", ""),
            builddate=int(one.get("t", "0") or 0), depends=tuple(one.get("D", "").split()),
            provides=tuple(one.get("p", "").split()), replaces=tuple(one.get("r", "").split()),
            install_if=tuple(one.get("i", "").split()), triggers=triggers.get(csum, ()), scripts=pkg_scripts,
            installed_size=int(one.get("I", "0")),
            extra={key: one[letter] for letter, key in (("q", "replaces_priority"), ("k", "provider_priority"))
                   if letter in one},
        ))
    return specs


def rehearsal_base_spec(runner: Runner, tool: ApkTool, owned: set[str]) -> ApkSpec:
    """``labkit-rehearsal-base``: the rehearsal base payload without its Debian busybox (Alpine's busybox
    comes from the minirootfs) and without the paths a minirootfs package owns (``etc/inittab`` is
    alpine-baselayout's)."""
    base = alpine_base_payload(runner, with_busybox=False)
    entries = tuple(e for e in base.entries if e.kind == "dir" or e.path not in owned)
    world = tuple((tool.root / "etc" / "apk" / "world").read_text().split())
    return ApkSpec(REHEARSAL_BASE, REHEARSAL_BASE_VERSION, entries,
                   description="labkit rehearsal: Debian's OpenRC, the rehearsal services and marker (not Alpine's)",
                   license="various", depends=world, provides=("alpine-base=0-r0",))


def payload_spec(p: Payload) -> ApkSpec:
    return ApkSpec(p.name, apk_version(p.version), p.entries,
                   description=f"labkit rehearsal payload: Debian package {p.name} {p.version}", license="various")


def write_real_alpine_repo(runner: Runner, tool: ApkTool, key: LabKey, names: Sequence[str], tree: Path,
                           cache: Path | None = None) -> list[PackageInfo]:
    """``tree/apks``: ``.boot_repository``, signed .apk files and a signed ``APKINDEX.tar.gz`` for the minirootfs
    packages, ``labkit-rehearsal-base`` and the Debian payloads of ``names`` (busybox-static left out: the
    minirootfs's busybox stands in)."""
    mini = minirootfs_specs(tool)
    owned = {e.path for s in mini for e in s.entries if e.kind != "dir"}
    specs = [*mini, rehearsal_base_spec(runner, tool, owned),
             *(payload_spec(p) for p in collect(runner, [n for n in names if n != BASE_PACKAGE]))]
    repo = tree / "apks"
    atomic_write_bytes(repo / ".boot_repository", b"")
    paths = write_repository(runner, tool, key, specs, repo, DESCRIPTION, cache=cache)
    return [PackageInfo(s.name, s.version, s.size, p.stat().st_size, f"apks/x86_64/{p.name}")
            for s, p in zip(specs, paths, strict=True)]

