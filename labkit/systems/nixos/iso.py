"""A NixOS installer ISO read without mounting: its loader config (isolinux, else GRUB), the default
entry's kernel, initrd and command line (``init=/nix/store/…/init root=LABEL=…``), extracted with xorriso,
and its checksum against the published ``.sha256``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from labkit.core.download import parse_sha256_file, verify_file
from labkit.core.errors import InputError
from labkit.core.runner import Runner, require_tool
from labkit.systems.nixos.media import NIXOS_MINIMAL

SERIAL_CONSOLE = "console=ttyS0,115200n8"
CONFIG_CANDIDATES = ("/isolinux/isolinux.cfg", "/EFI/boot/grub.cfg", "/EFI/BOOT/grub.cfg", "/boot/grub/grub.cfg")
REHEARSAL_MARKER = "/labkit-rehearsal/INSTALLER"


@dataclass(frozen=True)
class BootConfig:
    kernel: str  # path on the ISO, e.g. /boot/bzImage
    initrd: str
    cmdline: str  # the entry's command line (without the serial console)
    source: str  # which config file it came from

    @property
    def root_label(self) -> str | None:
        m = re.search(r"(?:^|\s)root=LABEL=(\S+)", self.cmdline)
        return m.group(1) if m else None

    @property
    def init(self) -> str | None:
        m = re.search(r"(?:^|\s)init=(\S+)", self.cmdline)
        return m.group(1) if m else None


def parse_isolinux(text: str, source: str = "isolinux.cfg") -> BootConfig:
    """The DEFAULT entry (else the first with LINUX) of an isolinux/syslinux config."""
    default = None
    blocks: list[dict[str, str]] = []
    for raw in text.splitlines():
        parts = raw.strip().split(None, 1)
        if not parts:
            continue
        key, val = parts[0].upper(), (parts[1].strip() if len(parts) > 1 else "")
        if key == "DEFAULT" and not blocks:
            default = val
        elif key == "LABEL":
            blocks.append({"LABEL": val})
        elif blocks and key in ("LINUX", "KERNEL", "APPEND", "INITRD"):
            blocks[-1][key] = val
    usable = [b for b in blocks if "LINUX" in b or "KERNEL" in b]
    if not usable:
        raise InputError(f"{source} has no boot entry with LINUX", "is this a NixOS installer ISO?")
    b = next((b for b in usable if b["LABEL"] == default), usable[0])
    append = b.get("APPEND", "")
    initrd = b.get("INITRD", "")
    extra = [w for w in append.split() if not w.startswith("initrd=")]
    if not initrd:
        initrd = next((w.split("=", 1)[1] for w in append.split() if w.startswith("initrd=")), "")
    if not initrd:
        raise InputError(f"{source}: the entry {b['LABEL']!r} has no INITRD", "is this a NixOS installer ISO?")
    return BootConfig(b.get("LINUX") or b["KERNEL"], initrd.split(",")[0], " ".join(extra), source)


def parse_grub(text: str, source: str = "grub.cfg") -> BootConfig:
    """The first menuentry's ``linux`` and ``initrd`` of a GRUB config (``${var}`` words dropped)."""
    kernel = initrd = None
    args: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("menuentry") and kernel is None:
            depth = 1
            continue
        if depth and line.startswith("}"):
            if kernel:
                break
            depth = 0
        if not depth:
            continue
        words = line.split()
        if words and words[0] in ("linux", "linuxefi") and len(words) > 1:
            kernel, args = words[1], [w for w in words[2:] if not w.startswith("${")]
        elif words and words[0] in ("initrd", "initrdefi") and len(words) > 1:
            initrd = words[1]
    if not kernel or not initrd:
        raise InputError(f"{source} has no menuentry with linux and initrd", "is this a NixOS installer ISO?")
    return BootConfig(kernel, initrd, " ".join(args), source)


