"""The whole install, as the post does it: disk ▸ rEFInd ▸ NixOS ▸ Alpine, on any target.

Every phase says once what it puts on the disk and hands it to the target:

- **disk** — the layout (:mod:`labkit.phases.disk`);
- **rEFInd** — the ESP's ``EFI/BOOT/``: rEFInd on the removable path, its ext4 driver (the seed's
  pitfall: ``refind-install`` leaves it out while ``/boot`` is not ext4) and ``refind.conf`` with one
  manual stanza per system. labkit copies the distribution's rEFInd files instead of running
  ``refind-install``: that script mounts the ESP itself and, without ``--usedefault``, registers
  rEFInd in the NVRAM of the machine it runs on — not the one that will boot this disk; the removable
  path boots on a fresh NVRAM (KNOWLEDGE.md, rEFInd);
- **NixOS** — on a NixOS installer, the real ``nixos-install`` sequence (:mod:`labkit.phases.nixos`);
  anywhere else the NixOS-style *rehearsal* system (labelled rehearsal) onto ``/boot`` (kernel, initrd,
  ``grub/grub.cfg``), ``/nix`` (the store) and ``/data``, and GRUB (``EFI/NixOS/grubx64.efi``) on the ESP;
- **Alpine** — ``apks/`` (with ``.boot_repository``) and ``boot/`` from the Alpine ISO (checksum
  checked, extracted without mounting, EFI and syslinux files left out as the post does) or, without
  one, the Alpine-style *rehearsal* media; ``boot/refind_linux.conf`` and the apkovl at the partition's
  root.

What each phase puts on a partition is staged on the host first (``work/stage/…``), then copied by the
target (:class:`~labkit.targets.base.Files`); in plan mode nothing is built: the steps show the commands
on the staging paths.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.errors import InputError
from labkit.core.layout import Layout, Role
from labkit.core.runner import Mode, PlannedCommand, Runner, atomic_write_text
from labkit.core.steps import PhaseResult, Step, run_steps
from labkit.phases.disk import disk_steps, verify_layout
from labkit.phases.files import put_step, stage
from labkit.rehearsal.types import BootEntry, GuestBuild
from labkit.systems import bootchain
from labkit.systems.alpine.apkovl import AlpineLogin
from labkit.targets.base import Files, Target
from labkit.targets.image import ImageInfo, ImageTarget

SYSTEMS = ("alpine", "nixos")
#: The rehearsal guests' rEFInd titles (the real systems': "Alpine Linux (lts)", "NixOS").
ALPINE_REHEARSAL_TITLE = "Alpine-style rehearsal"
NIXOS_REHEARSAL_TITLE = "NixOS-style rehearsal"
#: The Alpine partition as the lab VM sees it (virtio disk, partition 4): LBU media and repository.
LAB_MEDIA = "vda4"


@dataclass(frozen=True)
class InstallOptions:
    """What the install puts on the disk (the settings the phases read)."""

    systems: tuple[str, ...] = SYSTEMS
    world: str = "default"  # the rehearsal guests' package set
    cache_dir: Path | None = None  # the guest kernel's cache (rehearsal)
    alpine_iso: Path | None = None
    alpine_iso_sha256: str | None = None
    #: the Alpine minirootfs whose apk installs the rehearsal's packages (None: found or downloaded, else none)
    alpine_rootfs: Path | None = None
    alpine_world: tuple[str, ...] = ()
    alpine_media: str = LAB_MEDIA  # the Alpine partition's kernel name where it boots (sda4, nvme0n1p4, vda4)
    hostname: str = "alpinelab"
    #: The NixOS partitions stay empty and the ESP gets a stanza chainloading GRUB: the installer ISO's own
    #: install (over the serial console in the lab) fills them.
    nixos_from_installer: bool = False
    nixos_title: str = "NixOS"
    #: plan mode without ``alpine_iso``: plan the post's path (the official ISO's boot/ and apks/ extracted
    #: with xorriso) on a named placeholder ISO, as the disk plan names /dev/sdX, instead of the rehearsal
    plan_real_alpine: bool = False
    #: a real disk: how its owner logs in to Alpine (None: the lab's measurement-only apkovl, which powers
    #: off after the probe and lets nobody in)
    alpine_login: AlpineLogin | None = None
    default: str = ""  # the system rEFInd boots by default ("" = the first)

    def validate(self) -> None:
        bad = [s for s in self.systems if s not in SYSTEMS]
        if bad or not self.systems:
            raise InputError(f"unknown system(s) {bad or '(none)'}", f"choose among {', '.join(SYSTEMS)}")
        if self.default and self.default not in self.systems:
            raise InputError(f"the default system {self.default!r} is not installed", "pick one of --systems")


@dataclass(frozen=True)
class SystemContent:
    """One system's share of the disk, staged on the host."""

    name: str  # alpine | nixos
    entry: BootEntry  # how rEFInd starts it
    files: tuple[Files, ...]  # what goes on which partition
    guest: GuestBuild | None  # None in plan mode
    media: object | None = None  # the Alpine ISO's record (phases.alpine_media.AlpineMedia)
    rehearsal: bool = True


