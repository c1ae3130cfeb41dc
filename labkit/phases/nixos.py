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

import os
import shlex
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.errors import InputError, VerifyFailed
from labkit.core.layout import LAB_LAYOUT, Layout, Role
from labkit.core.runner import Mode, Runner, atomic_write_bytes, atomic_write_text, which
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
from labkit.targets.mounts import mounted_fstype, require_mounted

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
class Step:
    name: str
    check: Callable[[Runner], bool]
    apply: Callable[[Runner], None]
    verify: Callable[[Runner], None]
    describe: str = ""


@dataclass
class StepOutcome:
    name: str
    skipped: bool  # check said: already done
    verified: bool


@dataclass
class InstallPlan:
    params: InstallParams
    module_text: str  # what is shown (notebooks, plans): the password hash redacted
    steps: list[Step] = field(default_factory=list)
    #: plan mode only: what the install would refuse until the user gives it (a login, a pin)
    findings: list[NeedsUserInput] = field(default_factory=list)
    module_file: str = field(default="", repr=False)  # the exact labkit.nix written to /data (with the hash)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)


def on_nixos_installer(root: Path = Path("/")) -> bool:
    """This machine is a NixOS system with ``nixos-install`` (the live installer): the real install can run."""
    return (root / "etc" / "NIXOS").exists() and which("nixos-install") is not None


def rebuild_command(settings: NixosSettings) -> list[str]:
    """How to change the installed system later (run on it, as root)."""
    return ["nixos-rebuild", "switch", "-I", f"nixos-config={settings.config_dir}/configuration.nix"]


def find_grub_efi_dir(stores: Sequence[Path]) -> Path | None:
    """GRUB's x86_64-efi modules: a package in the installer's own /nix/store that also has its
    ``sbin/grub-install`` (runnable here, and its modules match it) wins; else the first found."""
    found = [m.parent for store in stores for m in sorted(store.glob(f"*-grub-*/{GRUB_EFI_SUBDIR}/modinfo.sh"))]
    own = [d for d in found if grub_install_of(d) is not None]
    return (own or found)[0] if found else None


def grub_install_of(modules: Path) -> Path | None:
    """``<grub2_efi>/sbin/grub-install`` of the package holding ``modules``, when it can run here: GRUB installs
    it in sbin (GRUB Makefile.util.def ``installdir = sbin``; install-grub.pl runs ``$grubEfi/sbin/grub-install``),
    and only a package of this machine's /nix/store finds its libraries (not one under the target's /mnt)."""
    tool = modules.parents[2] / "sbin" / "grub-install"
    return tool if tool.is_relative_to("/nix/store") and tool.exists() else None


