"""The boot chain on the lab image: rEFInd on the ESP, GRUB for NixOS, config texts.

rEFInd sits on the removable path (``EFI/BOOT/BOOTX64.EFI``) with its ext4 driver beside it, so
a fresh OVMF NVRAM boots it. One manual stanza per boot entry:

- an entry on the NixOS /boot partition chainloads GRUB (``EFI/NixOS/grubx64.efi``, built with
  ``grub-mkimage`` and an embedded config that finds the ``nixboot`` filesystem by label and
  reads ``grub/grub.cfg`` there), which loads the kernel;
- an entry on any other ext4 partition (Alpine) boots the kernel straight from that partition
  (``volume`` = filesystem label, read through rEFInd's ext4 driver).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from labkit.core.errors import InputError, VerifyFailed
from labkit.core.layout import LAB_LAYOUT, Layout, Role
from labkit.core.runner import Mode, Runner, atomic_write_text
from labkit.targets.image import MTOOLS_ENV

REFIND_DIR = Path("/usr/share/refind/refind")
REFIND_EFI = REFIND_DIR / "refind_x64.efi"
REFIND_EXT4 = REFIND_DIR / "drivers_x64" / "ext4_x64.efi"
#: rEFInd's drivers relative to the prefix of the package that ships ``refind-install`` (the parent of its
#: bin/ or sbin/): nixpkgs (``nix-shell -p refind``, the NixOS installer) installs them in
#: ``$out/share/refind/drivers_x64/`` (pkgs/by-name/re/refind/package.nix L66, L79); Debian in
#: ``/usr/share/refind/refind/drivers_x64/``.
REFIND_DRIVER_DIRS = ("share/refind/drivers_x64", "share/refind/refind/drivers_x64")
#: shown in a plan when no rEFInd package is on the planning machine
REFIND_NIX_EXT4_PLACEHOLDER = "<refind from nix-shell -p refind>/share/refind/drivers_x64/ext4_x64.efi"
GRUB_MODDIR = Path("/usr/lib/grub/x86_64-efi")

ESP_REFIND = "EFI/BOOT/BOOTX64.EFI"
ESP_EXT4_DRIVER = "EFI/BOOT/drivers_x64/ext4_x64.efi"
ESP_REFIND_CONF = "EFI/BOOT/refind.conf"
ESP_GRUB = "EFI/NixOS/grubx64.efi"

GRUB_MODULES: tuple[str, ...] = (
    "part_gpt", "part_msdos", "fat", "ext2", "search", "search_label", "search_fs_uuid",
    "search_fs_file", "normal", "configfile", "linux", "echo", "test", "boot", "chain",
    "efi_gop", "ls", "cat", "halt", "reboot", "sleep",
)


def refind_ext4_driver(refind_install: str | Path | None) -> Path | None:
    """``ext4_x64.efi`` of the rEFInd package whose ``refind-install`` is given (found on PATH), or None."""
    if refind_install is None:
        return None
    prefix = Path(refind_install).parent.parent
    for sub in REFIND_DRIVER_DIRS:
        candidate = prefix / sub / "ext4_x64.efi"
        if candidate.is_file():
            return candidate
    return None


def refind_binary_beside(driver: str | Path) -> str:
    """The rEFInd binary a ``drivers_x64/`` directory on the ESP belongs to: refind-install's
    ``EFI/refind/refind_x64.efi``, or the removable path's ``EFI/BOOT/BOOTX64.EFI``."""
    folder = Path(driver).parent.parent
    return str(folder / ("BOOTX64.EFI" if folder.name.upper() == "BOOT" else "refind_x64.efi"))


class BootEntryLike(Protocol):
    """What this module needs of ``labkit.rehearsal.BootEntry`` (see docs/contracts.md)."""

    @property
    def title(self) -> str: ...
    @property
    def partition_role(self) -> Role | str: ...
    @property
    def kernel(self) -> str: ...
    @property
    def initrd(self) -> str: ...
    @property
    def cmdline(self) -> str: ...


def _role(entry: BootEntryLike) -> Role:
    return Role(entry.partition_role)


def _check_text(what: str, text: str) -> None:
    if '"' in text or "\n" in text:
        raise InputError(f"{what} {text!r} contains a quote or newline", "remove it (rEFInd cannot escape it)")


def _fwd(path: str) -> str:
    return "/" + path.replace("\\", "/").lstrip("/")


def _back(path: str) -> str:
    return path.replace("/", "\\").lstrip("\\")


