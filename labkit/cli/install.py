"""``labkit install`` (the whole install on a block device) and ``labkit boot`` (boot a disk in QEMU)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from labkit.cli.args import assignment, decimal, whole
from labkit.core.files import check_output_dir
from labkit.core.layout import LAYOUTS


def _cmd_install(args: argparse.Namespace) -> int:
    from labkit.core.layout import parse_size
    from labkit.core.runner import Mode, Runner
    from labkit.core.steps import plan_lines
    from labkit.phases.install import InstallOptions, alpine_login, run_install
    from labkit.targets.device import DeviceTarget, PlanTarget

    layout = LAYOUTS[args.layout]
    if args.size:
        layout = layout.with_sizes(**{role: parse_size(value) for role, value in args.size})
    out = check_output_dir(Path(args.out) if args.out else Path("runs") / f"install-{Path(args.device).name}")
    mode = Mode.PLAN if args.plan else Mode.APPLY
    runner = Runner(mode=mode, transcript=out / ("plan.jsonl" if args.plan else "transcript.jsonl"))
    common: dict[str, Any] = {"confirm": args.confirm, "wipe": args.wipe, "allow_removable": args.allow_removable,
                              "state_path": out / "disk-state.json", "work": out / "mnt"}
    target = PlanTarget(runner, layout, args.device, **common) if args.plan else DeviceTarget(
        runner, layout, args.device, **common)
    login = None
    if "alpine" in args.systems and not args.no_login:  # the disk is somebody's: they must be able to log in
        login = alpine_login(args.alpine_root_password_hash_file, args.alpine_ssh_key or ())
    opts = InstallOptions(systems=tuple(args.systems), world=args.world, alpine_iso=_path(args.alpine_iso),
                          alpine_iso_sha256=args.alpine_iso_sha256, alpine_world=tuple(args.alpine_world or ()),
                          alpine_media=args.alpine_media or _media_name(target), hostname=args.hostname,
                          cache_dir=_path(args.cache_dir), alpine_login=login,
                          alpine_rootfs=_path(args.alpine_rootfs))
    res = run_install(target, opts, out / "work", wipe=args.wipe)
    if args.plan:
        print(f"plan for {target.describe()} — nothing was executed:")
        for r in res.phases:
            print(f"\n## {r.phase}")
            for line in plan_lines(r):
                print(f"  {line}")
        return 0
    ran = sum(len(r.ran) for r in res.phases)
    skipped = sum(len(r.skipped) for r in res.phases)
    print(f"installed on {target.describe()}: {ran} step(s) applied, {skipped} done already")
    print(f"transcript: {out / 'transcript.jsonl'}")
    print(f"boot it: labkit boot --disk {args.device} --system {args.systems[0]}")
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _media_name(target: Any) -> str:
    """The Alpine partition's kernel name where the disk will boot: the device's own (sda4, nvme0n1p4),
    except for a loop device, which boots in the lab VM as a virtio disk (vda4)."""
    from labkit.core.layout import Role

    disk = getattr(target, "disk", None)
    number = target.layout.extent(Role.ALPINE, target.disk_size).number
    if disk is None or disk.name.startswith("loop"):
        return f"vda{number}"
    return f"{disk.name}{'p' if disk.name[-1].isdigit() else ''}{number}"


def _cmd_boot(args: argparse.Namespace) -> int:
    from labkit.core.runner import Runner
    from labkit.lab.diskboot import boot_disk

    out = check_output_dir(Path(args.out) if args.out else Path("runs") / f"boot-{Path(args.disk).name}-{args.system}")
    runner = Runner(transcript=out / "transcript.jsonl")
    res = boot_disk(runner, Path(args.disk), args.system, out, memory_mib=args.memory, timeout_s=args.boot_timeout,
                    accel_candidates=tuple(args.accel.split(",")))
    print(f"{args.system} ({res.title}): {'ok' if res.record.ok else 'FAILED'} in {res.record.wall_s:.1f} s, "
          f"{len(res.rows)} result rows")
    print(f"results: {out / 'results.csv'}  serial: {out / res.record.serial_log}")
    return 0


def register(sub: Any) -> None:
    ins = sub.add_parser("install", help="the whole install (disk, rEFInd, NixOS, Alpine) on a block device")
    ins.add_argument("--device", required=True, help="the whole disk, e.g. /dev/sdX (see `labkit disks`)")
    ins.add_argument("--confirm", required=True, help="the disk's fingerprint as `labkit disks` shows it")
    ins.add_argument("--wipe", action="store_true",
                     help="ERASES the disk's partitions if they are not labkit's layout (needs --confirm)")
    ins.add_argument("--plan", action="store_true", help="print every command, execute none")
    ins.add_argument("--layout", default="seed", choices=sorted(LAYOUTS))
    ins.add_argument("--size", action="append", default=[], metavar="ROLE=SIZE", type=assignment,
                     help="resize a partition, e.g. nix_store=64G (repeatable)")
    ins.add_argument("--systems", nargs="+", default=["nixos", "alpine"], choices=["nixos", "alpine"])
    ins.add_argument("--world", default="default", help="the rehearsal guests' package set (without an ISO)")
    ins.add_argument("--alpine-iso", metavar="PATH", help="copy Alpine from this ISO (checksum-checked)")
    ins.add_argument("--alpine-iso-sha256", metavar="HEX", help="its published sha256 (default: the .sha256 beside it)")
    ins.add_argument("--alpine-world", nargs="+", metavar="PKG", help="Alpine packages for the apkovl's world")
    ins.add_argument("--alpine-media", metavar="NAME",
                     help="the Alpine partition's name where the disk boots (default: the device's, vda4 for a loop)")
    ins.add_argument("--alpine-rootfs", metavar="PATH",
                     help="the official Alpine minirootfs for the Alpine-style rehearsal (without --alpine-iso): its "
                          "apk-tools installs the packages (default: $LABKIT_ALPINE_ROOTFS, a cached copy, a download)")
    ins.add_argument("--hostname", default="alpinelab", help="Alpine's hostname (default alpinelab)")
    ins.add_argument("--alpine-root-password-hash-file", metavar="FILE",
                     help="root's crypt(3) hash for Alpine, alone in a file (openssl passwd -6 > FILE)")
    ins.add_argument("--alpine-ssh-key", nargs="+", metavar="KEY",
                     help="OpenSSH public keys (or .pub files) for Alpine's root (openssh joins its world)")
    ins.add_argument("--no-login", action="store_true",
                     help="a measurement-only Alpine: nobody can log in, it powers off after the probe (as in the lab)")
    ins.add_argument("--allow-removable", action="store_true")
    ins.add_argument("--cache-dir", help="cache for the guest kernel (default ~/.cache/labkit)")
    ins.add_argument("--out", help="transcript, state and work folder (default runs/install-<device>)")
    ins.set_defaults(func=_cmd_install)

    boot = sub.add_parser("boot", help="boot a disk or image file in QEMU through rEFInd and measure it once")
    boot.add_argument("--disk", required=True, help="an image file or a block device labkit installed")
    boot.add_argument("--system", required=True, choices=["nixos", "alpine"])
    boot.add_argument("--out", help="run folder (default runs/boot-<disk>-<system>)")
    boot.add_argument("--memory", type=whole(256, 1024 * 1024), default=512, help="guest RAM in MiB (default 512)")
    boot.add_argument("--boot-timeout", type=decimal(1, 86400), default=300.0,
                      help="hard limit in seconds (default 300)")
    boot.add_argument("--accel", default="kvm,tcg", help="accelerators to try in order (default kvm,tcg)")
    boot.set_defaults(func=_cmd_boot)
