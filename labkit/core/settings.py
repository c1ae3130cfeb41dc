"""One settings table: every parameter of labkit declared once.

Each field of :class:`Settings` carries its type (the annotation), its default, its help, its checks
(choices, minimum, a validator) and where it is used (``scopes``: the ``labkit lab``, ``install`` and
``boot`` commands, the notebooks). From this one declaration come:

- the command-line options (:func:`add_arguments` / :func:`from_args`),
- the notebooks' ``parameters`` cells (:func:`parameters_cell`; a test checks the committed cells are
  exactly what it renders, ``labkit settings --write-notebooks`` rewrites them) and the values papermill
  passes (:meth:`Settings.as_parameters`),
- the widget form (``labkit.guide.widgets``),
- the lab's parameters (``labkit.lab.run`` takes a :class:`Settings`).

Values from strings (the command line, ``labkit run -p key=value``, a widget) go through :func:`coerce`;
:meth:`Settings.validate` runs on every construction, so a wrong value fails at once, naming the
setting and the fix.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path, PurePath
from typing import Any

from labkit.core.errors import InputError
from labkit.core.layout import LAYOUTS, ROLE_KEYS, parse_size
from labkit.core.pkgsets import PACKAGE_SET_NAMES

TARGETS = ("plan", "lab", "disk")
SYSTEMS = ("alpine", "nixos")
ACCELS = ("kvm", "tcg")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")

#: How a whole number / a decimal setting is written (no `1_000`, no `1e3`, no digits of other scripts).
_WHOLE = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})")


@dataclass(frozen=True)
class Meta:
    help: str
    scopes: frozenset[str]
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    cli: str | None = None  # the option name (default: --name-with-dashes)
    aliases: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns a problem, or None
    fix: str = ""


def setting(default: Any, help: str, *scopes: str, choices: Sequence[str] = (), minimum: float | None = None,
            cli: str | None = None, aliases: Sequence[str] = (), check: Callable[[Any], str | None] | None = None,
            fix: str = "") -> Any:
    meta = {"setting": Meta(help, frozenset(scopes), tuple(choices), minimum, cli, tuple(aliases), check, fix)}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)  # only an empty mapping is a default
    return field(default=default, metadata=meta)


def _sha(v: str | None) -> str | None:
    return None if not v or SHA256.fullmatch(v) else f"{v!r} is not a sha256 (64 hex digits)"


def _fingerprint(v: str) -> str | None:
    return None if re.fullmatch(r"[0-9a-fA-F]{0,64}", v.strip()) else f"{v!r} is not hexadecimal"


def _hostname(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", v) else \
        f"{v!r} is not a host name (letters, digits and inner '-', at most 63)"


def _sizes(v: Mapping[str, str]) -> str | None:
    bad = [k for k in v if k not in ROLE_KEYS]
    if bad:
        return f"unknown partition(s) {bad}: use {', '.join(ROLE_KEYS)}"
    for s in v.values():
        parse_size(str(s))
    return None


def _device(v: str) -> str | None:
    return None if not v or v.startswith("/dev/") else f"{v!r} is not a device under /dev"


def _media(v: str) -> str | None:
    return None if not v or re.fullmatch(r"[a-z][a-z0-9]*", v) else \
        f"{v!r} is not a kernel partition name (like sda4, nvme0n1p4, vda4)"


def _load_memory(v: int) -> str | None:
    return None if v == 0 or v >= 256 else f"{v} MiB is too little for a guest"


# Scopes: "lab" (labkit lab), "install" (labkit install), "boot" (labkit boot), "nb" (the notebooks).
@dataclass(frozen=True)
class Settings:
    """Every setting once; see the module docstring."""

    # -- where and how ------------------------------------------------------------------------------
    target: str = setting("plan", "plan: show every command, change nothing | lab: the QEMU disk image | "
                          "disk: a real device", "nb", choices=TARGETS)
    run_dir: str = setting("", "the run directory (set by `labkit run`; empty: the current directory)", "nb")
    layout: str = setting("", "seed (the post's 120 GB disk) | lab (the 2 GiB lab disk); empty: lab for the lab "
                          "target, seed otherwise", "nb", "install", choices=("", *LAYOUTS))
    device: str = setting("", "the target disk (disk target), e.g. /dev/sdb — see `labkit disks`", "nb", "install",
                          check=_device, fix="pick a whole disk from `labkit disks`, e.g. /dev/sdb")
    fingerprint: str = setting("", "that disk's fingerprint, typed by you from `labkit disks` (never guessed)", "nb",
                               "install", cli="--confirm", check=_fingerprint,
                               fix="copy the 12-character fingerprint from the disk table")
    wipe: bool = setting(False, "ERASE the disk's partitions when they are not labkit's layout", "nb", "install")
    allow_removable: bool = setting(False, "allow a removable disk (USB stick)", "nb", "install")
    sizes: dict[str, str] = setting({}, "partition sizes, e.g. nix_store=64G (ROLE=SIZE)", "nb", "install",
                                    cli="--size", check=_sizes, fix="e.g. --size nix_store=64G")
    systems: tuple[str, ...] = setting(SYSTEMS, "the systems to install and measure", "nb", "lab", "install",
                                       choices=SYSTEMS)
    package_set: str = setting("default", "package set (the rehearsal guests' payloads; see `labkit layout`)", "nb",
                               "lab", "install", choices=PACKAGE_SET_NAMES, aliases=("--world",))
    hostname: str = setting("alpinelab", "Alpine's host name (the apkovl is <hostname>.apkovl.tar.gz)", "nb",
                            "install", check=_hostname, fix="letters, digits and '-' only")
    out: str = setting("", "the run folder (new or empty; default: a new runs/<run-id>)", "lab", "install", "boot")
    cache_dir: str = setting("", "the download cache (default: $LABKIT_CACHE or ~/.cache/labkit)", "lab", "install")
    interactive: bool = setting(True, "build the widget form (labkit run passes False: papermill never waits)", "nb")
    # -- the lab's boots ------------------------------------------------------------------------------
    boots: int = setting(3, "measured boots per system", "nb", "lab", minimum=1)
    # 0: since the built image is synced to disk before its first boot, a first boot ran like the others
    # (2026-12-01, run 20261201-192007: warm-up 47.6 s vs measured 45.9-52.6 s total to probe, Alpine-style;
    # 33.8 vs 29.8-39.4 s, NixOS-style); the setting stays for hosts where it does not
    warmup: int = setting(0, "warm-up boots per system (reported, left out of the statistics)", "nb", "lab",
                          minimum=0)
    max_boots: int = setting(0, "adaptive cap per system while the spread stays high (0: boots + 2)", "lab",
                             minimum=0)
    spread_threshold: float = setting(0.05, "MAD/median of the total boot time above which another round is "
                                      "booted", "lab", minimum=0.0)
    memory_mib: int = setting(512, "guest RAM in MiB", "nb", "lab", "boot", cli="--memory", minimum=256)
    # 300 s: the rehearsal guests run real OpenRC / systemd, ~90 s to the bundle under TCG on a loaded 2-core
    # host; the lab stops at the bundle's END line, so the limit only bounds a boot that hangs
    boot_timeout_s: float = setting(300.0, "hard limit per boot in seconds", "lab", "boot", cli="--boot-timeout",
                                    minimum=1.0)
    accel: tuple[str, ...] = setting(ACCELS, "accelerators to try in order (a real smoke boot picks one)", "lab",
                                     "boot", choices=ACCELS)
    report: bool = setting(True, "render the HTML report", "lab")
    keep_image: bool = setting(False, "keep work/disk.img after the run", "lab")
    load_cost: bool = setting(True, "boot the Alpine-style guest with each load-cost package set and fit the load "
                              "cost", "nb", "lab")
    # two sets: the per-MiB cost comes from the largest set's per-package points (up to its 283 MiB package), the
    # base system's boot checks the boot totals' line; each more set costs a boot (~30 s under TCG)
    load_sets: tuple[str, ...] = setting(("base", "xlarge"), "package sets of the load-cost experiment "
                                         "(the base system to past the post's Firefox case)", "nb", "lab",
                                         choices=PACKAGE_SET_NAMES)
    load_memory_mib: int = setting(0, "RAM of every load-cost boot in MiB (0: enough for the largest set's tmpfs "
                                   "root)", "lab", cli="--load-memory", minimum=0, check=_load_memory,
                                   fix="use 0 (automatic) or at least 256")
    load_top_boots: int = setting(2, "boots of the largest load-cost set at least (the per-MiB cost's interval "
                                  "rests on them; more while it is wide, up to load_top_max)", "lab", minimum=1)
    load_top_max: int = setting(6, "cap on the largest set's boots while the per-MiB cost's 95 % interval is "
                                "wider than ±25 % (a busy host)", "lab", minimum=1)
    # 0: the load-cost boots' spread here follows the hypervisor's steal, not their order (2026-12-01: the first of
    # four boots of one fresh image loaded fastest, 21.1 s vs 25.0-25.2 s)
    load_warmup: int = setting(0, "warm-up boots of the largest load-cost set's image before its measured boots "
                               "(in boots.csv, left out of the fit)", "lab", minimum=0)
    load_redo: int = setting(1, "per load-cost set: boots again after a boot under host load (not when the load "
                             "is persistent)", "lab", minimum=0)
    boot_check: bool = setting(True, "lab target: boot the image once after the phase", "nb")
    # -- the benchmark matrix (labkit matrix; 05_benchmark) --------------------------------------------------
    grid: dict[str, str] = setting({}, "a benchmark matrix: lab setting -> its values, e.g. {'memory_mib': "
                                   "'384,512'}; one lab run per combination, on Dask (empty: one lab run)", "nb")
    scheduler: str = setting("", "the matrix's Dask scheduler, tcp://HOST:8786 (empty: a local cluster, one boot "
                             "at a time)", "nb")
    # -- real media -------------------------------------------------------------------------------------
    alpine_iso: str = setting("", "an Alpine ISO to take Alpine from (checksum-checked, extracted without "
                              "mounting); empty: the Alpine-style rehearsal", "nb", "lab", "install")
    alpine_rootfs: str = setting("", "the official Alpine minirootfs (alpine-minirootfs-3.20.3-x86_64.tar.gz, "
                                 "sha512-checked) whose apk-tools installs the Alpine-style rehearsal's packages; "
                                 "empty: $LABKIT_ALPINE_ROOTFS, a cached copy, or a download from Alpine; without any, "
                                 "labkit's own package install (labelled)", "lab", "install")
    alpine_iso_sha256: str = setting("", "its published sha256 (empty: the .sha256 file beside it)", "nb", "lab",
                                     "install", check=_sha)
    alpine_world: tuple[str, ...] = setting((), "Alpine packages for the apkovl's world (with an ISO)", "nb", "lab",
                                            "install")
    alpine_media: str = setting("", "the Alpine partition's kernel name where the disk boots (sda4, nvme0n1p4; "
                                "empty: the device's own, vda4 in the lab)", "nb", "install", check=_media)
    alpine_root_password_hash_file: str = setting(
        "", "a real disk: a file holding root's crypt(3) hash for the Alpine installed there (openssl passwd -6 > "
        "FILE); never the hash itself", "nb", "install")
    alpine_ssh_keys: tuple[str, ...] = setting(
        (), "a real disk: OpenSSH public keys (or .pub files) for Alpine's root (openssh joins the world: the "
        "extended ISO carries it)", "nb", "install", cli="--alpine-ssh-key")
    nixos_iso: str = setting("", "a NixOS installer ISO: install over the serial console in the lab", "lab")
    nixos_iso_sha256: str = setting("", "its published sha256 (empty: the .sha256 file beside it)", "lab", check=_sha)
    nixos_ssh_keys: tuple[str, ...] = setting((), "OpenSSH public keys (or .pub files) for the installed NixOS user",
                                              "lab", cli="--nixos-ssh-key")
    nixos_hashed_password_file: str = setting("", "a file holding the NixOS user's yescrypt/SHA-512 hash "
                                              "(mkpasswd); never the hash itself", "lab")
    nixos_install_memory_mib: int = setting(2048, "memory of the NixOS installer VM", "lab",
                                            cli="--nixos-install-memory", minimum=512)
    nixos_install_timeout_s: float = setting(3600.0, "hard limit of the NixOS install", "lab", minimum=1.0)

    def __post_init__(self) -> None:
        for f in fields(self):  # paths given as Path, lists given for tuples: stored as the table's type
            value = getattr(self, f.name)
            if isinstance(value, PurePath):
                object.__setattr__(self, f.name, str(value))
            elif isinstance(value, list) and kind(f.name) is tuple:
                object.__setattr__(self, f.name, tuple(value))
            elif value is None and kind(f.name) is str:
                object.__setattr__(self, f.name, "")
        self.validate()

    # -- checks ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name), f.metadata["setting"])
        if self.target == "disk":
            if not self.device:
                raise InputError("the disk target needs a device", "pick one in the disk table: device=/dev/sdX")
            if not self.fingerprint.strip():
                raise InputError(f"the disk target needs the fingerprint of {self.device}, typed by you",
                                 "copy it from the disk table after checking it is the right disk")
        if not self.systems:
            raise InputError("no system chosen", f"choose among {', '.join(SYSTEMS)}")
        if self.alpine_world and not self.alpine_iso:
            raise InputError("alpine_world names Alpine packages: it needs an Alpine ISO",
                             "give alpine_iso, or choose the rehearsal's package_set instead")
        if self.alpine_iso and "alpine" not in self.systems:
            raise InputError("an Alpine ISO is given but alpine is not among the systems", "add alpine to systems")
        if self.nixos_iso and "nixos" not in self.systems:
            raise InputError("a NixOS ISO is given but nixos is not among the systems", "add nixos to systems")
        if self.nixos_iso and not self.nixos_ssh_keys and not self.nixos_hashed_password_file:
            raise InputError("the installed NixOS would have no way in (no password hash and no SSH key)",
                             "give --nixos-ssh-key KEY or --nixos-hashed-password-file FILE")

    def validate_lab(self) -> None:
        """What ``labkit lab`` needs beyond the per-setting checks (files exist, enough load sets)."""
        from labkit.core.pkgsets import rehearsal_payloads

        for name in ("alpine_iso", "nixos_iso", "nixos_hashed_password_file"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                option = meta(name).cli or "--" + name.replace("_", "-")
                raise InputError(f"{name} ({option}) {value} does not exist",
                                 f"give the path of an existing file to {option}")
        sizes = {tuple(rehearsal_payloads(s)) for s in self.load_sets}
        if self.load_cost and "alpine" in self.systems and not self.alpine_iso:
            if len(sizes) < 2:
                raise InputError(f"the load-cost fit needs at least 2 different package sets (have {len(sizes)})",
                                 "use e.g. --load-sets base,xlarge, or --no-load-cost")
            # one boot per set, load_top_boots of the largest: the boot totals' line needs 3 points
            if len(sizes) - 1 + self.load_top_boots < 3:
                raise InputError(
                    f"the load-cost fit needs at least 3 boots: {len(sizes)} package sets with load_top_boots="
                    f"{self.load_top_boots} give {len(sizes) - 1 + self.load_top_boots}",
                    "use --load-top-boots 2 (or more), or one more set in --load-sets")

    # -- derived -----------------------------------------------------------------------------------------
    @property
    def layout_name(self) -> str:
        return self.layout or ("lab" if self.target == "lab" else "seed")

    @property
    def world(self) -> str:  # the package set's older name (labkit lab --world)
        return self.package_set

    @property
    def accel_candidates(self) -> tuple[str, ...]:
        return self.accel

    @property
    def boot_cap(self) -> int:
        return self.boots + 2 if not self.max_boots else max(self.max_boots, self.boots)

    def path(self, name: str) -> Path | None:
        value = getattr(self, name)
        return Path(value) if value else None

    def with_values(self, **changes: Any) -> Settings:
        return replace(self, **{k: coerce(k, v) for k, v in changes.items()})

    def as_record(self) -> dict[str, object]:
        """For environment.json and chain.json (secrets are file paths, never their content)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def as_parameters(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        """Papermill-ready values (JSON types) of ``names`` (default: all)."""
        rec = self.as_record()
        rec["layout"] = self.layout_name
        return {k: rec[k] for k in (names if names is not None else rec)}

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Settings:
        """Pick the known settings out of ``values`` (e.g. a notebook's ``globals()``), coerce, validate."""
        known = names()
        picked = {k: coerce(k, values[k]) for k in known if k in values}
        if "world" in values and "package_set" not in values:
            picked["package_set"] = coerce("package_set", values["world"])
        return cls(**picked)


Lab = Settings  # what `labkit lab` takes (the same table)


def names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Settings))


