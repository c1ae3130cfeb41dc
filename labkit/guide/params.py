"""The shared, typed parameters of the notebook chain.

Every notebook has one cell tagged ``parameters`` (papermill injects values after it). The
next cell validates them at once into a :class:`LabkitParams` (``LabkitParams.from_mapping(
globals())``), so a wrong value fails in the first cell with a clear message and its fix.
``labkit run -p key=value``, papermill and the ipywidgets form (:mod:`labkit.guide.widgets`) all fill
the same fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from labkit.core.errors import InputError

TARGETS = ("plan", "lab", "disk")
SYSTEMS = ("alpine", "nixos")
LAYOUT_NAMES = ("seed", "lab")
PACKAGE_SET_NAMES = ("base", "small", "medium", "large", "default")
SIZE_ROLES = ("esp", "nixos_boot", "nix_store", "alpine", "data")


@dataclass(frozen=True)
class LabkitParams:
    """One value per shared notebook parameter (the chain passes each notebook only the ones
    its ``parameters`` cell declares)."""

    target: str = "plan"  # plan: nothing changes; lab: a QEMU disk image; disk: a real device
    run_dir: str = ""  # the run directory (set by `labkit run`)
    layout: str = ""  # seed | lab; empty = lab for target lab, seed otherwise
    device: str = ""  # target disk: /dev/sdX (disk target only)
    fingerprint: str = ""  # the device's fingerprint, typed by the user (never guessed)
    confirmed: bool = False  # the user confirmed the destructive step
    wipe: bool = False  # allow destroying an existing partition table
    sizes: dict[str, str] = field(default_factory=dict)  # e.g. {"nix_store": "64G"}
    boots: int = 1  # measured boots per system (lab)
    systems: tuple[str, ...] = SYSTEMS
    package_set: str = "base"  # guest package set (alpine world / nix store payload)
    memory_mib: int = 512
    hostname: str = "alpinelab"
    interactive: bool = True  # build the widget form (the chain passes False: papermill never waits)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"target {self.target!r} is not one of {', '.join(TARGETS)}",
                             "use target='plan' (show only), 'lab' (QEMU image) or 'disk' (a real device)")
        if self.layout and self.layout not in LAYOUT_NAMES:
            raise InputError(f"layout {self.layout!r} is not one of {', '.join(LAYOUT_NAMES)}",
                             "use layout='seed' (the blog's 120 GB disk) or 'lab' (the 2 GiB image)")
        if self.target == "disk":
            if not self.device.startswith("/dev/"):
                raise InputError(f"target 'disk' needs a device under /dev, got {self.device!r}",
                                 "pick one in the disk table (00_overview / 01_disk) and pass device=/dev/sdX")
            if not self.fingerprint.strip():
                raise InputError(f"target 'disk' needs the fingerprint of {self.device}, typed by you",
                                 "copy it from the disk table after checking it is the right disk")
        if self.fingerprint and not all(c in "0123456789abcdef" for c in self.fingerprint.strip().lower()):
            raise InputError(f"fingerprint {self.fingerprint!r} is not hexadecimal",
                             "copy the 12-character fingerprint from the disk table")
        bad = [k for k in self.sizes if k not in SIZE_ROLES]
        if bad:
            raise InputError(f"sizes names unknown partition(s) {bad}", f"use {', '.join(SIZE_ROLES)}")
        from labkit.core.layout import parse_size

        for v in self.sizes.values():
            parse_size(str(v))
        if not isinstance(self.boots, int) or isinstance(self.boots, bool) or self.boots < 1:
            raise InputError(f"boots={self.boots!r}: at least one boot per system", "use boots=1 or more")
        unknown = [s for s in self.systems if s not in SYSTEMS]
        if unknown or not self.systems:
            raise InputError(f"systems {list(self.systems)!r}", f"choose among {', '.join(SYSTEMS)}")
        if self.package_set not in PACKAGE_SET_NAMES:
            raise InputError(f"package_set {self.package_set!r}", f"choose among {', '.join(PACKAGE_SET_NAMES)}")
        if self.memory_mib < 256:
            raise InputError(f"memory_mib={self.memory_mib}: too small for the guests", "use 256 or more")
        if not self.hostname or not all(c.isalnum() or c == "-" for c in self.hostname):
            raise InputError(f"hostname {self.hostname!r}", "use letters, digits and '-' only")

    # -- derived --------------------------------------------------------------------------------
    @property
    def layout_name(self) -> str:
        return self.layout or ("lab" if self.target == "lab" else "seed")

    @property
    def runner_mode(self) -> str:
        """The :class:`labkit.core.runner.Mode` value: plan records only, lab/disk apply."""
        return "plan" if self.target == "plan" else "apply"

    def as_parameters(self) -> dict[str, Any]:
        """Papermill-ready values (JSON types only: tuples become lists)."""
        d = asdict(self)
        d["systems"] = list(self.systems)
        d["layout"] = self.layout_name
        d["world"] = self.package_set  # the name labkit lab uses
        return d

    def with_values(self, **changes: Any) -> LabkitParams:
        return replace(self, **_coerce_all(changes))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LabkitParams:
        """Pick the known fields out of ``values`` (e.g. a notebook's ``globals()``), coerce, validate."""
        known = {f.name for f in fields(cls)}
        picked = {k: values[k] for k in known if k in values}
        if "world" in values and "package_set" not in values:
            picked["package_set"] = values["world"]
        return cls(**_coerce_all(picked))


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(LabkitParams))


_DEFAULTS = LabkitParams()


def _coerce_all(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: coerce(k, v) for k, v in values.items()}


def coerce(name: str, value: Any) -> Any:
    """Turn ``value`` (possibly a command-line string) into the type of field ``name``."""
    default = getattr(_DEFAULTS, name, None)
    if name not in field_names():
        raise InputError(f"unknown parameter {name!r}", f"known parameters: {', '.join(field_names())}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InputError(f"{name}={value!r} is not a boolean", f"use {name}=true or {name}=false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise InputError(f"{name}={value!r} is not a whole number", f"e.g. {name}={default}") from None
    if isinstance(default, tuple):
        if isinstance(value, str):
            items = [s.strip() for s in value.replace(",", " ").split()]
        else:
            items = [str(s) for s in value]
        return tuple(s for s in items if s)
    if isinstance(default, dict):
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        text = str(value).strip()
        if not text:
            return {}
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = dict(item.split(":", 1) for item in text.split(",") if ":" in item)
        if not isinstance(parsed, dict):
            raise InputError(f"{name}={value!r} is not a mapping", f'e.g. {name}=\'{{"nix_store": "64G"}}\'')
        return {str(k).strip(): str(v).strip() for k, v in parsed.items()}
    return "" if value is None else str(value)


def parse_assignment(text: str) -> tuple[str, str]:
    """``key=value`` from the command line (the value stays a string; coerce later)."""
    if "=" not in text:
        raise InputError(f"-p {text!r} is not key=value", "write e.g. -p target=lab or -p 04_alpine.hostname=box")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError(f"-p {text!r} has no key", "write e.g. -p boots=1")
    return key, value


def parse_loose(value: str) -> Any:
    """A value for a notebook-specific parameter: JSON if it parses (numbers, true, lists), else text."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
