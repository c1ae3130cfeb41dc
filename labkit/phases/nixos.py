"""The NixOS install as steps (check / apply / verify), the same objects in plan and apply mode.

Run on the installer (the NixOS ISO, root shell) with the lab disk's partitions present::

    mount tmpfs /mnt ▸ mount /nix /boot /boot/efi /data ▸ generate + edit the config on /data
    ▸ nixos-install (TMPDIR on disk) ▸ grub-install (EFI modules found in the store)
    ▸ rEFInd's ext4 driver on the ESP ▸ verify

``check`` reads the real state (also in plan mode), ``apply`` changes it through the Runner (so
plan mode only records), ``verify`` checks the post-condition (apply mode only).

Why the post's explicit ``grub-install --directory=…`` is kept: ``nixos-install`` already installs GRUB —
it runs ``switch-to-configuration boot`` with ``NIXOS_INSTALL_BOOTLOADER=1`` (nixos-install.sh L247-259),
and install-grub.pl runs ``<grub2_efi>/sbin/grub-install --recheck --target=x86_64-efi
--boot-directory=/boot --efi-directory=/boot/efi --bootloader-id=<id> --no-nvram`` (L767-781, the
``--no-nvram`` because ``canTouchEfiVariables = false``). But ``<id>`` is ``NixOS`` followed by the ESP's
mount point with ``/`` → ``-`` (grub.nix ``bootloaderId``): GRUB lands in ``EFI/NixOS-boot-efi/``, and older
install-grub.pl revisions passed no ``--bootloader-id`` at all without ``canTouchEfiVariables``. The post's
command puts GRUB at the fixed ``EFI/NixOS/grubx64.efi`` that labkit's rEFInd stanza chainloads and that the
verification checks, whatever the nixpkgs revision. So the step runs only when ``EFI/NixOS/grubx64.efi`` is
not on the ESP yet (its check), after noting the copy nixos-install left. ``--directory`` names the EFI
modules of the same ``grub2_efi`` whose ``sbin/grub-install`` runs (``nix-shell -p grub2`` is the BIOS
build: that is the post's "cannot find them on its own").
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.errors import InputError, VerifyFailed
from labkit.core.host import Host, LocalHost
from labkit.core.layout import LAB_LAYOUT, Layout, Role
from labkit.core.runner import Mode, Runner, which
from labkit.core.steps import Step, run_steps
from labkit.systems import bootchain
from labkit.systems.nixos.config import (
    MODULE_NAME,
    PROBE_NAME,
    Devices,
    NeedsUserInput,
    NixosSettings,
    mem_total_bytes,
    probe_script,
    render_module,
)
from labkit.systems.nixos.generate import edit_generated
from labkit.systems.nixos.hashes import check_hash
from labkit.targets.mounts import mounted_fstype_in

GRUB_EFI_SUBDIR = "lib/grub/x86_64-efi"
GRUB_PLACEHOLDER = "<x86_64-efi modules: found in the store after nixos-install>"
REFIND_EXT4_DRIVER = "EFI/refind/drivers_x64/ext4_x64.efi"
#: where rEFInd may live on the ESP: refind-install's directory, or the removable path (the lab's)
REFIND_EXT4_DRIVERS = (REFIND_EXT4_DRIVER, "EFI/BOOT/drivers_x64/ext4_x64.efi")
GRUB_EFI_BINARY = "EFI/NixOS/grubx64.efi"
#: where nixos-install's own GRUB install puts it: bootloaderId = "NixOS" + efiSysMountPoint with / → -
#: (nixpkgs nixos/modules/system/boot/loader/grub/grub.nix, grubConfig)
NIXOS_GRUB_EFI_BINARY = "EFI/NixOS-boot-efi/grubx64.efi"
#: the files copySystemConfiguration alone would not keep: labkit.nix links them into the system
SYSTEM_COPIES = ("configuration.nix", MODULE_NAME, PROBE_NAME)


class GrubModulesMissing(InputError):
    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        super().__init__(
            "GRUB's EFI modules (a lib/grub/x86_64-efi directory with modinfo.sh) were not found; looked in: "
            + ", ".join(patterns),
            "get the EFI build of GRUB on the installer: `nix-shell -p grub2_efi` (nixpkgs `grub2_efi`; "
            "`grub2` is the BIOS build and fails), then run the step again",
        )


@dataclass(frozen=True)
class InstallParams:
    settings: NixosSettings
    root: Path = Path("/mnt")
    layout: Layout = LAB_LAYOUT
    mountinfo: Path = Path("/proc/self/mountinfo")
    meminfo: Path = Path("/proc/meminfo")
    #: Where to look for GRUB's EFI modules; default: the target's store, then the installer's.
    store_dirs: tuple[Path, ...] | None = None
    install_timeout_s: float = 3600.0
    #: The fingerprint (``labkit disks``) of the disk the install writes to; required in apply mode.
    disk_fingerprint: str | None = None
    #: Look the labels up on this machine (False: the plan is for another machine — the lab's
    #: installer VM, whose only disk is the lab disk — and keeps the /dev/disk/by-label paths).
    resolve_labels: bool = True
    #: More arguments for ``nixos-install`` (the lab's tests make the rehearsal's stand-in fail with one).
    nixos_install_args: tuple[str, ...] = ()

    def at(self, path: str) -> Path:
        """``path`` (absolute, as seen by the installed system) under the install root."""
        return self.root / path.lstrip("/")

    @property
    def config_dir(self) -> Path:
        return self.at(self.settings.config_dir)

    @property
    def stores(self) -> tuple[Path, ...]:
        return self.store_dirs if self.store_dirs is not None else (self.at("/nix/store"), Path("/nix/store"))


@dataclass(frozen=True)
class InstallStep:
    """One step of the NixOS install, for a host given when it runs (this machine, or the installer VM over
    its serial console): :meth:`InstallPlan.steps` binds it into a :class:`~labkit.core.steps.Step`."""

    name: str
    check: Callable[[Host], bool]
    apply: Callable[[Host], None]
    verify: Callable[[Host], None]
    describe: str = ""


@dataclass
class StepOutcome:
    name: str
    skipped: bool  # check said: already done
    verified: bool


@dataclass
class InstallPlan:
    params: InstallParams
    #: the module as shown (the password hash replaced by a marker): for notebooks and plans
    module_text: str
    steps_for_host: list[InstallStep] = field(default_factory=list)
    #: plan mode only: what the install would refuse until the user gives it (a login, a pin)
    findings: list[NeedsUserInput] = field(default_factory=list)
    #: the exact file written to /data (holds the hash): never displayed
    module_file: str = field(default="", repr=False)

    def __iter__(self) -> Iterator[InstallStep]:
        return iter(self.steps_for_host)

    def steps(self, host: Host) -> list[Step]:
        """The install's steps bound to ``host``: the one description, run here or in the installer VM."""
        return [Step(s.name, apply=functools.partial(s.apply, host), check=functools.partial(s.check, host),
                     verify=functools.partial(s.verify, host), describe=s.describe) for s in self.steps_for_host]

    def table(self, host: Host) -> list[dict[str, object]]:
        """One row per step: what it does and whether it is done already on ``host`` (reads only)."""
        return [{"step": s.name, "what": s.describe, "done already": s.check(host)} for s in self.steps_for_host]


