"""Rehearsal guests: small Debian-kernel + busybox guests that reproduce how Alpine (diskless,
apkovl + packages installed into a tmpfs root) and NixOS (tmpfs root, read-only store) boot."""

from labkit.rehearsal.build import build_alpine_tree, build_nixos_trees, resolve_world
from labkit.rehearsal.initramfs import BOOT_MODULES, build_initramfs
from labkit.rehearsal.kernel import GuestKernel, module_closure, obtain_kernel, read_modules_dep
from labkit.rehearsal.payloads import BASE_PACKAGE, Payload, host_package
from labkit.rehearsal.types import BootEntry, GuestBuild, PackageInfo

__all__ = [
    "BASE_PACKAGE",
    "BOOT_MODULES",
    "BootEntry",
    "GuestBuild",
    "GuestKernel",
    "PackageInfo",
    "Payload",
    "build_alpine_tree",
    "build_initramfs",
    "build_nixos_trees",
    "host_package",
    "module_closure",
    "obtain_kernel",
    "read_modules_dep",
    "resolve_world",
]