def resolve_in_root(root: Path, path: str, *, hops: int = 40) -> Path:
    """``path`` as the installed system sees it, read under ``root``: absolute symlinks (the system profile,
    store paths) are followed inside ``root``, never on this machine."""
    parts = [p for p in path.split("/") if p]
    cur = root
    while parts:
        nxt = cur / parts.pop(0)
        if nxt.is_symlink():
            hops -= 1
            if hops < 0:
                raise VerifyFailed(f"too many symlinks under {root} resolving {path}", "look at the installed system")
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p] + parts
            cur = root if target.startswith("/") else cur
            continue
        cur = nxt
    return cur


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

    def is_mounted(path: str) -> bool:
        return mounted_fstype(p.at(path), p.mountinfo) is not None

    # 1. tmpfs root
    def root_check(_: Runner) -> bool:
        return mounted_fstype(root, p.mountinfo) == "tmpfs"

    def root_apply(r: Runner) -> None:
        r.run(["mkdir", "-p", root])
        r.run(["mount", "-t", "tmpfs", "-o", f"size={p.settings.tmpfs_size},mode=755", "none", root])

    def root_verify(_: Runner) -> None:
        if not root_check(_):
            raise VerifyFailed(f"{root} is not a tmpfs after mounting it", "look at `findmnt` and the transcript")

    # 2. partitions
    def parts_check(_: Runner) -> bool:
        return all(is_mounted(mp) for mp, _d, _t in _mounts(p))

    def parts_apply(r: Runner) -> None:
        nodes = resolve_install_disk(r, p) if p.resolve_labels else {}
        for mp, dev, fstype in _mounts(p):
            if is_mounted(mp):
                r.note(f"{mp} already mounted")
                continue
            r.run(["mkdir", "-p", p.at(mp)])
            r.run(["mount", "-t", fstype, nodes.get(dev.rsplit("/", 1)[-1], dev), p.at(mp)])
        r.run(["mkdir", "-p", p.at("/nix/tmp"), p.config_dir])

    def parts_verify(_: Runner) -> None:
        for mp, _d, _t in _mounts(p):
            require_mounted(root, mp, p.mountinfo)

    # 3. configuration on /data
    cfg, mod, probe = p.config_dir / "configuration.nix", p.config_dir / MODULE_NAME, p.config_dir / PROBE_NAME

    def cfg_check(_: Runner) -> bool:
        try:
            return mod.read_text() == module and "./" + MODULE_NAME in cfg.read_text() and probe.is_file()
        except OSError:
            return False

    def cfg_apply(r: Runner) -> None:
        if r.mode is Mode.APPLY:
            require_mounted(root, "/data", p.mountinfo, why="the configuration would be written to the tmpfs "
                            "and lost at the first reboot")
        if not cfg.is_file():
            r.run(["nixos-generate-config", "--root", root, "--dir", p.config_dir])
        r.note(f"edit {cfg}: remove the systemd-boot lines, import ./{MODULE_NAME}")
        r.note(f"write {mod} and {probe}")
        if r.mode is Mode.APPLY:
            edit = edit_generated(cfg.read_text())
            atomic_write_text(cfg, edit.text)
            atomic_write_text(mod, module, mode=0o600 if secret else None)  # holds the hash: root only
            atomic_write_bytes(probe, probe_script(), mode=0o644)

    def cfg_verify(r: Runner) -> None:
        require_mounted(root, "/data", p.mountinfo)
        if not cfg_check(r):
            raise VerifyFailed(f"the configuration in {p.config_dir} is not labkit's", "run the step again")
        if which("nix-instantiate"):
            for f in (cfg, mod, p.config_dir / "hardware-configuration.nix"):
                r.run(["nix-instantiate", "--parse", f], query=True)

    # 4. nixos-install
    system_profile = p.at("/nix/var/nix/profiles/system")

    def inst_check(_: Runner) -> bool:
        return system_profile.is_symlink() or system_profile.exists()

    def inst_apply(r: Runner) -> None:
        env = {"TMPDIR": str(p.at("/nix/tmp")), "NIXOS_CONFIG": str(cfg)}
        r.run(["nixos-install", "--root", root, "--no-root-passwd"], env=env, timeout=p.install_timeout_s)

    def inst_verify(_: Runner) -> None:
        if not inst_check(_):
            raise VerifyFailed(f"no system profile at {system_profile} after nixos-install", "read its output")

    # 5. grub-install (why it is kept: the module docstring)
    grub_bin = p.at("/boot/efi") / GRUB_EFI_BINARY
    nixos_grub = p.at("/boot/efi") / NIXOS_GRUB_EFI_BINARY

    def grub_check(_: Runner) -> bool:
        return grub_bin.is_file()

    def grub_apply(r: Runner) -> None:
        if nixos_grub.is_file():
            r.note(f"nixos-install installed GRUB at {nixos_grub} (install-grub.pl); adding the post's "
                   f"{GRUB_EFI_BINARY}, the loader labkit's rEFInd entry names")
        found = find_grub_efi_dir(p.stores)
        if found is None:
            patterns = [f"{s}/*-grub-*/{GRUB_EFI_SUBDIR}/modinfo.sh" for s in p.stores]
            if r.mode is Mode.APPLY:
                raise GrubModulesMissing(patterns)
            r.note("GRUB EFI modules not in the store yet (nixos-install brings them); looked in: " +
                   ", ".join(patterns))
        own = grub_install_of(found) if found is not None else None
        tool = str(own) if own is not None else "grub-install"  # else: grub2_efi's, from nix-shell -p grub2_efi
        r.run([tool, "--target=x86_64-efi", f"--efi-directory={p.at('/boot/efi')}",
               f"--boot-directory={p.at('/boot')}", "--bootloader-id=NixOS", "--no-nvram",
               f"--directory={found if found is not None else GRUB_PLACEHOLDER}"])

    def grub_verify(_: Runner) -> None:
        if not grub_bin.is_file():
            raise VerifyFailed(f"no GRUB EFI binary at {grub_bin}", "read grub-install's output in the transcript")

    # 6. rEFInd's ext4 driver: the seed's pitfall (refind-install leaves it out while /boot is not ext4); the
    # post re-ran refind-install from the installed NixOS; here the driver is copied from rEFInd's package
    drivers = [p.at("/boot/efi") / d for d in REFIND_EXT4_DRIVERS]
    driver = drivers[0]

    def drv_check(_: Runner) -> bool:
        return any(d.is_file() for d in drivers)

    def drv_apply(r: Runner) -> None:
        esp = p.at("/boot/efi")
        # beside the rEFInd that is there: refind-install's EFI/refind/, else the removable path (the lab's)
        dest = next((d for d in drivers if (esp / bootchain.refind_binary_beside(d.relative_to(esp))).is_file()),
                    driver)
        src = bootchain.refind_ext4_driver(which("refind-install"))
        if r.mode is Mode.PLAN and src is not None and not src.is_relative_to("/nix/store"):
            src = None  # a plan is for the NixOS installer: not this machine's (Debian) rEFInd
        if src is None:
            if r.mode is Mode.APPLY:
                raise VerifyFailed(f"rEFInd's ext4 driver is missing from the ESP ({dest}) and no rEFInd package "
                                   "is on this machine to copy it from",
                                   "run `nix-shell -p refind` (its drivers are in $out/share/refind/drivers_x64/), "
                                   "then run the step again")
            r.note("on the NixOS installer, `nix-shell -p refind` brings rEFInd's drivers "
                   "($out/share/refind/drivers_x64/)")
        r.run(["mkdir", "-p", dest.parent])
        r.run(["cp", src if src is not None else bootchain.REFIND_NIX_EXT4_PLACEHOLDER, dest])

    def drv_verify(_: Runner) -> None:
        if not drv_check(_):
            raise VerifyFailed(f"rEFInd's ext4 driver is missing: none of {', '.join(map(str, drivers))} — rEFInd "
                               "cannot read /boot or Alpine",
                               "run the rEFInd phase again (it installs drivers_x64/ext4_x64.efi)")

    # 7. the installed system
    grub_cfg = p.at("/boot/grub/grub.cfg")

    def final_check(_: Runner) -> bool:
        return False

    def final_apply(r: Runner) -> None:
        r.note(f"verify {grub_bin}, {grub_cfg}, {mod} on /data, the password hash, and that the installed system "
               f"keeps {', '.join(SYSTEM_COPIES)} (copySystemConfiguration + labkit.nix)")
        if r.mode is Mode.APPLY:
            final_verify(r)

    def final_verify(r: Runner) -> None:
        grub_verify(r)
        if not grub_cfg.is_file() or "menuentry" not in grub_cfg.read_text(errors="replace"):
            raise VerifyFailed(f"{grub_cfg} is missing or has no menu entry", "run nixos-install again")
        require_mounted(root, "/data", p.mountinfo, why="the configuration must live on /data")
        if not cfg_check(r):
            raise VerifyFailed(f"{mod} on /data is not the configuration labkit wrote", "run the config step again")
        if p.settings.user.hashed_password is not None:
            text = mod.read_text()
            h = p.settings.user.hashed_password
            if f'hashedPassword = "{h}";' not in text:
                raise VerifyFailed(f"{mod} does not carry the user's password hash", "run the config step again")
            check_hash(h)
        # copySystemConfiguration keeps configuration.nix only; labkit.nix links itself and the probe into the
        # system too: the installed system's copies must be the files on /data
        system = resolve_in_root(root, "/nix/var/nix/profiles/system")
        for name in SYSTEM_COPIES:
            copy = resolve_in_root(root, str(system.relative_to(root)) + "/" + name) if system != root else None
            original = p.config_dir / name
            if copy is None or not copy.is_file() or copy.read_bytes() != original.read_bytes():
                raise VerifyFailed(f"the installed system does not keep {name} as it is on /data ({original})",
                                   "run nixos-install again with NIXOS_CONFIG pointing at /data (the config step)")

    steps = [
        Step("mount tmpfs root", root_check, root_apply, root_verify, f"tmpfs size={p.settings.tmpfs_size} at {root}"),
        Step("mount partitions", parts_check, parts_apply, parts_verify, "/nix /boot /boot/efi /data"),
        Step("write configuration", cfg_check, cfg_apply, cfg_verify, f"nixos-generate-config + labkit.nix in "
             f"{p.config_dir}"),
        Step("nixos-install", inst_check, inst_apply, inst_verify, "TMPDIR on /nix, NIXOS_CONFIG on /data"),
        Step("grub-install", grub_check, grub_apply, grub_verify, "EFI GRUB as EFI/NixOS, no NVRAM entry"),
        Step("rEFInd ext4 driver", drv_check, drv_apply, drv_verify, REFIND_EXT4_DRIVER),
        Step("verify installed system", final_check, final_apply, final_verify,
             "GRUB, grub.cfg, /data, hash, the system's copies of the configuration"),
    ]
    shown = render_module(params.settings, findings=[] if plan_only else None, redact=True)
    return InstallPlan(params, shown, steps, findings, module_file=module)


def run_plan(runner: Runner, plan: InstallPlan) -> list[StepOutcome]:
    """Run (or, in plan mode, record) every step; then say how to change the system later."""
    out: list[StepOutcome] = []
    with runner.step("nixos install"):
        for f in plan.findings:
            runner.note(f"finding: the install is refused until this is given: {f.problem} (fix: {f.fix})")
        if plan.findings and runner.mode is Mode.APPLY:
            raise plan.findings[0]
        for step in plan:
            with runner.step(step.name):
                if step.check(runner):
                    runner.note("already done")
                    out.append(StepOutcome(step.name, skipped=True, verified=False))
                    continue
                step.apply(runner)
                verified = runner.mode is Mode.APPLY
                if verified:
                    step.verify(runner)
                out.append(StepOutcome(step.name, skipped=False, verified=verified))
        runner.note("to change the installed system later: " + shlex.join(rebuild_command(plan.params.settings)))
    return out


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