def on_nixos_installer(root: Path = Path("/")) -> bool:
    """This machine is a NixOS system with ``nixos-install`` (the live installer): the real install can run."""
    return (root / "etc" / "NIXOS").exists() and which("nixos-install") is not None


def rebuild_command(settings: NixosSettings) -> list[str]:
    """How to change the installed system later (run on it, as root)."""
    return ["nixos-rebuild", "switch", "-I", f"nixos-config={settings.config_dir}/configuration.nix"]


def find_grub_efi_dir(h: Host, stores: Sequence[Path]) -> Path | None:
    """GRUB's x86_64-efi modules on ``h``: a package in the installer's own /nix/store that also has its
    ``sbin/grub-install`` (runnable there, and its modules match it) wins; else the first found."""
    found = [Path(m).parent for store in stores for m in h.glob(f"{store}/*-grub-*/{GRUB_EFI_SUBDIR}/modinfo.sh")]
    own = [d for d in found if grub_install_of(h, d) is not None]
    return (own or found)[0] if found else None


def grub_install_of(h: Host, modules: Path) -> Path | None:
    """``<grub2_efi>/sbin/grub-install`` of the package holding ``modules``, when it can run on ``h``: GRUB
    installs it in sbin (GRUB Makefile.util.def ``installdir = sbin``; install-grub.pl runs
    ``$grubEfi/sbin/grub-install``), and only a package of the installer's own /nix/store finds its libraries
    (not one under the target's /mnt)."""
    tool = modules.parents[2] / "sbin" / "grub-install"
    return tool if tool.is_relative_to("/nix/store") and h.is_file(tool) else None