@dataclass(frozen=True)
class IsoBootFiles:
    iso: Path
    kernel: Path
    initrd: Path
    config: BootConfig
    rehearsal: dict[str, str] | None  # the rehearsal marker's fields; None: not labkit's rehearsal ISO

    @property
    def append(self) -> str:
        """The command line QEMU passes: the entry's, with the serial console last (it wins)."""
        words = [w for w in self.config.cmdline.split() if not w.startswith("console=ttyS")]
        return " ".join([*words, SERIAL_CONSOLE])

    @property
    def os_id(self) -> str:
        return (self.rehearsal or {}).get("os_id", "nixos")

    @property
    def title(self) -> str:
        return (self.rehearsal or {}).get("title", "NixOS")


def _iso_files(runner: Runner, iso: Path) -> set[str]:
    out = runner.run(["xorriso", "-indev", iso, "-find", "/", "-type", "f"], query=True).stdout
    return {line.strip().strip("'") for line in out.splitlines() if line.strip().startswith("'/")}


def _extract(runner: Runner, iso: Path, pairs: Sequence[tuple[str, Path]]) -> None:
    """Copy files out of the ISO into labkit's own work directory. Marked ``query``: it runs in plan
    mode too, because the plan is read from the ISO's boot config; it writes nothing but there."""
    argv: list[str | Path] = ["xorriso", "-osirrox", "on", "-indev", iso]
    for src, dest in pairs:
        argv += ["-extract", src, dest]
    runner.run(argv, query=True)


def iso_boot_files(runner: Runner, iso: Path, out_dir: Path) -> IsoBootFiles:
    """Read the installer ISO's boot entry and extract its kernel and initrd into ``out_dir``."""
    require_tool("xorriso")
    iso, out_dir = Path(iso), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with runner.step(f"boot files of {iso.name}"):
        files = _iso_files(runner, iso)
        cfg_path = next((c for c in CONFIG_CANDIDATES if c in files), None)
        if cfg_path is None:
            raise InputError(f"{iso} has none of {', '.join(CONFIG_CANDIDATES)}",
                             "give a NixOS installer ISO (nixos-minimal-*-x86_64-linux.iso)")
        names = [(cfg_path, out_dir / "loader.cfg")]
        if REHEARSAL_MARKER in files:
            names.append((REHEARSAL_MARKER, out_dir / "rehearsal-marker"))
        _extract(runner, iso, names)
        text = (out_dir / "loader.cfg").read_text(errors="replace")
        cfg = parse_isolinux(text, cfg_path) if "isolinux" in cfg_path else parse_grub(text, cfg_path)
        missing = [p for p in (cfg.kernel, cfg.initrd) if p not in files]
        if missing:
            raise InputError(f"{iso}: {cfg_path} names {', '.join(missing)}, which the ISO does not hold",
                             "the ISO is damaged or not a NixOS installer; download it again")
        kernel, initrd = out_dir / "kernel", out_dir / "initrd"
        _extract(runner, iso, [(cfg.kernel, kernel), (cfg.initrd, initrd)])
        marker = None
        if (out_dir / "rehearsal-marker").is_file():
            marker = dict(ln.split("=", 1) for ln in (out_dir / "rehearsal-marker").read_text().splitlines()
                          if "=" in ln)
        res = IsoBootFiles(iso, kernel, initrd, cfg, marker)
        runner.note(f"{cfg_path}: kernel {cfg.kernel}, initrd {cfg.initrd}, append {res.append!r}"
                    + (" (labkit rehearsal ISO, not NixOS)" if marker else ""))
    return res


def checked_iso(iso: Path, sha256: str | None = None) -> Path:
    """The ISO, its sha256 checked: ``sha256`` if given, else the ``<iso>.sha256`` file beside it
    (the release's published format, ``<hex>  <name>``)."""
    iso = Path(iso)
    if sha256 is None:
        sidecar = iso.with_name(iso.name + ".sha256")
        if not sidecar.is_file():
            raise InputError(f"no checksum for {iso}: give its sha256, or put the published {sidecar.name} beside it",
                             f"e.g. --nixos-iso-sha256 HEX (from {NIXOS_MINIMAL.sha256_url})")
        sha256 = parse_sha256_file(sidecar.read_text(), iso.name)
    return verify_file(iso, sha256)
