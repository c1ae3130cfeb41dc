"""``labkit matrix`` (a grid of lab runs on Dask) and ``labkit merge`` (run folders into one report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_matrix(args: argparse.Namespace) -> int:
    from labkit.core.settings import from_args
    from labkit.lab.matrix import parse_grid, run_matrix

    grid = parse_grid(args.grid)
    base = from_args(args, "lab")
    run = run_matrix(grid, base, Path(args.out) if args.out else None, runs_root=Path(args.runs_root),
                     scheduler=args.scheduler, workers=args.workers,
                     retries=args.retries, report=base.report, log=sys.stderr)
    for c in run.cells:
        last = c.attempts[-1] if c.attempts else {}
        print(f"  {c.status:<6} {c.cell.cell_id}  attempts {len(c.attempts)}"
              + (f"  ({last.get('reason')})" if c.status != "ok" and last else ""))
    print(f"matrix {run.matrix_id}: {len(run.cells) - len(run.failed)}/{len(run.cells)} cells ok in {run.wall_s:.0f} s;"
          f" folder {run.out}")
    if run.report:
        print(f"report: {run.report}")
    return 0 if not run.failed else 3


def _cmd_merge(args: argparse.Namespace) -> int:
    from labkit.report.merge import merge_runs, overlap_view

    merged = merge_runs(args.run_dirs, Path(args.out) if args.out else None, runs_root=Path(args.runs_root))
    for n in merged.notes:
        print(f"labkit: note: {n}", file=sys.stderr)
    print(f"merged {len(merged.runs)} run(s) from {len(merged.hosts)} host(s) into {merged.out}; factors: "
          f"{', '.join(merged.factors) or 'none (every parameter is the same)'}")
    view = overlap_view(merged.overlap)
    for (a, b), pair in view.groupby(["run A", "run B"], sort=False):
        print(f"do the 95 % confidence intervals of the median overlap? A = {a}, B = {b}")
        for r in pair.to_dict("records"):
            print(f"  {r['metric']:<30} {r['os']:<18} A {r['A: median [95 % CI]']:<32} "
                  f"B {r['B: median [95 % CI]']:<32} {r['overlap']}")
    if merged.rows == 0:
        print("no result row in these runs (every boot failed): merged, but no report")
    elif not args.no_report:
        from labkit.report.report import render_report

        print(f"report: {render_report(merged.out)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    m = sub.add_parser("matrix", help="a grid of lab runs (one per cell) on a Dask cluster, merged into one report")
    m.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a lab parameter and its values (repeatable; cells = every combination), e.g. "
                        "memory=384,512 or world=small,default or systems=alpine+nixos,alpine")
    m.add_argument("--out", help="the matrix folder (new or empty): cells/, results.csv, report.html; "
                                 "default: a new runs/<run-id>")
    m.add_argument("--runs-root", default="runs", help="where new run folders go (default runs/)")
    m.add_argument("--scheduler", metavar="tcp://HOST:8786",
                   help="a running Dask scheduler (its workers run the cells); default: a local cluster")
    m.add_argument("--workers", type=int, default=1,
                   help="local cluster only: worker processes, one boot each (default 1: boots never share this host)")
    m.add_argument("--retries", type=int, default=2,
                   help="extra attempts for a cell lost to the infrastructure (worker lost, QEMU failed to start); "
                        "a cell whose guest failed is never retried (default 2)")
    from labkit.core.settings import add_arguments

    # what every cell shares: the options of `labkit lab` (one settings table), but where the cells go
    add_arguments(m, "lab", skip=("out", "keep_image", "nixos_ssh_keys", "nixos_hashed_password_file"))
    m.set_defaults(func=_cmd_matrix)

    g = sub.add_parser("merge", help="merge run folders (from here or copied from other machines) into one report")
    g.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or merged/matrix folders")
    g.add_argument("--out", help="the merged folder (new or empty; default: a new runs/<run-id>)")
    g.add_argument("--runs-root", default="runs", help="where new run folders go (default runs/)")
    g.add_argument("--no-report", action="store_true", help="write the merged tables but skip the HTML report")
    g.set_defaults(func=_cmd_merge)