def resolve_in_root(h: Host, root: Path, path: str, *, hops: int = 40) -> Path:
    """``path`` as the installed system sees it, read under ``root`` on ``h``: absolute symlinks (the system
    profile, store paths) are followed inside ``root``, never on the machine running the install."""
    parts = [x for x in path.split("/") if x]
    cur = root
    while parts:
        nxt = cur / parts.pop(0)
        target = h.readlink(nxt)
        if target is not None:
            hops -= 1
            if hops < 0:
                raise VerifyFailed(f"too many symlinks under {root} resolving {path}", "look at the installed system")
            parts = [x for x in target.split("/") if x] + parts
            cur = root if target.startswith("/") else cur
            continue
        cur = nxt
    return cur


def refind_driver_on(h: Host) -> Path | None:
    """``ext4_x64.efi`` of the rEFInd package whose ``refind-install`` is on ``h``'s PATH, or None."""
    tool = h.which("refind-install")
    if tool is None:
        return None
    prefix = Path(tool).parent.parent
    return next((prefix / sub / "ext4_x64.efi" for sub in bootchain.REFIND_DRIVER_DIRS
                 if h.is_file(prefix / sub / "ext4_x64.efi")), None)


def mounted_on(h: Host, p: InstallParams, path: Path) -> str | None:
    """The filesystem type mounted exactly at ``path`` on ``h`` (its mountinfo), or None."""
    return mounted_fstype_in(h.read_text(p.mountinfo) or "", path)


def require_mounted_on(h: Host, p: InstallParams, mount_point: str, *, why: str = "") -> None:
    target = p.at(mount_point)
    if mounted_on(h, p, target) is None:
        raise VerifyFailed(
            f"{mount_point} is not mounted at {target} (checked {p.mountinfo} on {h.name})"
            + (f": {why}" if why else ""),
            f"mount the {mount_point} partition there first (the 'mount partitions' step), then run this step again")


def _mounts(p: InstallParams) -> list[tuple[str, str, str]]:
    """(mount point, device, fstype) in mount order."""
    d = Devices.from_layout(p.layout)
    parts = {r: p.layout.partition(r) for r in (Role.NIX_STORE, Role.NIXOS_BOOT, Role.ESP, Role.DATA)}
    return [
        ("/nix", d.nix, parts[Role.NIX_STORE].fs.value),
        ("/boot", d.boot, parts[Role.NIXOS_BOOT].fs.value),
        ("/boot/efi", d.esp, parts[Role.ESP].fs.value),
        ("/data", d.data, parts[Role.DATA].fs.value),
    ]


