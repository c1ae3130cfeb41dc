"""``labkit nixos config`` (write the configuration) and ``labkit nixos install --plan`` (the steps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from labkit.core.errors import InputError
from labkit.core.layout import LAYOUTS, parse_size

if TYPE_CHECKING:
    from labkit.systems.nixos.config import NixosSettings


def _settings(args: argparse.Namespace) -> NixosSettings:
    from labkit.cli.args import ssh_keys
    from labkit.systems.nixos.config import (
        HOME_MANAGER_REPO,
        IMPERMANENCE_REPO,
        Devices,
        NixosSettings,
        Pin,
        User,
    )
    from labkit.systems.nixos.hashes import read_hash_file

    keys = ssh_keys(args.ssh_key or [])
    hashed = read_hash_file(Path(args.hashed_password_file)) if args.hashed_password_file else None
    return NixosSettings(
        user=User(name=args.user, hashed_password=hashed, ssh_keys=tuple(keys)),
        hostname=args.hostname,
        tmpfs_size=args.tmpfs_size,
        devices=Devices.from_layout(LAYOUTS[args.layout]),
        impermanence=args.impermanence,
        home_manager_user=args.home_manager,
        probe=not args.no_probe,
        impermanence_pin=Pin(IMPERMANENCE_REPO, *args.impermanence_pin) if args.impermanence_pin else None,
        home_manager_pin=Pin(HOME_MANAGER_REPO, *args.home_manager_pin) if args.home_manager_pin else None,
    )


def _mem_total(args: argparse.Namespace) -> int:
    from labkit.systems.nixos.config import mem_total_bytes

    if args.machine_ram:
        return parse_size(args.machine_ram)
    return mem_total_bytes(Path(args.meminfo))


def _cmd_config(args: argparse.Namespace) -> int:
    from labkit.core.runner import atomic_write_bytes, atomic_write_text
    from labkit.systems.nixos.config import PROBE_NAME, probe_script, render_module

    settings = _settings(args)
    text = render_module(settings, mem_total=_mem_total(args))
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out} is a directory", "give a file name, e.g. /mnt/data/etc/nixos/labkit.nix")
    # the module carries the password hash: readable by root only (nixos-rebuild runs as root)
    secret = settings.user.hashed_password is not None
    atomic_write_text(out, text, mode=0o600 if secret else 0o644, make_parents=False, what="--out")
    print(f"wrote {out}" + (" (mode 0600: it holds the password hash)" if secret else ""))
    if not args.no_probe:
        atomic_write_bytes(out.parent / PROBE_NAME, probe_script(), mode=0o644, make_parents=False,
                           what="the probe beside --out")
        print(f"wrote {out.parent / PROBE_NAME} (the probe the module runs)")
    return 0


def _cmd_install(args: argparse.Namespace) -> int:
    from labkit.core.runner import Mode, Runner, read_transcript
    from labkit.phases.nixos import InstallParams, build_plan, plan_text, run_plan

    if not args.plan:
        raise InputError("only --plan is available from the command line for now",
                         "run `labkit nixos install --root /mnt --plan`; apply the steps from notebooks/03_nixos.ipynb")
    params = InstallParams(_settings(args), root=Path(args.root), layout=LAYOUTS[args.layout],
                           meminfo=Path(args.meminfo))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(mode=Mode.PLAN, transcript=Path(tmp) / "plan.jsonl", progress=None)
        run_plan(runner, build_plan(params))
        sys.stdout.write(plan_text(read_transcript(Path(tmp) / "plan.jsonl")))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", default="lab", help="the login user (in wheel; default lab)")
    p.add_argument("--hostname", default="labkit-nixos")
    p.add_argument("--hashed-password-file", help="file holding a yescrypt ($y$) or SHA-512 ($6$) hash (mkpasswd)")
    p.add_argument("--ssh-key", action="append", help="an OpenSSH public key, or a .pub file (repeatable)")
    p.add_argument("--tmpfs-size", default="2G", help="size of the tmpfs root: 2G, 512M or 50%% (default 2G)")
    p.add_argument("--impermanence", action="store_true", help="persist machine-id, ssh host keys, /var/lib/nixos, "
                   "/var/log on /data")
    p.add_argument("--impermanence-pin", nargs=2, metavar=("COMMIT", "SHA256"),
                   help="the impermanence revision to fetch and its hash (nix-prefetch-url --unpack "
                        "https://github.com/nix-community/impermanence/archive/COMMIT.tar.gz); required with "
                        "--impermanence: labkit knows no verified one")
    p.add_argument("--home-manager", metavar="USER", help="enable home-manager for USER (the login user)")
    p.add_argument("--home-manager-pin", nargs=2, metavar=("COMMIT", "SHA256"),
                   help="the home-manager revision and its hash (default: labkit's verified pin for the NixOS "
                        "release, 24.05 or 24.11)")
    p.add_argument("--no-probe", action="store_true", help="leave out the measurement probe unit")
    p.add_argument("--layout", default="lab", choices=sorted(LAYOUTS), help="disk layout (partition labels)")
    p.add_argument("--meminfo", default="/proc/meminfo", help="read the machine's RAM from this file")
    p.add_argument("--machine-ram", help="the target machine's RAM (e.g. 8G) instead of --meminfo")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    nixos = subparsers.add_parser("nixos", help="NixOS with a tmpfs root: configuration and install steps")
    sub = nixos.add_subparsers(dest="nixos_cmd", required=True)
    cfg = sub.add_parser("config", help="write labkit's NixOS module (and the probe beside it)")
    cfg.add_argument("--out", required=True, help="the file to write (e.g. labkit.nix)")
    _common(cfg)
    cfg.set_defaults(func=_cmd_config)
    inst = sub.add_parser("install", help="the install steps (--plan: print the commands, run nothing)")
    inst.add_argument("--root", default="/mnt", help="install root (default /mnt)")
    inst.add_argument("--plan", action="store_true", help="print the step sequence without running anything")
    _common(inst)
    inst.set_defaults(func=_cmd_install)