def meta(name: str) -> Meta:
    for f in fields(Settings):
        if f.name == name:
            return typing.cast(Meta, f.metadata["setting"])
    raise InputError(f"unknown setting {name!r}", f"known settings: {', '.join(names())}")


def default(name: str) -> Any:
    for f in fields(Settings):
        if f.name == name:
            return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc,operator]
    raise InputError(f"unknown setting {name!r}", f"known settings: {', '.join(names())}")


def kind(name: str) -> type:
    hints = typing.get_type_hints(Settings)
    t = hints[name]
    origin = typing.get_origin(t)
    if origin in (tuple, dict):
        return origin  # type: ignore[return-value]
    if origin in (types.UnionType, typing.Union):
        return next(a for a in typing.get_args(t) if a is not type(None))  # type: ignore[no-any-return]
    return t  # type: ignore[no-any-return]


def _check(name: str, value: Any, m: Meta) -> None:
    fix = m.fix or (f"choose among {', '.join(c or repr(c) for c in m.choices)}" if m.choices else m.help)
    if m.choices:
        values = value if isinstance(value, tuple) else (value,)
        bad = [v for v in values if v not in m.choices]
        if bad:
            allowed = ", ".join(c or "(empty)" for c in m.choices)
            raise InputError(f"{name}: {', '.join(map(repr, bad))} is not one of {allowed}", fix)
    if m.minimum is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                  or not math.isfinite(value) or value < m.minimum):
        raise InputError(f"{name}={value!r}: must be a number of at least {m.minimum:g}",
                         f"e.g. {name}={default(name)}")
    if m.check is not None:
        try:
            problem = m.check(value)
        except InputError as exc:  # a parser inside the check (sizes): say which setting it was
            raise InputError(f"{name}: {exc.problem}", exc.fix or fix) from None
        if problem:
            raise InputError(f"{name}: {problem}", fix)