@dataclass(frozen=True)
class Prepared:
    esp: Files
    systems: dict[str, SystemContent]
    titles: dict[str, str]
    prepare_s: float = 0.0


@dataclass(frozen=True)
class InstallResult:
    target: Target
    prepared: Prepared
    phases: tuple[PhaseResult, ...] = field(default=())
    staging: tuple[PlannedCommand, ...] = ()  # what staging the content ran (or would run) on this host

    @property
    def planned(self) -> list[str]:
        return [c.shell() for r in self.phases for c in r.mutating]


# -- staging ------------------------------------------------------------------------------------------
def prepare(runner: Runner, layout: Layout, work: Path, opts: InstallOptions,
            phases: Sequence[str] = ("disk", "refind", "nixos", "alpine")) -> Prepared:
    """Stage the content of ``phases`` under ``work/stage`` (plan mode: name the paths, build nothing heavy).
    The ESP's rEFInd stanzas come from each system's boot entry, known without building the system."""
    opts.validate()
    started = time.monotonic()
    st = work / "stage"
    plan = runner.mode is Mode.PLAN
    systems: dict[str, SystemContent] = {}
    kernel = None
    build_nixos = not plan and "nixos" in phases and "nixos" in opts.systems and not opts.nixos_from_installer
    build_alpine = not plan and "alpine" in phases and "alpine" in opts.systems
    if build_nixos or (build_alpine and opts.alpine_iso is None):
        from labkit.rehearsal.kernel import default_cache_dir, obtain_kernel

        with runner.step("guest kernel"):
            kernel = obtain_kernel(runner, (opts.cache_dir or default_cache_dir()) / "kernel")
            runner.note(f"Debian kernel {kernel.version}")
    grub_efi: Path | None = None
    if "nixos" in opts.systems:
        if opts.nixos_from_installer:
            entry = BootEntry(opts.nixos_title, Role.NIXOS_BOOT.value, "", "", "")
            systems["nixos"] = SystemContent("nixos", entry, (), None, rehearsal=False)
        else:
            files = (Files(Role.NIXOS_BOOT, st / "nixos-boot", "the NixOS-style rehearsal's /boot (kernel, initrd, "
                           "grub/grub.cfg)"),
                     Files(Role.NIX_STORE, st / "nix-store", "the NixOS-style rehearsal's /nix/store"),
                     Files(Role.DATA, st / "data", "/data"))
            entry = BootEntry(NIXOS_REHEARSAL_TITLE, Role.NIXOS_BOOT.value, "", "", "")
            guest = None
            if build_nixos:
                from labkit.rehearsal.build import build_nixos_trees

                assert kernel is not None
                for f in files:
                    stage(f.tree, {})
                guest = build_nixos_trees(runner, kernel, files[0].tree, files[1].tree, files[2].tree,
                                          packages=opts.world)
                entry = guest.entry
                atomic_write_text(files[0].tree / "grub" / "grub.cfg", bootchain.grub_cfg(guest.entry))
                grub_efi = bootchain.build_grub_efi(runner, work / "grubx64.efi")
            systems["nixos"] = SystemContent("nixos", entry, files, guest)
    if "alpine" in opts.systems:
        tree = st / "alpine"
        afiles = (Files(Role.ALPINE, tree, "Alpine's boot/, apks/ and apkovl"),)
        if opts.alpine_iso is not None:
            from labkit.phases.alpine_media import prepare_alpine_partition

            if not build_alpine:
                from labkit.phases.alpine_media import iso_entry

                entry, rehearsal = iso_entry(runner, opts.alpine_iso, hostname=opts.hostname, media=opts.alpine_media)
                if plan:
                    plan_iso_extract(runner, opts.alpine_iso, tree, entry.kernel.split("vmlinuz-", 1)[-1])
                systems["alpine"] = SystemContent("alpine", entry, afiles, None, rehearsal=rehearsal)
            else:
                stage(tree, {})
                guest, media = prepare_alpine_partition(runner, opts.alpine_iso, tree, sha256=opts.alpine_iso_sha256,
                                                        world=opts.alpine_world, hostname=opts.hostname,
                                                        media=opts.alpine_media, login=opts.alpine_login)
                systems["alpine"] = SystemContent("alpine", guest.entry, afiles, guest, media,
                                                  rehearsal=guest.os_id.endswith("-rehearsal"))
        elif plan and opts.plan_real_alpine:
            from labkit.phases.alpine_media import ISO_PLACEHOLDER, plan_alpine_partition

            stage(tree, {})
            plan_iso_extract(runner, Path(ISO_PLACEHOLDER), tree)
            entry = plan_alpine_partition(tree, world=opts.alpine_world, hostname=opts.hostname,
                                          media=opts.alpine_media, login=opts.alpine_login)
            runner.note(f"no alpine_iso chosen: the plan names {ISO_PLACEHOLDER}")
            systems["alpine"] = SystemContent("alpine", entry, afiles, None, rehearsal=False)
        else:
            from labkit.rehearsal.build import alpine_entry

            entry = alpine_entry()
            guest = None
            if plan:  # the small files are pure: staged so the plan names them; the rest is built at apply time
                from labkit.rehearsal.build import BASE_PACKAGE, lab_apkovl_spec, resolve_world
                from labkit.systems.alpine.apkovl import write_apkovl

                spec = lab_apkovl_spec(opts.hostname, [n for n in resolve_world(opts.world) if n != BASE_PACKAGE],
                                       media=opts.alpine_media,
                                       login=AlpineLogin(opts.alpine_login.root_password_hash)
                                       if opts.alpine_login is not None else None)
                stage(tree, {"boot/refind_linux.conf": bootchain.refind_linux_conf(entry).encode()})
                write_apkovl(spec, tree / spec.filename)
                runner.note(f"built at apply time: boot/vmlinuz-lts, boot/initramfs-lts and apks/ (the Alpine-style "
                            f"rehearsal with package set {opts.world!r})")
            elif build_alpine:
                from labkit.rehearsal.build import build_alpine_tree
                from labkit.rehearsal.kernel import default_cache_dir

                assert kernel is not None
                stage(tree, {})
                guest = build_alpine_tree(runner, kernel, tree, world=opts.world, hostname=opts.hostname,
                                          media=opts.alpine_media, login=opts.alpine_login,
                                          apk_cache=(opts.cache_dir or default_cache_dir()) / "apk",
                                          alpine_rootfs=opts.alpine_rootfs)
                entry = guest.entry
                atomic_write_text(tree / "boot" / "refind_linux.conf", bootchain.refind_linux_conf(entry))
            systems["alpine"] = SystemContent("alpine", entry, afiles, guest)
    # rEFInd: one stanza per system, the default first in --systems order unless chosen
    order = [s for s in opts.systems if s in systems]
    entries = [systems[s].entry for s in order]
    default = systems[opts.default].entry.title if opts.default else entries[0].title
    esp = Files(Role.ESP, st / "esp", "rEFInd (EFI/BOOT/BOOTX64.EFI), its ext4 driver and refind.conf")
    esp_map = bootchain.esp_files(entries, default, layout=layout,
                                  grub_efi=grub_efi if grub_efi is not None else Path("/dev/null"))
    if grub_efi is None:
        esp_map.pop(bootchain.ESP_GRUB, None)
        nixos = systems.get("nixos")
        if nixos is not None and nixos.files:  # the rehearsal: GRUB is built with its phase; named in a plan
            systems["nixos"] = SystemContent("nixos", nixos.entry, (*nixos.files, Files(
                Role.ESP, st / "esp-grub", "GRUB for NixOS (EFI/NixOS/grubx64.efi)")), nixos.guest)
    else:  # GRUB belongs to the NixOS phase
        esp_map.pop(bootchain.ESP_GRUB)
        systems["nixos"] = SystemContent("nixos", systems["nixos"].entry,
                                         (*systems["nixos"].files,
                                          Files(Role.ESP, stage(st / "esp-grub", {bootchain.ESP_GRUB: grub_efi}),
                                                "GRUB for NixOS (EFI/NixOS/grubx64.efi)")),
                                         systems["nixos"].guest)
    stage(esp.tree, esp_map)  # small and pure: staged in plan mode too, so the plan lists the ESP's files
    titles = {s: systems[s].entry.title for s in order}
    return Prepared(esp, systems, titles, time.monotonic() - started)


