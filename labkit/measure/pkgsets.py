"""Package sets declared once, mapped to each distribution's names, so both systems are compared
with the same programs installed.

A set is a list of *programs* (roles such as the seed's desktop: IceWM, a file manager, Sylpheed,
Dillo). Each program maps to an Alpine package name and a nixpkgs attribute. The offline rehearsal
guests cannot install those programs; each set maps to a Debian payload set of growing size
(``labkit.rehearsal.payloads.PACKAGE_SETS``) instead, which both rehearsal guests install.
"""

from __future__ import annotations

from dataclasses import dataclass

from labkit.core.errors import InputError
from labkit.systems.alpine import apkindex


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

#: Alpine packages the X desktop needs on Alpine (NixOS gets them from services.xserver).
ALPINE_X_BASE: tuple[str, ...] = tuple(p for p in apkindex.PACKAGE_SETS["dillo"] if p not in ("alpine-base", "dillo"))


@dataclass(frozen=True)
class PackageSet:
    name: str
    programs: tuple[str, ...]  # roles, keys of PROGRAMS
    rehearsal: str  # the Debian payload set the rehearsal guests install instead
    alpine_predictor: str  # the matching set of labkit.systems.alpine.apkindex.PACKAGE_SETS

    @property
    def alpine(self) -> tuple[str, ...]:
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


_DESKTOP = ("window manager", "file manager", "mail client", "light browser")
SETS: dict[str, PackageSet] = {s.name: s for s in (
    PackageSet("base", (), "small", "base"),
    PackageSet("desktop", _DESKTOP, "medium", "sylpheed"),
    PackageSet("firefox", (*_DESKTOP, "browser"), "large", "firefox"),
)}


def package_set(name: str) -> PackageSet:
    if name not in SETS:
        raise InputError(f"unknown package set {name!r}", f"choose one of {', '.join(SETS)}")
    return SETS[name]


def mapping_table() -> list[dict[str, str]]:
    """One row per set × program: the names each side installs (for the report)."""
    rows = []
    for s in SETS.values():
        for role in s.programs or ("(base system only)",):
            p = PROGRAMS.get(role)
            rows.append({"set": s.name, "program": role, "alpine": p.alpine if p else "alpine-base",
                         "nixpkgs": p.nixpkgs if p else "(base system)", "rehearsal payload set": s.rehearsal})
    return rows