# -- strings to values -----------------------------------------------------------------------------------
def coerce(name: str, value: Any) -> Any:
    """``value`` (possibly a command-line string) as the type of setting ``name``."""
    t = kind(name)
    if t is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InputError(f"{name}={value!r} is not true or false", f"write {name}=true or {name}=false")
    if t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # ASCII digits only: Python's int() would also take "1_000" and other scripts' digits
        if not _WHOLE.fullmatch(str(value).strip()):
            raise InputError(f"{name}={value!r} is not a whole number", f"e.g. {name}={default(name)}")
        return int(str(value).strip())
    if t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif _DECIMAL.fullmatch(str(value).strip()):
            number = float(str(value).strip())
        else:
            raise InputError(f"{name}={value!r} is not a number", f"e.g. {name}={default(name)}")
        if not math.isfinite(number) or abs(number) > 1e12:
            raise InputError(f"{name}={value!r} is not a usable number", f"e.g. {name}={default(name)}")
        return number
    if t is tuple:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise InputError(f"{name}={value!r} is not a list", f'e.g. {name}=a,b or \'["a", "b"]\'') from None
            else:
                return tuple(s for s in (x.strip() for x in text.replace(",", " ").split()) if s)
        return tuple(str(s) for s in value if str(s))
    if t is dict:
        if isinstance(value, Mapping):
            return {str(k).strip(): str(v).strip() for k, v in value.items()}
        items = value if isinstance(value, list | tuple) else [value]
        out: dict[str, str] = {}
        for item in items:
            text = str(item).strip()
            if not text:
                continue
            if text.startswith("{"):
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError:
                    raise InputError(f"{name}={text!r} is not a mapping", f'e.g. {name}=nix_store=64G') from None
                out.update({str(k): str(v) for k, v in parsed.items()})
                continue
            for part in text.split(","):
                key, sep, val = part.partition("=")
                if not sep:
                    key, sep, val = part.partition(":")
                if not sep or not key.strip():
                    raise InputError(f"{name}: {part!r} is not ROLE=SIZE", f"e.g. {name}=nix_store=64G")
                out[key.strip()] = val.strip()
        return out
    return "" if value is None else str(value)