def refind_conf(
    entries: Sequence[BootEntryLike],
    default_title: str,
    *,
    layout: Layout = LAB_LAYOUT,
    timeout: int = -1,
    log_level: int = 0,
    grub_loader: str = ESP_GRUB,
) -> str:
    """``refind.conf`` with one manual stanza per entry and ``default_selection``."""
    titles = [e.title for e in entries]
    if default_title not in titles:
        raise InputError(f"default entry {default_title!r} is not among {titles}", "pick one of the titles")
    for a in titles:
        _check_text("title", a)
        others = [b for b in titles if b != a and a in b]
        if others or titles.count(a) > 1:
            raise InputError(f"title {a!r} is a substring of {others or [a]}: default_selection would be ambiguous",
                             "give the entries distinct titles")
    lines = [
        "# written by labkit (bootchain.refind_conf)",
        f"timeout {timeout}",
        f"log_level {log_level}",
        "scanfor manual",
        "textonly",
        "showtools shutdown",
        f'default_selection "{default_title}"',
        "",
    ]
    for e in entries:
        role = _role(e)
        lines.append(f'menuentry "{e.title}" {{')
        if role is Role.NIXOS_BOOT:
            lines.append(f"    loader \\{_back(grub_loader)}")
        else:
            part = layout.partition(role)
            _check_text("options", e.cmdline)
            lines += [
                f"    volume {part.label}",
                f"    loader {_fwd(e.kernel)}",
                f"    initrd {_fwd(e.initrd)}",
                f'    options "{e.cmdline}"',
                "    ostype Linux",
                "    graphics off",
            ]
        lines += ["}", ""]
    return "\n".join(lines)


def refind_linux_conf(entry: BootEntryLike, title: str = "Alpine Linux") -> str:
    """``boot/refind_linux.conf`` for the partition holding ``entry`` (used when rEFInd scans)."""
    _check_text("title", title)
    _check_text("cmdline", entry.cmdline)
    return f'"{title}" "initrd={_back(entry.initrd)} {entry.cmdline}"\n'


def grub_embedded_cfg(label: str = "nixboot") -> str:
    """The config built into grubx64.efi: find /boot by filesystem label, read grub/grub.cfg there.

    It runs in GRUB's rescue parser (before ``normal`` is loaded): plain commands only, no ``if``.
    """
    return (
        f'echo "labkit-grub: grub.cfg from the filesystem labelled {label}"\n'
        f"search --no-floppy --label {label} --set=root\n"
        "set prefix=($root)/grub\n"
        "configfile $prefix/grub.cfg\n"
    )


def grub_cfg(entry: BootEntryLike, *, timeout: int = 0) -> str:
    """``grub/grub.cfg`` for the NixOS /boot partition tree (paths relative to that partition)."""
    _check_text("title", entry.title)
    return (
        "# written by labkit (bootchain.grub_cfg)\n"
        f"set timeout={timeout}\n"
        "set default=0\n"
        f'menuentry "{entry.title}" {{\n'
        f"  linux {_fwd(entry.kernel)} {entry.cmdline}\n"
        f"  initrd {_fwd(entry.initrd)}\n"
        "}\n"
    )


def build_grub_efi(runner: Runner, out: Path, *, label: str = "nixboot",
                   modules: Sequence[str] = GRUB_MODULES, moddir: Path = GRUB_MODDIR) -> Path:
    """``grub-mkimage -O x86_64-efi`` with :func:`grub_embedded_cfg` built in; returns ``out``."""
    cfg = out.with_name(out.name + ".embedded.cfg")
    if runner.mode is Mode.APPLY:
        atomic_write_text(cfg, grub_embedded_cfg(label))
    runner.run(["grub-mkimage", "-O", "x86_64-efi", "-d", moddir, "-p", "/grub", "-c", cfg, "-o", out, *modules])
    return out


def esp_files(
    entries: Sequence[BootEntryLike],
    default_title: str,
    *,
    grub_efi: Path | None = None,
    layout: Layout = LAB_LAYOUT,
    timeout: int = -1,
    log_level: int = 0,
) -> dict[str, bytes | Path]:
    """Everything the ESP holds: rEFInd, its ext4 driver, refind.conf and (for NixOS) GRUB."""
    files: dict[str, bytes | Path] = {
        ESP_REFIND: REFIND_EFI,
        ESP_EXT4_DRIVER: REFIND_EXT4,
        ESP_REFIND_CONF: refind_conf(entries, default_title, layout=layout, timeout=timeout,
                                     log_level=log_level).encode(),
    }
    if any(_role(e) is Role.NIXOS_BOOT for e in entries):
        if grub_efi is None:
            raise InputError("a NixOS entry needs GRUB on the ESP", "build it with build_grub_efi() first")
        files[ESP_GRUB] = grub_efi
    return files