# -- the phases ---------------------------------------------------------------------------------------
def alpine_login(hash_file: str | Path | None, keys: Sequence[str]) -> AlpineLogin:
    """How the owner of a real disk logs in to its Alpine: root's hash read from ``hash_file`` (never given
    inline) and the public keys (inline or .pub files); refused when neither is given."""
    from labkit.systems.alpine.apkovl import read_password_hash_file
    from labkit.systems.nixos.config import ssh_keys_from

    root = read_password_hash_file(Path(hash_file), "root") if hash_file else "*"
    return AlpineLogin(root, ssh_keys_from(keys))


def plan_iso_extract(runner: Runner, iso: Path, tree: Path, flavor: str = "lts") -> None:
    """Record (plan mode) the extraction :func:`labkit.systems.alpine.extract.extract_iso` performs: the ISO's
    apks/ (with apks/.boot_repository, which nlplug-findfs looks for) and its lts boot files, read with
    xorriso, no mount."""
    from labkit.systems.alpine.extract import extract_argv

    runner.run(extract_argv(iso, tree, flavor))


def phase_steps(target: Target, prepared: Prepared, *, wipe: bool = False) -> list[tuple[str, list[Step]]]:
    """The four phases as (name, steps), in the post's order."""
    phases: list[tuple[str, list[Step]]] = [("disk", disk_steps(target, wipe=wipe)),
                                            ("refind", [put_step(target, prepared.esp, "rEFInd on the ESP")])]
    for name in ("nixos", "alpine"):
        sc = prepared.systems.get(name)
        if sc is not None:
            phases.append((name, [put_step(target, f) for f in sc.files]))
    return phases