def resolve_install_disk(r: Runner, p: InstallParams) -> dict[str, str]:
    """Find each partition by its filesystem label and prove they are all on the confirmed disk.

    Refuses (apply mode) when a label is missing or on several devices (another disk with an ``ESP``
    or ``data`` filesystem would otherwise be written to), when the partitions are spread over
    several disks, and when that disk's fingerprint is not ``p.disk_fingerprint``. In plan mode a
    label absent from this machine is shown as its ``/dev/disk/by-label`` path, with a note.
    Returns label -> device node.
    """
    from labkit.targets.disks import read_disk

    plan = r.mode is Mode.PLAN
    if plan and not (p.disk_fingerprint or "").strip():
        # no disk given: the plan shows the /dev/disk/by-label paths and never asks this machine's
        # disks (another disk with the same labels must not change the plan)
        r.note("plan: no disk confirmed; the partitions are mounted by label — on the installer they must "
               "resolve to one confirmed disk")
        return {}
    found: dict[str, str] = {}
    problems: list[str] = []
    for _mp, dev, _fs in _mounts(p):
        label = dev.rsplit("/", 1)[-1]
        out = r.run(["blkid", "-t", f"LABEL={label}", "-o", "device"], query=True, check=False).stdout.split()
        if len(out) == 1:
            found[label] = out[0]
        elif not out:
            problems.append(f"no filesystem labelled {label!r}")
        else:
            problems.append(f"the label {label!r} is on {len(out)} devices ({', '.join(out)})")
    parents = {Path(os.path.realpath(f"/sys/class/block/{Path(d).name}")).parent.name for d in found.values()}
    if len(parents) > 1:
        problems.append(f"the install's partitions lie on several disks ({', '.join(sorted(parents))})")
    if problems:
        if plan:
            r.note("plan: " + "; ".join(problems) + " — on the installer these must resolve to one confirmed disk")
            return found
        raise InputError("cannot tell which disk to install to: " + "; ".join(problems),
                         "partition and format the disk with `labkit disk apply` (unique labels), and detach or "
                         "relabel other disks carrying the same labels")
    disk = read_disk(r, f"/dev/{parents.pop()}") if parents else None
    if disk is not None:
        want = (p.disk_fingerprint or "").strip().lower()
        if not want and not plan:
            raise InputError(f"the install would write to {disk.describe()}, which was not confirmed",
                             f"check it is the right disk, then pass its fingerprint: {disk.fingerprint}")
        if want and want != disk.fingerprint:
            raise InputError(f"the partitions are on {disk.describe()}, not on the confirmed disk {want}",
                             "run `labkit disks`, check which disk is which, and confirm the right fingerprint")
        r.note(f"install disk: {disk.describe()}")
    return found


