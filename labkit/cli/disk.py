"""``labkit disks [--json]`` and ``labkit disk apply --device DEV --confirm FP [...]``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from labkit.cli.args import assignment
from labkit.core.layout import LAYOUTS, human
from labkit.core.text import dumps_json


def _cmd_disks(args: argparse.Namespace) -> int:
    from labkit.core.runner import Runner
    from labkit.targets.disks import discover
    from labkit.targets.safety import check_disk

    layout = LAYOUTS[args.layout]
    rows: list[dict[str, Any]] = []
    for d in discover(Runner(progress=None)):
        # which rules refuse this disk as it is now (confirmation is a separate, explicit step)
        findings = check_disk(d, layout, confirm=d.fingerprint)
        row = dataclasses.asdict(d)
        row.update(fingerprint=d.fingerprint, refusals=[{"code": f.code.value, "message": f.message, "fix": f.fix}
                                                        for f in findings])
        rows.append(row)
    if args.json:
        print(dumps_json(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['path']:<14} {r['fingerprint']}  {r['model'] or '?':<12} {human(r['size']):>10}  "
              f"{r['pttype'] or '-':<4} {len(r['partitions'])} part.")
        for f in r["refusals"]:
            print(f"    refused [{f['code']}]: {f['message']}")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from labkit.core.files import check_output_dir
    from labkit.core.layout import parse_size
    from labkit.core.runner import Mode, Runner
    from labkit.phases.disk import DiskParams, run_disk_phase

    layout = LAYOUTS[args.layout]
    if args.size:
        layout = layout.with_sizes(**{k: parse_size(v) for k, v in args.size})
    work = check_output_dir(Path(args.workdir), what="the work directory (--workdir)")
    runner = Runner(mode=Mode.PLAN if args.plan else Mode.APPLY, transcript=work / "transcript.jsonl")
    params = DiskParams(args.device, layout, args.confirm, wipe=args.wipe, allow_removable=args.allow_removable,
                        state_path=work / "disk-state.json")
    res = run_disk_phase(runner, params)
    if args.plan:
        if res.disk is None:
            # a plan without the disk (a lesson prepared away from the machine): say so, so that a mistyped
            # device name is not taken for a disk labkit has read
            from labkit.core.text import printable

            print(f"warning: {printable(args.device)} is not a disk here (no such device): this plan assumes an "
                  f"empty disk of {human(layout.disk_size)}; without --plan labkit would refuse it. "
                  "`labkit disks` lists the disks and their fingerprints.", file=sys.stderr)
        print("plan (nothing was executed):")
        for c in res.mutating:
            print(f"  {c.shell()}")
    else:
        print(f"done: {len(res.ran)} step(s) applied, {len(res.skipped)} already done")
        if res.disk is not None:
            print(f"disk is now {res.disk.describe()}")
    return 0


def register(sub: Any) -> None:
    """Add ``disks`` and ``disk apply`` to the ``labkit`` subparsers."""
    ls = sub.add_parser("disks", help="list disks with their fingerprint and refusal reasons")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--layout", default="seed", choices=sorted(LAYOUTS), help="layout to check sizes against")
    ls.set_defaults(func=_cmd_disks)

    disk = sub.add_parser("disk", help="the disk phase on a real block device")
    dsub = disk.add_subparsers(dest="disk_cmd", required=True)
    ap = dsub.add_parser("apply", help="partition and format DEV after the safety checks")
    ap.add_argument("--device", required=True)
    ap.add_argument("--confirm", required=True, help="the disk's fingerprint as shown by `labkit disks`")
    ap.add_argument("--layout", default="seed", choices=sorted(LAYOUTS))
    ap.add_argument("--size", action="append", default=[], metavar="ROLE=SIZE", type=assignment,
                    help="resize a partition, e.g. nix_store=64G (repeatable)")
    ap.add_argument("--plan", action="store_true", help="print the commands, execute none")
    ap.add_argument("--wipe", action="store_true", help="destroy existing partitions (with --confirm)")
    ap.add_argument("--allow-removable", action="store_true")
    ap.add_argument("--workdir", default="runs/disk", help="transcript and state file (default runs/disk)")
    ap.set_defaults(func=_cmd_apply)