def run_install(target: Target, opts: InstallOptions, work: Path, *, wipe: bool = False,
                phases: Sequence[str] = ("disk", "refind", "nixos", "alpine"),
                prepared: Prepared | None = None) -> InstallResult:
    """Stage the content, then run each phase on ``target`` (plan mode: record every command)."""
    runner = target.runner
    with runner.step(f"install on {target.describe()}"):
        first = len(runner.planned)
        if prepared is None:
            with runner.step("stage what each phase puts on the disk"):
                prepared = prepare(runner, target.layout, work, opts, phases)
        staging = tuple(c for c in runner.planned[first:] if not c.query)
        results = []
        for name, steps in phase_steps(target, prepared, wipe=wipe):
            if name not in phases:
                continue
            check = (lambda: verify_layout(target)) if name == "disk" else None
            results.append(run_steps(runner, f"{name} phase", steps, verify=check,
                                     state_dir=None if runner.mode is Mode.PLAN else work))
    return InstallResult(target, prepared, tuple(results), staging)


def build_image(runner: Runner, layout: Layout, out: Path, trees: dict[Role, Path | None],
                esp_files: dict[str, bytes | Path], *, disk_size: int | None = None) -> ImageInfo:
    """A new image at ``out`` holding ``trees`` (one directory per ext4 partition) and ``esp_files``:
    the disk phase and one put step per partition on an :class:`ImageTarget` (the same steps as
    :func:`run_install`, for callers that bring their own content). Built under a temporary name and
    renamed when every step verified: a failed build leaves nothing at ``out``."""
    started = time.monotonic()
    plan = runner.mode is Mode.PLAN
    tmp = out.with_name(f".{out.name}.building")
    target = ImageTarget(runner, layout, out if plan else tmp, size=disk_size,
                         work=out.with_name(f".{out.name}.d"))
    work = out.with_name(f".{out.name}.stage")
    esp = work / "esp"
    put = [put_step(target, Files(Role.ESP, esp, "the ESP's files"))]
    for role, tree in trees.items():
        if tree is not None:
            put.append(put_step(target, Files(role, Path(tree), f"the {role.value} tree")))
    try:
        with runner.step(f"build image {out.name} ({layout.name})"):
            if not plan:
                stage(esp, esp_files)
            run_steps(runner, "disk phase", disk_steps(target, wipe=True), verify=lambda: verify_layout(target))
            run_steps(runner, "content", put)
            info = target.info()
            if not plan:
                os.replace(tmp, out)
                os.replace(target.record_path, out.with_name(out.name + ".labkit.json"))
    except BaseException:
        if not plan:
            tmp.unlink(missing_ok=True)
            target.record_path.unlink(missing_ok=True)
        raise
    finally:
        if not plan:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(target.work, ignore_errors=True)
    return ImageInfo(out, info.size, info.disk_guid, info.content_sha256, info.partitions,
                     build_s=time.monotonic() - started, planned=info.planned)