# -- the command line ------------------------------------------------------------------------------------
def add_arguments(parser: Any, scope: str, *, skip: Sequence[str] = ()) -> None:
    """One option per setting of ``scope`` (argparse), help and default from the table."""
    import argparse

    for f in fields(Settings):
        m: Meta = f.metadata["setting"]
        if scope not in m.scopes or f.name in skip:
            continue
        opt = m.cli or "--" + f.name.replace("_", "-")
        t = kind(f.name)
        d = default(f.name)
        shown = ",".join(d) if isinstance(d, tuple) else d
        # argparse %-formats help strings: a '%' of the table's text (50%, ±25 %) is written '%%'
        help_ = f"{m.help} (default: {shown if shown not in ('', {}, ()) else 'none'})".replace("%", "%%")
        if t is bool:
            parser.add_argument(opt, *m.aliases, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_)
        elif t in (tuple, dict):
            parser.add_argument(opt, *m.aliases, dest=f.name, action="extend", nargs="+", default=None,
                                metavar="VALUE", help=help_ + " (several values, or comma separated)")
        else:
            parser.add_argument(opt, *m.aliases, dest=f.name, default=None, metavar=f.name.upper(), help=help_)


def from_args(args: Any, scope: str, **fixed: Any) -> Settings:
    """The settings an argparse namespace holds for ``scope`` (options left out keep the table's default)."""
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if scope not in f.metadata["setting"].scopes:
            continue
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if kind(f.name) is tuple and isinstance(v, list):
            v = tuple(x for item in v for x in coerce(f.name, item))
        values[f.name] = coerce(f.name, v)
    values.update(fixed)
    return Settings(**values)


