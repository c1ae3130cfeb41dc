"""Package sets, declared once: name → the programs, their Alpine packages, their nixpkgs attributes, and
the Debian payload the offline rehearsal guests carry instead.

A set is a list of *programs* (the seed's lightweight desktop: IceWM, a file manager, Sylpheed, Dillo;
Firefox as the post's "too heavy" case). Each program maps to an Alpine package name and a nixpkgs
attribute, so both systems are compared with the same programs installed. The rehearsal guests cannot
install those programs offline: each set names the Debian packages (installed on the host by labkit's
setup) whose files the rehearsal guests load instead, of growing size. Every place that says "package
set" — the settings, the lab, the rehearsal guests, the Alpine world predictor, the report — reads this
table.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.core.errors import InputError


@dataclass(frozen=True)
class Program:
    role: str
    alpine: str  # Alpine package name (apk add)
    nixpkgs: str  # nixpkgs attribute (environment.systemPackages = with pkgs; [ ... ])


PROGRAMS: dict[str, Program] = {p.role: p for p in (
    Program("window manager", "icewm", "icewm"),
    Program("file manager", "pcmanfm", "pcmanfm"),
    Program("mail client", "sylpheed", "sylpheed"),
    Program("light browser", "dillo", "dillo"),
    Program("browser", "firefox", "firefox"),
)}

#: Alpine packages an X desktop needs on Alpine (NixOS gets them from services.xserver).
ALPINE_X_BASE: tuple[str, ...] = ("xorg-server", "xinit", "xf86-input-libinput", "xf86-video-fbdev", "font-dejavu",
                                  "eudev")

_SMALL = (  # ~6 MiB installed: partitioning + filesystem tools
    "gdisk", "libpopt0", "libuuid1", "dosfstools", "mtools", "e2fsprogs", "libext2fs2", "libcom-err2",
    "libss2", "xorriso", "libisoburn1", "libburn4", "libisofs6",
)
_MEDIUM = (*_SMALL, "cpio", "zstd", "libzstd1", "refind", "ovmf")  # ~29 MiB
_LARGE = (*_MEDIUM, "grub-efi-amd64-bin", "shellcheck", "libgmp10", "libffi8")  # ~66 MiB
#: ~384 MiB: the load-cost experiment reaches past the post's Firefox case (200-400 MB = 191-381 MiB). Chromium
#: and util-linux are installed by ./run's APT_PACKAGES; chromium is one 283 MiB package, like Firefox's own large
#: libxul and omni.ja.
_XLARGE = (*_MEDIUM, "util-linux", "chromium-common", "chromium")
_DESKTOP = ("window manager", "file manager", "mail client", "light browser")


@dataclass(frozen=True)
class PackageSet:
    name: str
    programs: tuple[str, ...]  # roles, keys of PROGRAMS
    rehearsal: tuple[str, ...]  # Debian packages the rehearsal guests carry instead (busybox-static always)
    about: str

    @property
    def alpine(self) -> tuple[str, ...]:
        """The Alpine world: alpine-base, the X base when there is a program, the programs."""
        names = [PROGRAMS[r].alpine for r in self.programs]
        return ("alpine-base", *(ALPINE_X_BASE if names else ()), *names)

    @property
    def nixpkgs(self) -> tuple[str, ...]:
        return tuple(PROGRAMS[r].nixpkgs for r in self.programs)

    def nixos_snippet(self) -> str:
        """The NixOS configuration lines that install the same programs."""
        pkgs = " ".join(self.nixpkgs)
        x = "  services.xserver.enable = true;\n  services.xserver.windowManager.icewm.enable = true;\n" \
            if "window manager" in self.programs else ""
        return f"{x}  environment.systemPackages = with pkgs; [ {pkgs} ];\n"


SETS: dict[str, PackageSet] = {s.name: s for s in (
    PackageSet("base", (), (), "the base system only"),
    PackageSet("small", ("light browser",), _SMALL, "Dillo on X"),
    PackageSet("medium", _DESKTOP, _MEDIUM, "the post's desktop: IceWM, PCManFM, Sylpheed, Dillo"),
    PackageSet("large", (*_DESKTOP, "browser"), _LARGE, "the desktop and Firefox (the post's too-heavy case)"),
    PackageSet("xlarge", (*_DESKTOP, "browser"), _XLARGE,
               "the desktop and Firefox, with a rehearsal payload the size of Firefox's 200-400 MB (chromium): the "
               "far end of the load-cost experiment"),
)}
#: Other names of the same sets.
ALIASES: dict[str, str] = {"default": "medium", "desktop": "medium", "dillo": "small", "sylpheed": "medium",
                            "firefox": "large"}
PACKAGE_SET_NAMES: tuple[str, ...] = (*SETS, *ALIASES)


def package_set(name: str) -> PackageSet:
    key = ALIASES.get(name, name)
    if key not in SETS:
        raise InputError(f"unknown package set {name!r}", f"choose one of {', '.join(PACKAGE_SET_NAMES)}")
    return SETS[key]


def rehearsal_payloads(name: str) -> tuple[str, ...]:
    return package_set(name).rehearsal


def mapping_table() -> list[dict[str, str]]:
    """One row per set × program: the names each side installs (for the report)."""
    rows = []
    for s in SETS.values():
        for role in s.programs or ("(base system only)",):
            p = PROGRAMS.get(role)
            rows.append({"set": s.name, "program": role, "alpine": p.alpine if p else "alpine-base",
                         "nixpkgs": p.nixpkgs if p else "(base system)",
                         "rehearsal payload": f"{len(s.rehearsal)} Debian packages"})
    return rows
