"""Command line: ``labkit lab`` (the offline lab), ``labkit layout``, ``labkit parse``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from labkit.core.errors import LabkitError


def _cmd_lab(args: argparse.Namespace) -> int:
    from labkit.lab.run import LabParams, run_lab
    from labkit.rehearsal.kernel import default_cache_dir

    params = LabParams(
        out=Path(args.out) if args.out else None,
        boots=args.boots,
        warmup=args.warmup,
        systems=tuple(args.systems),
        world=args.world,
        memory_mib=args.memory,
        boot_timeout_s=args.boot_timeout,
        accel_candidates=tuple(args.accel.split(",")),
        report=not args.no_report,
        keep_image=args.keep_image,
        max_boots=args.max_boots,
        spread_threshold=args.spread_threshold,
        load_cost=args.load_cost,
        load_sets=tuple(x for x in args.load_sets.split(",") if x),
        alpine_iso=Path(args.alpine_iso) if args.alpine_iso else None,
        alpine_iso_sha256=args.alpine_iso_sha256,
        alpine_world=tuple(args.alpine_world or ()),
        nixos_iso=Path(args.nixos_iso) if args.nixos_iso else None,
        nixos_iso_sha256=args.nixos_iso_sha256,
        nixos_ssh_keys=tuple(_ssh_keys(args.nixos_ssh_key or [])),
        nixos_hashed_password_file=Path(args.nixos_hashed_password_file) if args.nixos_hashed_password_file else None,
        nixos_install_memory_mib=args.nixos_install_memory,
        cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
    )
    run = run_lab(params, runs_root=Path(args.runs_root))
    print(f"run {run.run_id}: {len(run.boots) - len(run.failed)}/{len(run.boots)} boots ok, accelerator {run.accel}")
    for b in run.failed:
        print(f"  failed: {b.os} #{b.boot}: {b.reason} (serial log: {run.run_dir / b.serial_log})")
    if run.report:
        print(f"report: {run.report}")
    return 0 if not run.failed else 3


def _ssh_keys(values: list[str]) -> list[str]:
    """Keys given inline or as .pub files."""
    keys: list[str] = []
    for k in values:
        p = Path(k).expanduser()
        if not k.startswith(("ssh-", "ecdsa-", "sk-")) and p.is_file():
            keys += [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        else:
            keys.append(k)
    return keys


def _cmd_layout(args: argparse.Namespace) -> int:
    from labkit.core.layout import LAYOUTS

    layout = LAYOUTS[args.name]
    rows = layout.describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"layout {layout.name}: disk {layout.disk_size} bytes")
    for r in rows:
        print(f"  {r['number']}  {r['name']:<11} {r['type']}  {r['fs']:<5} {r['label']:<8} "
              f"{r['size_h']:>10}  {r['mount']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    lab = sub.add_parser("lab", help="offline QEMU lab: build the image, boot each system, measure, report")
    lab.add_argument("--boots", type=int, default=3, help="measured boots per system (default 3)")
    lab.add_argument("--warmup", type=int, default=1,
                     help="warm-up boots per system, reported but not measured (default 1)")
    lab.add_argument("--out", help="run directory (must be new or empty); default: runs/<run-id>")
    lab.add_argument("--runs-root", default="runs", help="where new run directories go (default runs/)")
    lab.add_argument("--systems", nargs="+", default=["alpine", "nixos"], choices=["alpine", "nixos"])
    lab.add_argument("--world", default="default", help="package set for the guests (base, small, medium, large)")
    lab.add_argument("--memory", type=int, default=512, help="guest RAM in MiB (default 512)")
    lab.add_argument("--boot-timeout", type=float, default=120.0, help="hard limit per boot in seconds")
    lab.add_argument("--accel", default="kvm,tcg", help="accelerators to try in order (default kvm,tcg)")
    lab.add_argument("--no-report", action="store_true", help="skip the HTML report")
    lab.add_argument("--keep-image", action="store_true", help="keep work/disk.img after the run")
    lab.add_argument("--cache-dir", help="cache for the guest kernel (default ~/.cache/labkit)")
    lab.add_argument("--max-boots", type=int, default=None,
                     help="adaptive cap: more boots while the spread of the total is high (default boots+2)")
    lab.add_argument("--spread-threshold", type=float, default=0.05,
                     help="MAD/median of the total boot time above which another round is booted (default 0.05)")
    lab.add_argument("--load-cost", action=argparse.BooleanOptionalAction, default=True,
                     help="boot the Alpine-style guest once per extra package set and fit the load cost (default on)")
    lab.add_argument("--load-sets", default="small,medium,large",
                     help="package sets of the load-cost experiment, comma separated (default small,medium,large)")
    lab.add_argument("--alpine-iso", metavar="PATH",
                     help="real-media path: build the Alpine partition from this Alpine ISO (checksum-checked, "
                          "extracted without mounting, labkit's apkovl) instead of the rehearsal guest")
    lab.add_argument("--alpine-iso-sha256", metavar="HEX",
                     help="the ISO's published sha256 (default: read the .sha256 file beside the ISO)")
    lab.add_argument("--alpine-world", nargs="+", metavar="PKG",
                     help="Alpine packages for the apkovl's world with --alpine-iso (default: alpine-base; "
                          "labkit's rehearsal ISO: its whole repository)")
    lab.add_argument("--nixos-iso", metavar="PATH",
                     help="real-media path: boot this NixOS installer ISO's kernel/initrd, install over the serial "
                          "console, then boot the installed system through rEFInd -> GRUB")
    lab.add_argument("--nixos-iso-sha256", metavar="HEX",
                     help="the ISO's published sha256 (default: read the .sha256 file beside the ISO)")
    lab.add_argument("--nixos-ssh-key", action="append", metavar="KEY",
                     help="with --nixos-iso: an OpenSSH public key (or .pub file) for the installed user (repeatable)")
    lab.add_argument("--nixos-hashed-password-file", metavar="FILE",
                     help="with --nixos-iso: a yescrypt/SHA-512 hash (mkpasswd) for the installed user")
    lab.add_argument("--nixos-install-memory", type=int, default=2048, metavar="MIB",
                     help="memory of the installer VM (default 2048)")
    lab.set_defaults(func=_cmd_lab)

    lay = sub.add_parser("layout", help="show a disk layout")
    lay.add_argument("name", nargs="?", default="seed", choices=["seed", "lab"])
    lay.add_argument("--json", action="store_true")
    lay.set_defaults(func=_cmd_layout)

    from labkit.cli.nixos import register as register_nixos

    register_nixos(sub)

    from labkit.cli.alpine import register as register_alpine

    register_alpine(sub)

    from labkit.cli.disk import register as register_disk

    register_disk(sub)

    from labkit.cli.install import register as register_install

    register_install(sub)

    from labkit.cli.run import register as register_run

    register_run(sub)

    from labkit.cli.parse import register as register_parse

    register_parse(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except LabkitError as exc:
        print(f"labkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130