# -- the notebooks -----------------------------------------------------------------------------------------
_COMMON = ("target", "run_dir", "layout", "device", "fingerprint", "interactive")
#: The settings each notebook declares in its parameters cell (and the widget form shows).
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "00_overview": (*_COMMON, "systems", "package_set"),
    "01_disk": (*_COMMON, "wipe", "allow_removable", "sizes"),
    "02_refind": (*_COMMON, "systems", "boot_check"),
    "03_nixos": (*_COMMON, "package_set", "boot_check"),
    "04_alpine": (*_COMMON, "package_set", "hostname", "alpine_iso", "alpine_iso_sha256", "alpine_world",
                  "alpine_media", "alpine_root_password_hash_file", "alpine_ssh_keys", "boot_check"),
    "05_benchmark": ("target", "run_dir", "device", "fingerprint", "systems", "boots", "warmup", "package_set",
                     "memory_mib", "load_cost", "load_sets", "grid", "scheduler", "interactive"),
    "06_report": ("run_dir",),
}


#: Notebooks whose parameters cell is not generated yet (03 still declares its NixOS settings itself).
OWN_CELL: frozenset[str] = frozenset({"03_nixos"})


def parameters_cell(notebook: str, extra: Mapping[str, tuple[Any, str]] | None = None) -> str:
    """The ``parameters`` cell of ``notebook``, rendered from the table: one ``name = default  # help`` line
    per setting (papermill reads it; its comment never holds an ``=``), then the notebook's own ``extra``."""
    lines = ["# Parameters: generated from labkit.core.settings (labkit settings --write-notebooks); "
             "`labkit run -p` and the form set them"]
    for name in NOTEBOOKS[notebook]:
        lines.append(f"{name} = {_literal(default(name))}  # {_comment(meta(name).help)}")
    for name, (value, help_) in (extra or {}).items():
        lines.append(f"{name} = {_literal(value)}  # {_comment(help_)}")
    return "\n".join(lines)


def _literal(value: Any) -> str:
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)


def _comment(text: str) -> str:
    return text.replace("=", " is ")
