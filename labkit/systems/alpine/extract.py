"""Alpine media → the Alpine partition's tree, without mounting (xorriso).

Copies ``apks/`` whole (``.boot_repository`` included: the diskless initramfs only treats a
directory holding it as a repository) and ``boot/{vmlinuz,initramfs,modloop,config}-<flavor>``;
the syslinux/grub/efi loader files stay behind (rEFInd boots the kernel directly). Writes
``boot/refind_linux.conf`` and, with a spec, ``<hostname>.apkovl.tar.gz`` at the tree's root.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import InputError, VerifyFailed
from labkit.core.files import check_output_dir
from labkit.core.runner import Runner, atomic_write_text
from labkit.systems.alpine.apkovl import ApkovlSpec, write_apkovl
from labkit.systems.alpine.rules import check_word

BOOT_FILES = ("vmlinuz", "initramfs", "modloop", "config")
MODULES = "modules=loop,squashfs,sd-mod,usb-storage"
SERIAL = "console=ttyS0,115200"


@dataclass(frozen=True)
class IsoInfo:
    release: str  # contents of /.alpine-release ("" when absent)
    flavors: tuple[str, ...]  # kernel flavors found as boot/vmlinuz-<flavor>
    files: tuple[str, ...]  # every regular file, relative ("apks/.boot_repository", ...)


def inspect_iso(runner: Runner, iso: Path) -> IsoInfo:
    """List the ISO (read-only) and check it is an Alpine boot medium."""
    if not iso.is_file():
        raise InputError(f"ISO {iso} does not exist", "give the path of the downloaded alpine-*.iso")
    res = runner.run(["xorriso", "-indev", str(iso), "-find", "/", "-type", "f"], query=True)
    files = tuple(sorted(ln.strip().strip("'").lstrip("/") for ln in res.stdout.splitlines() if ln.startswith("'")))
    if "apks/.boot_repository" not in files:
        raise InputError(
            f"{iso} has no apks/.boot_repository: not an Alpine boot medium (or its apks/ was copied with a "
            "glob, which drops the hidden marker)",
            "use an official alpine-standard/extended/virt ISO",
        )
    flavors = tuple(sorted(f.removeprefix("boot/vmlinuz-") for f in files if f.startswith("boot/vmlinuz-")))
    if not flavors:
        raise InputError(f"{iso} has no kernel (boot/vmlinuz-<flavor>)", "use an official Alpine ISO for x86_64")
    release = ""
    if ".alpine-release" in files:
        out = runner.run(["xorriso", "-indev", str(iso), "-osirrox", "on", "-concat", "overwrite", "-",
                          "/.alpine-release"], query=True)
        release = out.stdout.strip()
    return IsoInfo(release, flavors, files)


def kernel_options(*, lab: bool = True, extra: tuple[str, ...] = ()) -> str:
    """Alpine's diskless kernel line (no ``root=``): modules, quiet, the serial console in the lab."""
    return " ".join([MODULES, "quiet", *([SERIAL] if lab else []), *extra])


def refind_linux_conf(flavor: str, *, lab: bool = True, extra: tuple[str, ...] = (),
                      title: str = "Alpine Linux") -> str:
    opts = kernel_options(lab=lab, extra=extra)
    return f'"{title} ({flavor})" "{opts}"\n"{title} ({flavor}, verbose)" "{opts.replace(" quiet", "")}"\n'


def extract_argv(iso: Path | str, tree: Path, flavor: str, present: Collection[str] | None = None) -> list[str]:
    """xorriso's command that copies the ISO's apks/ (with .boot_repository) and the flavour's boot files
    into ``tree``, without mounting; ``present``: the ISO's files (None: a plan names every boot file)."""
    argv = ["xorriso", "-indev", str(iso), "-osirrox", "on:auto_chmod_on", "-extract", "/apks", str(tree / "apks")]
    for w in (f"boot/{n}-{flavor}" for n in BOOT_FILES):
        if present is None or w in present:
            argv += ["-extract", f"/{w}", str(tree / w)]
    return argv


def extract_iso(runner: Runner, iso: Path, tree: Path, *, flavor: str | None = None, lab: bool = True,
                spec: ApkovlSpec | None = None) -> IsoInfo:
    """Fill ``tree`` (the Alpine partition's root) from ``iso``."""
    info = inspect_iso(runner, iso)
    if flavor is None:
        if len(info.flavors) > 1:
            raise InputError(f"{iso} has several kernels {list(info.flavors)}", "choose one with flavor=")
        flavor = info.flavors[0]
    if flavor not in info.flavors:
        raise InputError(f"{iso} has no boot/vmlinuz-{flavor}", f"choose one of {list(info.flavors)}")
    # the flavor is written into refind_linux.conf ("Alpine Linux (<flavor>)") and file names
    check_word(flavor, "kernel flavor", r"[a-z0-9][a-z0-9._-]{0,31}")
    wanted = [f"boot/{n}-{flavor}" for n in BOOT_FILES]
    missing = [w for w in wanted[:2] if w not in info.files]
    if missing:
        raise InputError(f"{iso} lacks {missing}", "the ISO is incomplete; download it again")
    if runner.mode.value == "apply":
        check_output_dir(tree, what="the extraction folder")
    runner.run(extract_argv(iso, tree, flavor, info.files))
    extra = tuple(spec.kernel_args()) if spec else ()
    if runner.mode.value == "apply":
        if not (tree / "apks" / ".boot_repository").is_file():
            raise VerifyFailed(f"{tree}/apks/.boot_repository is missing after the extraction")
        atomic_write_text(tree / "boot" / "refind_linux.conf", refind_linux_conf(flavor, lab=lab, extra=extra))
        if spec is not None:
            write_apkovl(spec, tree)
    else:
        runner.note(f"would write {tree}/boot/refind_linux.conf" + (f" and {tree}/{spec.filename}" if spec else ""))
    return info