def set_default_selection(runner: Runner, image: Path, esp_offset: int, title: str,
                          *, work: Path | None = None) -> str:
    """Rewrite ``default_selection`` in the image's refind.conf (mtools); returns the new text."""
    _check_text("title", title)
    target = f"{image}@@{esp_offset}"
    conf_path = f"::/{ESP_REFIND_CONF}"
    old = runner.run(["mtype", "-i", target, conf_path], env=MTOOLS_ENV, query=True).stdout
    titles = [ln.split('"')[1] for ln in old.splitlines() if ln.strip().startswith("menuentry") and '"' in ln]
    if old and title not in titles:
        raise InputError(f"refind.conf in {image.name} has no entry titled {title!r} (entries: {titles})",
                         "use one of the entry titles")
    lines = old.splitlines()
    sel = f'default_selection "{title}"'
    found = [i for i, ln in enumerate(lines) if ln.strip().startswith("default_selection")]
    if found:
        lines[found[0]] = sel
        lines = [ln for i, ln in enumerate(lines) if i not in found[1:]]
    else:
        lines.insert(next((i for i, ln in enumerate(lines) if ln.strip().startswith("menuentry")), len(lines)), sel)
    new = "\n".join(lines) + "\n"
    return _write_refind_conf(runner, image, target, conf_path, new, work)


def set_entry_options(runner: Runner, image: Path, esp_offset: int, title: str, options: str,
                      *, work: Path | None = None) -> str:
    """Rewrite the ``options`` line (the kernel command line) of the manual stanza titled ``title`` in the
    image's refind.conf (mtools), e.g. to pass one boot a ``labkit.*`` switch; returns the new text.
    rEFInd takes a manual stanza's ``options`` as the loader's command line, after ``loader`` (which discards
    earlier options) and before it appends ``initrd=`` (refind ``config.c`` AddStanzaEntries, v0.13.2
    L916-1024: ``Entry->LoadOptions = StrDuplicate(TokenList[1])``); refind_conf writes it in that order."""
    _check_text("title", title)
    _check_text("options", options)
    target = f"{image}@@{esp_offset}"
    conf_path = f"::/{ESP_REFIND_CONF}"
    old = runner.run(["mtype", "-i", target, conf_path], env=MTOOLS_ENV, query=True).stdout
    lines = old.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == f'menuentry "{title}" {{'), None)
    end = next((i for i in range(start or 0, len(lines)) if lines[i].strip() == "}"), None)
    opt = next((i for i in range(start or 0, end or 0) if lines[i].strip().startswith("options ")), None)
    if start is None or end is None or opt is None:
        raise InputError(f"refind.conf in {image.name} has no manual stanza {title!r} with an options line",
                         "use the title of a Linux entry labkit wrote")
    lines[opt] = f'    options "{options}"'
    new = "\n".join(lines) + "\n"
    if new == old:
        return new
    return _write_refind_conf(runner, image, target, conf_path, new, work)


def _write_refind_conf(runner: Runner, image: Path, target: str, conf_path: str, new: str,
                       work: Path | None) -> str:
    """Put ``new`` as the image's refind.conf with mtools (plan mode: record the copy) and read it back."""
    if runner.mode is Mode.PLAN:
        runner.run(["mcopy", "-o", "-i", target, "<new refind.conf>", conf_path], env=MTOOLS_ENV)
        return new
    tmp = (work or image.parent) / f".{image.name}.refind.conf"
    atomic_write_text(tmp, new)
    try:
        runner.run(["mcopy", "-o", "-i", target, tmp, conf_path], env=MTOOLS_ENV)
    finally:
        tmp.unlink(missing_ok=True)
    if runner.run(["mtype", "-i", target, conf_path], env=MTOOLS_ENV, query=True).stdout != new:
        raise VerifyFailed(f"refind.conf in {image.name} did not read back as written",
                           "check the ESP with fsck.vfat; rebuild the image")
    return new


def default_selection(runner: Runner, image: Path, esp_offset: int) -> str | None:
    """The title refind.conf in the image currently selects by default."""
    text = runner.run(["mtype", "-i", f"{image}@@{esp_offset}", f"::/{ESP_REFIND_CONF}"],
                      env=MTOOLS_ENV, query=True).stdout
    for ln in text.splitlines():
        if ln.strip().startswith("default_selection"):
            return ln.split(None, 1)[1].strip().strip('"')
    return None