def build_plan(params: InstallParams, *, plan_only: bool = False) -> InstallPlan:
    """Validate the settings (against this machine's RAM) and build the steps.

    ``plan_only``: what only the user can give (a way to log in, a pin: :class:`NeedsUserInput`) becomes a
    finding of the plan instead of an error; :func:`run_plan` notes each finding and refuses to apply it.
    """
    findings: list[NeedsUserInput] = []
    module = render_module(params.settings, mem_total=mem_total_bytes(params.meminfo),
                           findings=findings if plan_only else None)
    secret = params.settings.user.hashed_password is not None
    p = params
    root = p.root

    def is_mounted(h: Host, path: str) -> bool:
        return mounted_on(h, p, p.at(path)) is not None

    # 1. tmpfs root
    def root_check(h: Host) -> bool:
        return mounted_on(h, p, root) == "tmpfs"

    def root_apply(h: Host) -> None:
        h.run(["mkdir", "-p", root])
        h.run(["mount", "-t", "tmpfs", "-o", f"size={p.settings.tmpfs_size},mode=755", "none", root])

    def root_verify(h: Host) -> None:
        if not root_check(h):
            raise VerifyFailed(f"{root} is not a tmpfs after mounting it", "look at `findmnt` and the transcript")

    # 2. partitions
    def parts_check(h: Host) -> bool:
        return all(is_mounted(h, mp) for mp, _d, _t in _mounts(p))

    def parts_apply(h: Host) -> None:
        nodes = resolve_install_disk(h.runner, p) if p.resolve_labels and isinstance(h, LocalHost) else {}
        for mp, dev, fstype in _mounts(p):
            if is_mounted(h, mp):
                h.note(f"{mp} already mounted")
                continue
            h.run(["mkdir", "-p", p.at(mp)])
            h.run(["mount", "-t", fstype, nodes.get(dev.rsplit("/", 1)[-1], dev), p.at(mp)])
        h.run(["mkdir", "-p", p.at("/nix/tmp"), p.config_dir])

    def parts_verify(h: Host) -> None:
        for mp, _d, _t in _mounts(p):
            require_mounted_on(h, p, mp)

    # 3. configuration on /data
    cfg, mod, probe = p.config_dir / "configuration.nix", p.config_dir / MODULE_NAME, p.config_dir / PROBE_NAME

    def cfg_check(h: Host) -> bool:
        text = h.read_text(cfg)
        return h.read_bytes(mod) == module.encode() and text is not None and "./" + MODULE_NAME in text \
            and h.is_file(probe)

    def cfg_apply(h: Host) -> None:
        if h.mode is Mode.APPLY:
            require_mounted_on(h, p, "/data", why="the configuration would be written to the tmpfs and lost at the "
                               "first reboot")
        if not h.is_file(cfg):
            h.run(["nixos-generate-config", "--root", root, "--dir", p.config_dir], timeout=120.0)
        h.note(f"edit {cfg}: remove the systemd-boot lines, import ./{MODULE_NAME}")
        h.note(f"write {mod} and {probe}")
        if h.mode is Mode.APPLY:
            generated = h.read_text(cfg)
            if generated is None:
                raise VerifyFailed(f"nixos-generate-config wrote no {cfg}", "read its output in the transcript")
            h.write_bytes(cfg, edit_generated(generated).text.encode())
            h.write_bytes(mod, module.encode(), mode=0o600 if secret else 0o644, secret=secret)  # the hash: root only
            h.write_bytes(probe, probe_script(), mode=0o644)

    def cfg_verify(h: Host) -> None:
        require_mounted_on(h, p, "/data")
        if not cfg_check(h):
            raise VerifyFailed(f"the configuration in {p.config_dir} is not labkit's", "run the step again")
        if h.which("nix-instantiate"):
            for f in (cfg, mod, p.config_dir / "hardware-configuration.nix"):
                h.run(["nix-instantiate", "--parse", f], query=True)

    # 4. nixos-install
    system_profile = p.at("/nix/var/nix/profiles/system")

    def inst_check(h: Host) -> bool:
        return h.lexists(system_profile)

    def inst_apply(h: Host) -> None:
        env = {"TMPDIR": str(p.at("/nix/tmp")), "NIXOS_CONFIG": str(cfg)}
        h.run(["nixos-install", "--root", root, "--no-root-passwd", *p.nixos_install_args], env=env,
              timeout=p.install_timeout_s)

    def inst_verify(h: Host) -> None:
        if not inst_check(h):
            raise VerifyFailed(f"no system profile at {system_profile} after nixos-install", "read its output")

    # 5. grub-install (why it is kept: the module docstring)
    grub_bin = p.at("/boot/efi") / GRUB_EFI_BINARY
    nixos_grub = p.at("/boot/efi") / NIXOS_GRUB_EFI_BINARY

    def grub_check(h: Host) -> bool:
        return h.is_file(grub_bin)

    def grub_apply(h: Host) -> None:
        if h.is_file(nixos_grub):
            h.note(f"nixos-install installed GRUB at {nixos_grub} (install-grub.pl); adding the post's "
                   f"{GRUB_EFI_BINARY}, the loader labkit's rEFInd entry names")
        found = find_grub_efi_dir(h, p.stores)
        if found is None:
            patterns = [f"{s}/*-grub-*/{GRUB_EFI_SUBDIR}/modinfo.sh" for s in p.stores]
            if h.mode is Mode.APPLY:
                raise GrubModulesMissing(patterns)
            h.note("GRUB EFI modules not in the store yet (nixos-install brings them); looked in: " +
                   ", ".join(patterns))
        own = grub_install_of(h, found) if found is not None else None
        tool = str(own) if own is not None else "grub-install"  # else: grub2_efi's, from nix-shell -p grub2_efi
        h.run([tool, "--target=x86_64-efi", f"--efi-directory={p.at('/boot/efi')}",
               f"--boot-directory={p.at('/boot')}", "--bootloader-id=NixOS", "--no-nvram",
               f"--directory={found if found is not None else GRUB_PLACEHOLDER}"], timeout=300.0)

    def grub_verify(h: Host) -> None:
        if not h.is_file(grub_bin):
            raise VerifyFailed(f"no GRUB EFI binary at {grub_bin}", "read grub-install's output in the transcript")

    # 6. rEFInd's ext4 driver: the seed's pitfall (refind-install leaves it out while /boot is not ext4); the
    # post re-ran refind-install from the installed NixOS; here the driver is copied from rEFInd's package
    drivers = [p.at("/boot/efi") / d for d in REFIND_EXT4_DRIVERS]
    driver = drivers[0]

    def drv_check(h: Host) -> bool:
        return any(h.is_file(d) for d in drivers)

    def drv_apply(h: Host) -> None:
        esp = p.at("/boot/efi")
        # beside the rEFInd that is there: refind-install's EFI/refind/, else the removable path (the lab's)
        dest = next((d for d in drivers if h.is_file(esp / bootchain.refind_binary_beside(d.relative_to(esp)))),
                    driver)
        src = refind_driver_on(h)
        if h.mode is Mode.PLAN and src is not None and not src.is_relative_to("/nix/store"):
            src = None  # a plan is for the NixOS installer: not this machine's (Debian) rEFInd
        if src is None:
            if h.mode is Mode.APPLY:
                raise VerifyFailed(f"rEFInd's ext4 driver is missing from the ESP ({dest}) and no rEFInd package "
                                   f"is on {h.name} to copy it from",
                                   "run `nix-shell -p refind` (its drivers are in $out/share/refind/drivers_x64/), "
                                   "then run the step again")
            h.note("on the NixOS installer, `nix-shell -p refind` brings rEFInd's drivers "
                   "($out/share/refind/drivers_x64/)")
        h.run(["mkdir", "-p", dest.parent])
        h.run(["cp", src if src is not None else bootchain.REFIND_NIX_EXT4_PLACEHOLDER, dest])

    def drv_verify(h: Host) -> None:
        if not drv_check(h):
            raise VerifyFailed(f"rEFInd's ext4 driver is missing: none of {', '.join(map(str, drivers))} — rEFInd "
                               "cannot read /boot or Alpine",
                               "run the rEFInd phase again (it installs drivers_x64/ext4_x64.efi)")

    # 7. the installed system
    grub_cfg = p.at("/boot/grub/grub.cfg")

    def final_check(h: Host) -> bool:
        return False

    def final_apply(h: Host) -> None:
        h.note(f"verify {grub_bin}, {grub_cfg}, {mod} on /data, the password hash, and that the installed system "
               f"keeps {', '.join(SYSTEM_COPIES)} (copySystemConfiguration + labkit.nix)")
        if h.mode is Mode.APPLY:
            final_verify(h)

    def final_verify(h: Host) -> None:
        grub_verify(h)
        text = h.read_text(grub_cfg)
        if text is None or "menuentry" not in text:
            raise VerifyFailed(f"{grub_cfg} is missing or has no menu entry", "run nixos-install again")
        require_mounted_on(h, p, "/data", why="the configuration must live on /data")
        if not cfg_check(h):  # the module on /data is byte for byte the one labkit wrote (hash included)
            raise VerifyFailed(f"{mod} on /data is not the configuration labkit wrote", "run the config step again")
        if p.settings.user.hashed_password is not None:
            check_hash(p.settings.user.hashed_password)
        # copySystemConfiguration keeps configuration.nix only; labkit.nix links itself and the probe into the
        # system too: the installed system's copies must be the files on /data
        system = resolve_in_root(h, root, "/nix/var/nix/profiles/system")
        for name in SYSTEM_COPIES:
            copy = resolve_in_root(h, root, str(system.relative_to(root)) + "/" + name) if system != root else None
            original = p.config_dir / name
            if copy is None or h.read_bytes(copy) is None or h.read_bytes(copy) != h.read_bytes(original):
                raise VerifyFailed(f"the installed system does not keep {name} as it is on /data ({original})",
                                   "run nixos-install again with NIXOS_CONFIG pointing at /data (the config step)")

    steps = [
        InstallStep("mount tmpfs root", root_check, root_apply, root_verify,
                    f"tmpfs size={p.settings.tmpfs_size} at {root}"),
        InstallStep("mount partitions", parts_check, parts_apply, parts_verify, "/nix /boot /boot/efi /data"),
        InstallStep("write configuration", cfg_check, cfg_apply, cfg_verify, f"nixos-generate-config + labkit.nix "
                    f"in {p.config_dir}"),
        InstallStep("nixos-install", inst_check, inst_apply, inst_verify, "TMPDIR on /nix, NIXOS_CONFIG on /data"),
        InstallStep("grub-install", grub_check, grub_apply, grub_verify, "EFI GRUB as EFI/NixOS, no NVRAM entry"),
        InstallStep("rEFInd ext4 driver", drv_check, drv_apply, drv_verify, REFIND_EXT4_DRIVER),
        InstallStep("verify installed system", final_check, final_apply, final_verify,
                    "GRUB, grub.cfg, /data, hash, the system's copies of the configuration"),
    ]
    shown = render_module(params.settings, findings=[] if plan_only else None, redact=True)
    return InstallPlan(params, shown, steps, findings, module_file=module)


