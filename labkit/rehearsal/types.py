"""Value types shared by the rehearsal-guest builders (see docs/contracts.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootEntry:
    """How a boot loader starts one guest.

    ``kernel``/``initrd`` are paths relative to the root of the partition (``partition_role``,
    a :class:`labkit.core.layout.Role` value) that holds them.
    """

    title: str
    partition_role: str
    kernel: str
    initrd: str
    cmdline: str


@dataclass(frozen=True)
class PackageInfo:
    """One package placed on a guest's media."""

    name: str
    version: str
    installed_size: int  # bytes: sum of the regular files' sizes
    compressed_size: int  # bytes of the .apk (Alpine) or 0 (Nix store path, stored unpacked)
    file: str  # path relative to the tree root: apks/x86_64/<n>-<v>.apk or store/<hash>-<n>-<v>


@dataclass(frozen=True)
class GuestBuild:
    """What a builder produced: the boot entry, the packages and the key files on the tree(s)."""

    os_id: str  # alpine-rehearsal | nixos-rehearsal
    entry: BootEntry
    packages: tuple[PackageInfo, ...]
    kernel_version: str
    files: tuple[tuple[str, str], ...] = ()  # (name, path) of notable files, e.g. ("apkovl", ...)

    @property
    def installed_size(self) -> int:
        return sum(p.installed_size for p in self.packages)

    @property
    def compressed_size(self) -> int:
        return sum(p.compressed_size for p in self.packages)

    def file(self, name: str) -> str:
        return dict(self.files)[name]
