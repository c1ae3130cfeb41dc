"""Obtain a Debian kernel + modules for the rehearsal guests, without touching the host's /boot.

``apt-cache depends linux-image-amd64`` names the versioned package; ``apt-get download`` fetches
it into the cache and ``dpkg-deb -x`` unpacks it there. The package ships no ``modules.dep``
(depmod runs in its postinst), so labkit writes one from each module's ``.modinfo``.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_text

META_PACKAGE = "linux-image-amd64"
MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")
_SOFTDEP = re.compile(rb"(?:^|\x00)softdep=pre: ?([^\x00]*)\x00")
_ALIAS = re.compile(rb"(?:^|\x00)alias=([^\x00]+)\x00")
#: softdep names that are aliases, not module names (ext4/jbd2: "pre: crc32c").
_ALIASES = {"crc32c": "crc32c_generic", "crypto_crc32c": "crc32c_generic"}


@dataclass(frozen=True)
class GuestKernel:
    version: str  # uname -r, e.g. 6.1.0-56-amd64
    vmlinuz: Path
    modules_dir: Path  # .../lib/modules/<version>


def default_cache_dir() -> Path:
    """labkit's download cache: $LABKIT_CACHE, else $XDG_CACHE_HOME/labkit, else ~/.cache/labkit."""
    base = os.environ.get("LABKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "labkit"
    )
    return Path(base)


def default_kernel_cache() -> Path:
    return default_cache_dir() / "kernel"


def module_name(relpath: str) -> str:
    """``kernel/fs/ext4/ext4.ko.xz`` -> ``ext4`` (dashes folded to underscores, as the kernel does)."""
    base = relpath.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def read_module_bytes(runner: Runner, path: Path) -> bytes:
    """A module's ELF bytes, decompressed whatever its suffix (.ko, .ko.xz, .ko.zst, .ko.gz)."""
    name = path.name
    if name.endswith(".ko"):
        return path.read_bytes()
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        import gzip

        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "m.ko"
            runner.run(["zstd", "-q", "-d", "-f", "-o", out, path], query=True)
            return out.read_bytes()
    raise LabkitError(f"not a kernel module: {path}", "pass a .ko, .ko.xz, .ko.zst or .ko.gz file")


def _modinfo_deps(data: bytes) -> list[str]:
    deps: list[str] = []
    m = _DEPENDS.search(data)
    if m and m.group(1):
        deps += [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]
    for s in _SOFTDEP.finditer(data):
        for d in s.group(1).split(b" "):
            if d == b"post:":
                break
            if d:
                name = d.decode().replace("-", "_")
                deps.append(_ALIASES.get(name, name))
    return deps


def module_aliases(data: bytes) -> list[str]:
    """The ``alias=`` patterns of a module's ``.modinfo`` (what depmod writes to ``modules.alias``)."""
    return [m.group(1).decode() for m in _ALIAS.finditer(data)]


def write_modules_dep(runner: Runner, modules_dir: Path) -> Path:
    """Write ``modules.dep`` (depmod's format: ``relpath: dep-relpath ...``, direct deps + pre-softdeps)."""
    rels = sorted(
        p.relative_to(modules_dir).as_posix()
        for p in modules_dir.rglob("*")
        if p.name.endswith(MODULE_SUFFIXES) and p.is_file()
    )
    by_name = {module_name(r): r for r in rels}
    lines = []
    for rel in rels:
        data = read_module_bytes(runner, modules_dir / rel)
        deps = [by_name[d] for d in _modinfo_deps(data) if d in by_name and by_name[d] != rel]
        lines.append(f"{rel}: {' '.join(dict.fromkeys(deps))}".rstrip() + "\n")
    out = modules_dir / "modules.dep"
    atomic_write_text(out, "".join(lines))
    return out


def read_modules_dep(path: Path) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        mod, _, rest = line.partition(":")
        deps[mod.strip()] = rest.split()
    return deps


def module_closure(deps: Mapping[str, Sequence[str]], roots: Iterable[str]) -> list[str]:
    """Module paths needed for ``roots`` (module names), in load order (dependencies first)."""
    by_name = {module_name(rel): rel for rel in deps}
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = visiting, 2 = done

    def visit(rel: str) -> None:
        if state.get(rel) == 2:
            return
        if state.get(rel) == 1:
            raise LabkitError(f"dependency cycle in modules.dep at {rel}", "regenerate modules.dep")
        state[rel] = 1
        for dep in deps.get(rel, ()):
            visit(dep)
        state[rel] = 2
        order.append(rel)

    for root in roots:
        name = root.replace("-", "_")
        if name not in by_name:
            raise LabkitError(
                f"kernel module {root!r} is not in modules.dep",
                "it may be built into this kernel (drop it from the list) or the kernel package is incomplete",
            )
        visit(by_name[name])
    return order


# -- fetching ----------------------------------------------------------------------------------
def _versioned_package(runner: Runner) -> str | None:
    res = runner.run(["apt-cache", "depends", META_PACKAGE], query=True, check=False)
    if res.rc != 0:
        return None
    for line in res.stdout.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\d\S*)", line)
        if m:
            return m.group(1)
    return None


def _cached(cache_dir: Path, version: str) -> GuestKernel | None:
    root = cache_dir / version
    kernel = GuestKernel(version, root / "boot" / f"vmlinuz-{version}", root / "lib" / "modules" / version)
    if kernel.vmlinuz.is_file() and (kernel.modules_dir / "modules.dep").is_file():
        return kernel
    return None


def _newest_cached(cache_dir: Path) -> GuestKernel | None:
    if not cache_dir.is_dir():
        return None
    found = [k for d in sorted(cache_dir.iterdir()) if d.is_dir() and (k := _cached(cache_dir, d.name))]
    return found[-1] if found else None


def obtain_kernel(runner: Runner, cache_dir: Path) -> GuestKernel:
    """The Debian kernel for the guests, fetched once into ``cache_dir`` (idempotent)."""
    cache_dir = Path(cache_dir)
    package = _versioned_package(runner)
    if package is None:
        cached = _newest_cached(cache_dir)
        if cached is not None:
            runner.note(f"apt-cache knows no {META_PACKAGE}; using the cached kernel {cached.version}")
            return cached
        runner.run(["apt-get", "update"])
        package = _versioned_package(runner)
    if package is None:
        raise LabkitError(
            f"apt cannot resolve {META_PACKAGE} to a versioned linux-image package",
            "check /etc/apt/sources.list(.d) names a Debian main repository reachable from here, "
            "then run: apt-get update",
        )
    version = package.removeprefix("linux-image-")
    cached = _cached(cache_dir, version)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".download-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        runner.run(["apt-get", "download", package], cwd=tmp)
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if not debs:
            raise LabkitError(f"apt-get download {package} produced no .deb", "run it by hand and read its output")
        deb = cache_dir / debs[0].name
        os.replace(debs[0], deb)
        root = tmp / "root"
        runner.run(["dpkg-deb", "-x", deb, root])
        kernel = GuestKernel(version, root / "boot" / f"vmlinuz-{version}", root / "lib" / "modules" / version)
        if not kernel.vmlinuz.is_file() or not kernel.modules_dir.is_dir():
            raise LabkitError(f"{deb.name} holds no boot/vmlinuz-{version} or modules", "pick a linux-image package")
        write_modules_dep(runner, kernel.modules_dir)
        final = cache_dir / version
        shutil.rmtree(final, ignore_errors=True)
        os.replace(root, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    done = _cached(cache_dir, version)
    assert done is not None
    return done
