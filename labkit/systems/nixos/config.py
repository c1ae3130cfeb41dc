"""The NixOS configuration as typed settings, rendered to a NixOS module (``labkit.nix``).

The module gives the machine a tmpfs ``/`` (``size=``, ``mode=755``), ``/nix`` and ``/data`` on
disk (``neededForBoot``), GRUB for EFI on ``/boot/efi`` without touching the EFI variables (rEFInd
stays first), immutable users with a checked password hash and/or SSH keys, the configuration
kept on ``/data``, optional impermanence and home-manager, and the probe as a systemd unit that
runs once the boot is finished.

:func:`check_settings` rejects the inputs that lock a machine out or cannot boot; every error
names the problem and the fix.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from labkit.core.errors import InputError
from labkit.core.files import read_user_text
from labkit.core.layout import LAB_LAYOUT, Layout, Role, human, parse_size
from labkit.systems.nixos.hashes import check_hash
from labkit.systems.nixos.nixexpr import Apply, Raw, render

DATA_CONFIG_DIR = "/data/etc/nixos"
MODULE_NAME = "labkit.nix"
PROBE_NAME = "labkit-probe.sh"
IMPERMANENCE_REPO = "nix-community/impermanence"
HOME_MANAGER_REPO = "nix-community/home-manager"
_SHA256_RE = re.compile(r"^(?:sha256-[A-Za-z0-9+/]{43}=|[0-9a-df-np-sv-z]{52}|[0-9a-f]{64})$")
_REV_RE = re.compile(r"^[0-9a-f]{40}$")


class NeedsUserInput(InputError):
    """A setting only the user can give (a way to log in, a pinned revision): in plan mode a finding,
    in apply mode a refusal."""


@dataclass(frozen=True)
class Pin:
    """A fixed revision of a GitHub repository and the NAR hash of its unpacked archive, as
    ``builtins.fetchTarball { url; sha256; }`` checks it (the hash ``nix-prefetch-url --unpack URL`` prints,
    or a flake.lock narHash for the same revision)."""

    repo: str  # owner/name
    rev: str  # a 40-hex commit: a branch name would move away from its hash
    sha256: str  # SRI (sha256-...=), nix base32 (52) or hex (64)

    @property
    def url(self) -> str:
        return f"https://github.com/{self.repo}/archive/{self.rev}.tar.gz"

    @classmethod
    def parse(cls, repo: str, text: str, what: str) -> Pin:
        """``"<commit> <sha256>"`` (a notebook parameter) → a checked pin."""
        parts = text.split()
        if len(parts) != 2:
            raise InputError(f"the {what} pin {text!r} is not '<commit> <sha256>'",
                             f"write the commit and the hash nix-prefetch-url --unpack prints for "
                             f"https://github.com/{repo}/archive/<commit>.tar.gz, separated by a blank")
        return cls(repo, parts[0], parts[1]).check(what)

    def check(self, what: str) -> Pin:
        if not _REV_RE.match(self.rev):
            raise InputError(f"the {what} pin's revision {self.rev!r} is not a 40-hex commit",
                             "pin a commit, not a branch or tag (a branch moves and its hash stops matching)")
        if not _SHA256_RE.match(self.sha256):
            raise InputError(f"the {what} pin's hash {self.sha256!r} is not a sha256 (SRI sha256-…=, 52 base32 or "
                             "64 hex characters)", f"run: nix-prefetch-url --unpack {self.url}")
        return self


#: home-manager per NixOS release (its release-YY.MM branch follows the nixos-YY.MM channel; the module checks the
#: match, modules/home-environment.nix enableNixpkgsReleaseCheck). Each hash was published in a third-party
#: flake.lock (narHash) and recomputed here as the NAR hash of `git archive <rev>` (nix hash path): both agree.
#:  - 24.05: 2f23fa30, head of release-24.05 (2024-09-22, the branch is frozen).
#:  - 24.11: 2777de38, on release-24.11 (2024-11-24); no published hash was found for the branch's later head.
HOME_MANAGER_PINS: dict[str, Pin] = {
    "24.05": Pin(HOME_MANAGER_REPO, "2f23fa308a7c067e52dfcc30a0758f47043ec176",
                 "sha256-Vl+WVTJwutXkimwGprnEtXc/s/s8sMuXzqXaspIGlwM="),
    "24.11": Pin(HOME_MANAGER_REPO, "2777de38dd20826238712c8fdaac3e960773e43a",
                 "sha256-HeFye2mgoBZWtRLMSwGxdNabB4haWeWw2mS+hDF0mTo="),
}
#: impermanence has no release branches and no published hash was found for any of its revisions: the user
#: pins it (labkit never invents a hash).
IMPERMANENCE_PINS: dict[str, Pin] = {}

#: How a password hash is shown wherever labkit displays settings or the module.
REDACTED = "<redacted password hash>"


_MEMTOTAL_RE = re.compile(r"MemTotal:\s+([0-9]{1,15})\s+kB")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_TMPFS_RE = re.compile(r"^(?:[0-9]+[kKmMgG]?|[0-9]{1,3}%)$")
_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
              "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


@dataclass(frozen=True, repr=False)
class User:
    """The one login user (in ``wheel``); root gets no password (``nixos-install --no-root-passwd``).

    ``repr`` never shows the password hash (notebooks display settings objects)."""

    name: str = "lab"
    hashed_password: str | None = None
    ssh_keys: tuple[str, ...] = ()

    def __repr__(self) -> str:
        shown = None if self.hashed_password is None else REDACTED
        return f"User(name={self.name!r}, hashed_password={shown}, ssh_keys={self.ssh_keys!r})"


@dataclass(frozen=True)
class Devices:
    """Where the partitions are found at boot (by filesystem label, from the disk layout)."""

    esp: str = "/dev/disk/by-label/ESP"
    boot: str = "/dev/disk/by-label/nixboot"
    nix: str = "/dev/disk/by-label/nix"
    data: str = "/dev/disk/by-label/data"

    @classmethod
    def from_layout(cls, layout: Layout) -> Devices:
        def by_label(role: Role) -> str:
            return f"/dev/disk/by-label/{layout.partition(role).label}"

        return cls(by_label(Role.ESP), by_label(Role.NIXOS_BOOT), by_label(Role.NIX_STORE), by_label(Role.DATA))


@dataclass(frozen=True)
class NixosSettings:
    user: User = field(default_factory=User)
    hostname: str = "labkit-nixos"
    tmpfs_size: str = "2G"  # tmpfs `size=`: bytes with k/m/g suffix, or a percentage of RAM
    devices: Devices = field(default_factory=lambda: Devices.from_layout(LAB_LAYOUT))
    serial_console: bool = True
    probe: bool = True
    impermanence: bool = False
    home_manager_user: str | None = None
    state_version: str = "24.11"
    config_dir: str = DATA_CONFIG_DIR  # on the installed system
    #: None: the verified pin for state_version, if labkit knows one (else the render is refused)
    impermanence_pin: Pin | None = None
    home_manager_pin: Pin | None = None

    def pin(self, what: str) -> Pin | None:
        """The pin used for ``impermanence`` or ``home-manager`` (the user's, else a verified one, else None)."""
        if what == "impermanence":
            return self.impermanence_pin or IMPERMANENCE_PINS.get(self.state_version)
        return self.home_manager_pin or HOME_MANAGER_PINS.get(self.state_version)


# -- validation ----------------------------------------------------------------------------------

def mem_total_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """``MemTotal`` of ``/proc/meminfo`` (a file path, so tests can give their own)."""
    fix = "give a copy of the machine's /proc/meminfo, or its RAM with --machine-ram (e.g. 8G)"
    # /proc files report size 0: read_user_text reads up to the limit whatever the size says
    text = read_user_text(meminfo, what="the meminfo file", limit=1024 * 1024, fix=fix)
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            m = _MEMTOTAL_RE.fullmatch(line.strip())
            if m is None:
                raise InputError(f"{meminfo}: the MemTotal line {line[:60]!r} is not 'MemTotal: <kibibytes> kB'", fix)
            total = int(m.group(1)) * 1024
            if not 16 * 2**20 <= total <= 2**50:
                raise InputError(f"{meminfo}: MemTotal {m.group(1)} kB is not a plausible machine's RAM", fix)
            return total
    raise InputError(f"no MemTotal line in {meminfo}", fix)


def tmpfs_bytes(size: str, mem_total: int) -> int:
    if not _TMPFS_RE.fullmatch(size):
        raise InputError(f"tmpfs size {size!r} is not a size tmpfs understands",
                         "set tmpfs_size (--tmpfs-size) to a size like 2G, 512M or 50% (of RAM)")
    if size.endswith("%"):
        return mem_total * int(size[:-1]) // 100
    return parse_size(size.upper() if size[-1].isalpha() else size)


def check_ssh_key(key: str) -> str:
    parts = key.strip().split()
    fix = "paste one line of an OpenSSH public key file (~/.ssh/id_ed25519.pub)"
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        raise InputError(f"not an OpenSSH public key: {key[:40]!r}", fix)
    if "PRIVATE KEY" in key:
        raise InputError("this is a private key; never put it in a configuration", fix)
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise InputError(f"the {parts[0]} key's base64 body is damaged", fix) from None
    n = int.from_bytes(blob[:4], "big")
    if blob[4 : 4 + n].decode("ascii", "replace") != parts[0]:
        raise InputError(f"the key's body does not encode a {parts[0]} key", fix)
    return " ".join(parts)


def lockout_error(u: User) -> NeedsUserInput:
    return NeedsUserInput(
        f"user {u.name!r} has neither a password hash nor an SSH key: with users.mutableUsers = false "
        "nobody could log in (the seed's lock-out)",
        "give --hashed-password-file (mkpasswd -m yescrypt > FILE) and/or --ssh-key (a .pub file); in a "
        "notebook: hashed_password_file / ssh_key_file",
    )


def pin_error(what: str, settings: NixosSettings) -> NeedsUserInput:
    repo = IMPERMANENCE_REPO if what == "impermanence" else HOME_MANAGER_REPO
    known = ", ".join(sorted(HOME_MANAGER_PINS)) if what == "home-manager" else "none"
    flag = "--impermanence-pin" if what == "impermanence" else "--home-manager-pin"
    return NeedsUserInput(
        f"{what} would be fetched without a pinned revision and hash (builtins.fetchTarball of a branch changes "
        f"under the configuration); labkit has no verified pin for it with NixOS {settings.state_version} "
        f"(verified pins: {known})",
        f"choose a commit of {repo} that matches your channel, run `nix-prefetch-url --unpack "
        f"https://github.com/{repo}/archive/<commit>.tar.gz`, and pass {flag} <commit> <sha256>",
    )


def read_ssh_key_file(path: Path) -> tuple[str, ...]:
    """The public keys of an OpenSSH ``.pub`` or ``authorized_keys`` file (comments and blank lines skipped),
    each checked; a key is read from a file, never carried in a default or a notebook."""
    text = read_user_text(Path(path).expanduser(), what="the SSH public key file", limit=1024 * 1024,
                          fix="give the path of your public key, e.g. ~/.ssh/id_ed25519.pub")
    keys = tuple(check_ssh_key(ln) for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#"))
    if not keys:
        raise InputError(f"the SSH key file {path} holds no key", "give a .pub file (ssh-keygen -t ed25519 makes one)")
    return keys


def ssh_keys_from(values: Sequence[str]) -> tuple[str, ...]:
    """OpenSSH public keys given inline (``ssh-ed25519 AAAA...``) or as .pub files, each checked."""
    keys: list[str] = []
    for k in values:
        if k.startswith(("ssh-", "ecdsa-", "sk-")):
            keys.append(check_ssh_key(k))
        else:
            keys += read_ssh_key_file(Path(k))
    return tuple(keys)


def check_settings(settings: NixosSettings, *, mem_total: int | None = None,
                   findings: list[NeedsUserInput] | None = None) -> NixosSettings:
    """Raise :class:`InputError` (problem + fix) for a configuration that cannot be used.

    With a ``findings`` list (plan mode), what only the user can give (:class:`NeedsUserInput`: a way to log
    in, a pin) is appended to it instead of raised; every other error still raises.
    """

    def need(err: NeedsUserInput) -> None:
        if findings is None:
            raise err
        findings.append(err)

    u = settings.user
    if not _USER_RE.fullmatch(u.name) or u.name == "root":
        raise InputError(f"user name {u.name!r} is not usable", "use lowercase letters, digits, - or _ (not root)")
    if not _HOST_RE.fullmatch(settings.hostname):
        raise InputError(f"host name {settings.hostname!r} is not a valid host name", "use letters, digits and -")
    if u.hashed_password is None and not u.ssh_keys:
        need(lockout_error(u))
    for what, on in (("impermanence", settings.impermanence), ("home-manager", settings.home_manager_user)):
        pin = settings.pin(what)
        if on and pin is None:
            need(pin_error(what, settings))
        elif on and pin is not None:
            pin.check(what)
    if u.hashed_password is not None:
        check_hash(u.hashed_password)
    for k in u.ssh_keys:
        check_ssh_key(k)
    if settings.home_manager_user is not None and settings.home_manager_user != u.name:
        raise InputError(f"home-manager user {settings.home_manager_user!r} is not the configured user {u.name!r}",
                         f"use --home-manager {u.name}")
    if mem_total is not None:
        size = tmpfs_bytes(settings.tmpfs_size, mem_total)
        if size > mem_total:
            raise InputError(
                f"tmpfs size {settings.tmpfs_size} ({human(size)}) is more than the machine's RAM ({human(mem_total)})",
                f"choose at most {human(mem_total // 2)} (half the RAM is a sane ceiling) or a percentage like 50%",
            )
        if size <= 0:
            raise InputError(f"tmpfs size {settings.tmpfs_size} is zero", "write a size like 2G")
    else:
        tmpfs_bytes(settings.tmpfs_size, 1)
    for dev in (settings.devices.esp, settings.devices.boot, settings.devices.nix, settings.devices.data):
        if not dev.startswith("/dev/"):
            raise InputError(f"device {dev!r} is not under /dev", "use /dev/disk/by-label/<label>")
    return settings


# -- rendering -----------------------------------------------------------------------------------

def _fs(device: str, fs_type: str, *, needed: bool = False, options: tuple[str, ...] = ()) -> Apply:
    body: dict[str | tuple[str, ...], object] = {"device": device, "fsType": fs_type}
    if options:
        body["options"] = list(options)
    if needed:
        body["neededForBoot"] = True
    return Apply("lib.mkForce", body)  # wins over hardware-configuration.nix's detected entries


def _probe_service(settings: NixosSettings) -> dict[str | tuple[str, ...], object]:
    script = (
        "# Type=simple: the start job completes at once, so the probe never holds the boot open;\n"
        "# it waits until the boot has finished, then writes one bundle.\n"
        "systemctl is-system-running --wait > /dev/null || true\n"
        "# the probe saves its bundle in /data/labkit/bundles itself (atomically) and steps an armed reboot loop\n"
        "${pkgs.runtimeShell} ${./" + PROBE_NAME + "}\n"
    )
    return {
        "description": "labkit probe: one measurement bundle to /data and the serial console",
        "wantedBy": ["multi-user.target"],
        "after": ["multi-user.target"],
        # nixpkgs nixos/lib/systemd-lib.nix (L624-641, L685-695): PATH = this list, then coreutils,
        # findutils, gnugrep, gnused and systemd; without config.nix.package the probe has no `nix` and
        # cannot measure the closure of /run/current-system
        "path": Raw("(with pkgs; [ coreutils gawk gnugrep util-linux procps systemd ]) ++ [ config.nix.package ]"),
        "environment": {"LABKIT_PROBE_OUT": "/dev/stdout"},
        "serviceConfig": {"Type": "simple", "StandardOutput": "tty", "TTYPath": "/dev/ttyS0"},
        "script": Raw("''\n" + _indent(script, 6) + "    ''"),
    }


def probe_service(settings: NixosSettings) -> dict[str | tuple[str, ...], object]:
    """``systemd.services.labkit-probe``: the attributes the module renders (:func:`module_attrs`), which the
    NixOS-style rehearsal also renders to the unit file NixOS writes (:mod:`labkit.systems.nixos.units`)."""
    return _probe_service(settings)


def _indent(text: str, n: int) -> str:
    return "".join(" " * n + line + "\n" for line in text.splitlines())


def _fetch(pin: Pin | None, what: str, settings: NixosSettings, subpath: str) -> Raw:
    """``"${builtins.fetchTarball { url; sha256; }}/subpath"``; without a pin (plan mode only) a ``throw``
    that names the missing pin, so the module can never fetch an unpinned branch."""
    if pin is None:
        return Raw(f"(throw {render('labkit: ' + pin_error(what, settings).problem)})")
    return Raw(f'"${{builtins.fetchTarball {{ url = {render(pin.url)}; sha256 = {render(pin.sha256)}; }}}}/{subpath}"')


def module_attrs(settings: NixosSettings,
                 findings: list[NeedsUserInput] | None = None) -> dict[str | tuple[str, ...], object]:
    s, u, d = settings, settings.user, settings.devices
    imports: list[object] = []
    if s.impermanence:
        imports.append(_fetch(s.pin("impermanence"), "impermanence", s, "nixos.nix"))
    if s.home_manager_user:
        imports.append(_fetch(s.pin("home-manager"), "home-manager", s, "nixos"))
    a: dict[str | tuple[str, ...], object] = {}
    if imports:
        a["imports"] = imports
    if findings:
        # plan mode only: what the install would refuse, as NixOS assertions (a build of this text fails with them)
        a["assertions"] = [{"assertion": False, "message": f"labkit: {f.problem} — {f.fix}"} for f in findings]
    a[("fileSystems", "/")] = _fs("none", "tmpfs", options=("defaults", f"size={s.tmpfs_size}", "mode=755"))
    a[("fileSystems", "/nix")] = _fs(d.nix, "ext4", needed=True, options=("noatime",))
    a[("fileSystems", "/data")] = _fs(d.data, "ext4", needed=True, options=("noatime",))
    a[("fileSystems", "/boot")] = _fs(d.boot, "ext4")
    a[("fileSystems", "/boot/efi")] = _fs(d.esp, "vfat", options=("fmask=0077", "dmask=0077"))
    a[("boot", "loader", "systemd-boot", "enable")] = Apply("lib.mkForce", False)
    a[("boot", "loader", "grub")] = {"enable": True, "efiSupport": True, "device": "nodev"}
    a[("boot", "loader", "efi")] = {"efiSysMountPoint": "/boot/efi", "canTouchEfiVariables": False}
    if s.serial_console:
        a[("boot", "kernelParams")] = ["console=tty0", "console=ttyS0,115200n8"]
    a[("networking", "hostName")] = s.hostname
    a[("users", "mutableUsers")] = False
    user: dict[str | tuple[str, ...], object] = {"isNormalUser": True, "extraGroups": ["wheel"]}
    if u.hashed_password is not None:
        user["hashedPassword"] = u.hashed_password
    if u.ssh_keys:
        user[("openssh", "authorizedKeys", "keys")] = list(u.ssh_keys)
    a[("users", "users", u.name)] = user
    if u.hashed_password is None:
        a[("security", "sudo", "wheelNeedsPassword")] = False
    if u.ssh_keys:
        a[("services", "openssh")] = {
            "enable": True,
            "settings": {"PasswordAuthentication": False, "PermitRootLogin": "no"},
        }
    a[("system", "copySystemConfiguration")] = True
    # copySystemConfiguration keeps only configuration.nix (nixpkgs top-level.nix L267-277, L348-354: "only
    # this single file is copied, even if it imports others"); keep this module, the probe and the hardware
    # configuration beside it in the system (/run/current-system/labkit.nix ...), so the copy is complete.
    # The originals stay on /data, where nix.nixPath below points every rebuild.
    a[("system", "extraSystemBuilderCmds")] = Raw(
        "lib.concatMapStrings (f: lib.optionalString (builtins.pathExists f) ''\n"
        "      ln -s ${f} $out/${baseNameOf f}\n"
        f"    '') [ ./{MODULE_NAME} ./{PROBE_NAME} ./hardware-configuration.nix ]")
    a[("nix", "nixPath")] = [
        "nixpkgs=/nix/var/nix/profiles/per-user/root/channels/nixos",
        f"nixos-config={s.config_dir}/configuration.nix",
        "/nix/var/nix/profiles/per-user/root/channels",
    ]
    a[("environment", "etc", "labkit-os", "text")] = "nixos\n"
    if s.probe:
        a[("systemd", "services", "labkit-probe")] = _probe_service(s)
    if s.impermanence:
        a[("environment", "persistence", "/data/persist")] = {
            "hideMounts": True,
            "directories": ["/var/lib/nixos", "/var/log", "/var/db/sudo/lectured"],
            "files": ["/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub",
                      "/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_rsa_key.pub"],
        }
    if s.home_manager_user:
        a[("home-manager", "users", s.home_manager_user)] = {
            ("home", "stateVersion"): s.state_version,
            ("programs", "bash", "enable"): True,
        }
    a[("system", "stateVersion")] = Apply("lib.mkDefault", s.state_version)
    return a


def render_module(settings: NixosSettings, *, mem_total: int | None = None,
                  findings: list[NeedsUserInput] | None = None, redact: bool = False) -> str:
    """The checked settings as a NixOS module (the text of ``labkit.nix``).

    ``findings`` (plan mode): collect what only the user can give instead of raising it; the text then
    carries each as a failing NixOS assertion and is marked as not installable.
    ``redact``: the text to *show* (notebooks, plans): the password hash is replaced by a marker.
    """
    found: list[NeedsUserInput] = []
    check_settings(settings, mem_total=mem_total, findings=found if findings is not None else None)
    if findings is not None:
        findings.extend(found)
    if redact and settings.user.hashed_password is not None:
        settings = replace(settings, user=replace(settings.user, hashed_password=REDACTED))
    header = (
        "# labkit.nix — written by labkit from typed settings; change the settings, not this file.\n"
        "# tmpfs root; /nix and /data on disk; GRUB (EFI) behind rEFInd; configuration kept on /data.\n"
    )
    if found:
        header += "# PLAN ONLY, NOT INSTALLABLE: " + "; ".join(f.problem for f in found) + "\n"
    return header + "{ config, lib, pkgs, ... }:\n\n" + render(module_attrs(settings, found)) + "\n"


def probe_script() -> bytes:
    """The probe (``labkit/data/guest/probe.sh``) that the module runs (``./labkit-probe.sh``)."""
    from labkit.core.data import probe_script as _probe

    return _probe()