def run_plan(runner: Runner | Host, plan: InstallPlan) -> list[StepOutcome]:
    """Run (or, in plan mode, record) every step on ``runner``'s machine (a :class:`Host`: this machine, or the
    installer VM); then say how to change the system later."""
    host = runner if isinstance(runner, Host) else LocalHost(runner)
    r = host.runner
    for f in plan.findings:
        r.note(f"finding: the install is refused until this is given: {f.problem} (fix: {f.fix})")
    if plan.findings and r.mode is Mode.APPLY:
        raise plan.findings[0]
    res = run_steps(r, "nixos install", plan.steps(host))
    r.note("to change the installed system later: " + shlex.join(rebuild_command(plan.params.settings)))
    return [StepOutcome(o.name, skipped=o.status == "done already", verified=o.status == "applied")
            for o in res.outcomes]


def plan_text(events: Sequence[dict[str, object]]) -> str:
    """The transcript of a (plan) run as readable lines: ``[step] $ command`` and ``[step] # note``."""
    lines: list[str] = []
    for e in events:
        step = str(e.get("step", "")).removeprefix("nixos install / ").removeprefix("nixos install")
        step = step or "nixos install"
        if e.get("event") == "command":
            env = e.get("env") or {}
            argv = [str(a) for a in e.get("argv", [])]  # type: ignore[attr-defined]
            envs = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(dict(env).items()))  # type: ignore[call-overload]
            lines.append(f"[{step}] $ {envs + ' ' if envs else ''}{shlex.join(argv)}")
        elif e.get("event") == "note":
            lines.append(f"[{step}] # {e.get('message')}")
    return "\n".join(lines) + "\n"
