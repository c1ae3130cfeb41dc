"""APKINDEX.tar.gz reader, world dependency closure and the size/RAM predictor; package sets.

Format (apk-tools 2.x): concatenated gzip streams — a signature tar (``.SIGN.RSA.<key>.pub``),
then a tar holding ``DESCRIPTION`` and ``APKINDEX``: blank-line separated records of ``X:value``
lines (``C`` checksum, ``P`` name, ``V`` version, ``A`` arch, ``S`` .apk size, ``I`` installed
size, ``T`` description, ``U`` url, ``L`` license, ``o`` origin, ``m`` maintainer, ``t`` build
time, ``c`` commit, ``D`` depends, ``p`` provides, ``i`` install_if, ``k`` provider priority).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.core import pkgsets
from labkit.core.archives import ArchiveLimits, ArchiveTooLarge, TarStream, read_chunks
from labkit.core.errors import InputError
from labkit.core.text import excerpt

_OP = re.compile(r"[<>=~]")


def package_set(name: str) -> tuple[str, ...]:
    """The Alpine world of a package set (:mod:`labkit.core.pkgsets`); ``+name`` is accepted too."""
    return pkgsets.package_set(name.lstrip("+")).alpine


def world_file(names: Iterable[str]) -> str:
    return "".join(f"{n}\n" for n in sorted(set(names)))


@dataclass(frozen=True)
class IndexPackage:
    name: str
    version: str
    arch: str
    size: int  # S: the .apk file (download)
    installed_size: int  # I: unpacked
    depends: tuple[str, ...]
    provides: tuple[str, ...]
    priority: int = 0


def _dep_name(token: str) -> str:
    """The name a dependency or world token refers to (no ``@tag``, no constraint)."""
    return _OP.split(token, 1)[0].split("@", 1)[0]


def parse_records(text: str) -> list[IndexPackage]:
    out: list[IndexPackage] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        rec: dict[str, str] = {}
        for line in block.splitlines():
            if len(line) >= 2 and line[1] == ":":
                rec[line[0]] = line[2:]
        if "P" not in rec:
            continue
        try:
            out.append(IndexPackage(rec["P"], rec.get("V", ""), rec.get("A", ""), int(rec.get("S", "0")),
                                    int(rec.get("I", "0")), tuple(rec.get("D", "").split()),
                                    tuple(rec.get("p", "").split()), int(rec.get("k", "0"))))
        except ValueError:
            raise InputError(f"APKINDEX record of {excerpt(rec['P'])} has a non-numeric size field") from None
    return out


#: Limits for an APKINDEX.tar.gz (Alpine's community index: a few MiB compressed, ~10 MiB of text);
#: the APKINDEX member is kept in memory, so one member is held to 64 MiB.
APKINDEX_LIMITS = ArchiveLimits(max_compressed=64 * 2**20, max_total=128 * 2**20, max_members=16,
                                max_member=64 * 2**20)


def read_apkindex(source: Path | bytes, *, limits: ArchiveLimits = APKINDEX_LIMITS) -> list[IndexPackage]:
    """The packages of an ``APKINDEX.tar.gz`` (read as a stream within ``limits``: a gzip bomb is refused)."""
    label = str(source) if isinstance(source, Path) else "the APKINDEX archive"
    stream = TarStream(source, label, limits)
    try:
        for m, data in stream:
            if m.name == "APKINDEX" and data is not None:
                return parse_records(b"".join(read_chunks(data)).decode("utf-8", "replace"))
    except ArchiveTooLarge:
        raise
    except InputError as exc:
        raise InputError(f"cannot read the APKINDEX archive {label}: {exc.problem}",
                         "give apks/x86_64/APKINDEX.tar.gz (truncated or not an APKINDEX.tar.gz?)") from None
    raise InputError(f"{label} holds no APKINDEX member", "give apks/x86_64/APKINDEX.tar.gz")


class Index:
    def __init__(self, packages: Sequence[IndexPackage]) -> None:
        self.packages = {p.name: p for p in packages}
        self.providers: dict[str, list[IndexPackage]] = {}
        for p in packages:
            for prov in p.provides:
                self.providers.setdefault(_dep_name(prov), []).append(p)

    def lookup(self, dep: str) -> IndexPackage | None:
        name = _dep_name(dep)
        if name in self.packages:
            return self.packages[name]
        cands = self.providers.get(name, [])
        return max(cands, key=lambda p: (p.priority, p.name)) if cands else None

    def closure(self, world: Iterable[str]) -> list[IndexPackage]:
        """Every package the world pulls in (D: through names, so:/cmd:/virtual p: providers)."""
        seen: dict[str, IndexPackage] = {}
        missing_world = [w for w in world if self.lookup(w) is None]
        if missing_world:
            raise InputError(f"the world names {', '.join(repr(m) for m in missing_world)}, not in the APKINDEX",
                             "check the spelling, the Alpine branch, or add the repository that has it")
        stack = [(w, "world") for w in world]
        while stack:
            dep, parent = stack.pop()
            if dep.startswith("!"):
                continue  # a conflict, not a dependency
            pkg = self.lookup(dep)
            if pkg is None:
                raise InputError(f"{dep!r} (needed by {parent}) is not provided by any package in the APKINDEX")
            if pkg.name in seen:
                continue
            seen[pkg.name] = pkg
            stack += [(d, pkg.name) for d in pkg.depends]
        return sorted(seen.values(), key=lambda p: p.name)


@dataclass(frozen=True)
class Prediction:
    world: tuple[str, ...]
    packages: tuple[IndexPackage, ...]

    @property
    def download_bytes(self) -> int:
        return sum(p.size for p in self.packages)

    @property
    def installed_bytes(self) -> int:
        return sum(p.installed_size for p in self.packages)

    @property
    def ram_bytes(self) -> int:
        """Diskless: every installed byte lives in the tmpfs root, i.e. in RAM."""
        return self.installed_bytes

    def summary(self) -> dict[str, object]:
        return {"world": list(self.world), "packages": len(self.packages), "download_bytes": self.download_bytes,
                "installed_bytes": self.installed_bytes, "ram_bytes": self.ram_bytes}


def predict(index: Index | Sequence[IndexPackage], world: Iterable[str]) -> Prediction:
    idx = index if isinstance(index, Index) else Index(index)
    names = tuple(dict.fromkeys(world))
    return Prediction(names, tuple(idx.closure(names)))
