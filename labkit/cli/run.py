"""``labkit run``: the notebook chain (00_overview → 06_report) executed with papermill."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from labkit.cli.args import decimal


def _cmd_run(args: argparse.Namespace) -> int:
    from labkit.core.settings import Settings
    from labkit.guide.chain import chain_notebooks, declared_parameters, run_chain, split_assignments
    from labkit.guide.params import parse_assignment

    if args.list:
        for nb in chain_notebooks():
            names = ", ".join(f"{k}={v.get('default')}" for k, v in declared_parameters(nb).items())
            print(f"{nb.stem}: {names}")
        return 0
    pairs = [parse_assignment(p) for p in args.param]
    for name in ("target", "device", "fingerprint"):
        value = getattr(args, name, None)
        if value:
            pairs.insert(0, (name, value))
    params, extra = split_assignments(pairs, Settings)
    run = run_chain(params, out=Path(args.out) if args.out else None, runs_root=Path(args.runs_root),
                    start_from=args.start_from, extra=extra, timeout_s=args.timeout, log=sys.stderr)
    print(f"run directory: {run.run_dir}")
    print(f"index: {run.index}")
    for s in run.steps:
        print(f"  {s.status:<7} {s.name}" + (f"  ({s.reason})" if s.reason else ""))
    return 0 if run.ok else 4


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("run", help="execute the notebook chain with papermill into runs/<id>/ (index.html)")
    p.add_argument("--target", default="plan", choices=["plan", "lab", "disk"],
                   help="plan: show every command, change nothing (default); lab: QEMU image; disk: a real device")
    p.add_argument("--device", help="the disk for --target disk (see `labkit disks`)")
    p.add_argument("--confirm", dest="fingerprint", help="that disk's fingerprint, typed from `labkit disks`")
    p.add_argument("--out", help="run directory (new or empty; with --from: the run to resume)")
    p.add_argument("--runs-root", default="runs", help="where new run directories go (default runs/)")
    p.add_argument("--from", dest="start_from", metavar="NOTEBOOK",
                   help="resume the run in --out from this notebook (e.g. 03_nixos)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter for every notebook declaring KEY (or NOTEBOOK.KEY for one notebook)")
    p.add_argument("--timeout", type=decimal(1, 7 * 86400), default=1800.0, help="per-cell timeout in seconds")
    p.add_argument("--list", action="store_true", help="list the chain's notebooks and their parameters")
    p.set_defaults(func=_cmd_run)
