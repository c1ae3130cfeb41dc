"""Command line: ``labkit lab`` (the offline lab), ``labkit layout``, ``labkit parse``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.cli.args import ssh_keys, whole
from labkit.core.errors import LabkitError
from labkit.core.text import dumps_json

if TYPE_CHECKING:
    from labkit.lab.run import LabRun


def _cmd_lab(args: argparse.Namespace) -> int:
    from labkit.core.settings import from_args
    from labkit.lab.run import run_lab

    if args.like:
        return _cmd_lab_like(args)
    params = from_args(args, "lab", nixos_ssh_keys=tuple(ssh_keys(args.nixos_ssh_keys or [])))
    if args.reboot_loop:
        return _cmd_lab_loop(args, params)
    if args.rounds is not None:
        from labkit.core.errors import InputError

        raise InputError("--rounds is for --reboot-loop", "add --reboot-loop, or use --boots for a lab run")
    return _report_lab(run_lab(params, runs_root=Path(args.runs_root)))


def _cmd_lab_loop(args: argparse.Namespace, params: Any) -> int:
    """``labkit lab --reboot-loop --rounds N``: the hardware reboot loop, rehearsed on the lab image."""
    from labkit.lab.rebootloop import run_reboot_loop

    run = run_reboot_loop(params, args.rounds or 2, runs_root=Path(args.runs_root), order=args.loop_order,
                          restart_qemu=args.loop_restart_qemu)
    boots = run.collected.boots
    print(f"reboot loop {run.run_dir.name}: plan {' '.join(run.plan)}; {sum(b.ok for b in boots)}/{len(boots)} "
          f"boots measured from /data; QEMU: {run.qemu_reason}; refind.conf restored: {run.restored}")
    for b in boots:
        if not b.ok:
            print(f"  failed: {b.os} #{b.boot}: {b.reason}")
    print(f"results: {run.run_dir / 'results.csv'}; host vs in-guest: {run.run_dir / 'method_check.csv'}")
    return 0 if all(b.ok for b in boots) and run.restored else 3


def _cmd_lab_like(args: argparse.Namespace) -> int:
    """``labkit lab --like RUN_DIR``: the recorded parameters, a warning for every difference in host, tools
    and versions (before the run, and after it for the guest kernel and accelerator)."""
    from labkit.core.errors import InputError
    from labkit.core.settings import meta, names
    from labkit.lab.like import LOCAL_SETTINGS, like_record, load_like, run_differences, setup_differences
    from labkit.lab.run import run_lab
    from labkit.measure.environment import load_environment

    given = [n for n in names() if "lab" in meta(n).scopes and n not in LOCAL_SETTINGS
             and getattr(args, n, None) is not None]
    if given:
        options = ", ".join(meta(n).cli or "--" + n.replace("_", "-") for n in given)
        raise InputError(f"--like takes every parameter from {args.like}/environment.json, but {options} "
                         "was given too", "drop those options, or run without --like")
    local = {n: getattr(args, n) for n in LOCAL_SETTINGS if getattr(args, n, None) is not None}
    params, env, notes = load_like(Path(args.like), **local)
    for n in notes:
        print(f"labkit: warning: {n}", file=sys.stderr)
    diffs = setup_differences(env)
    for key, old, new in diffs:
        print(f"labkit: warning: {key} differs from the recorded run: recorded {old!r}, here {new!r}", file=sys.stderr)
    if not diffs:
        print("labkit: host, tools and versions are the same as in the recorded run", file=sys.stderr)
    run = run_lab(params, runs_root=Path(args.runs_root), record=like_record(Path(args.like), env))
    after = [d for d in run_differences(env, load_environment(run.run_dir)) if d not in diffs]
    for key, old, new in after:
        print(f"labkit: warning: {key} differs from the recorded run: recorded {old!r}, this run {new!r}",
              file=sys.stderr)
    print(f"compare the two: labkit merge {args.like} {run.run_dir} --out <folder>")
    return _report_lab(run)


def _report_lab(run: LabRun) -> int:
    print(f"run {run.run_id}: {len(run.boots) - len(run.failed)}/{len(run.boots)} boots ok, accelerator {run.accel}")
    for b in run.failed:
        print(f"  failed: {b.os} #{b.boot}: {b.reason} (serial log: {run.run_dir / b.serial_log})")
    if run.report:
        print(f"report: {run.report}")
    return 0 if not run.failed else 3


def _cmd_layout(args: argparse.Namespace) -> int:
    from labkit.core.layout import LAYOUTS

    layout = LAYOUTS[args.name]
    rows = layout.describe()
    if args.json:
        print(dumps_json(rows, indent=2))
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
    from labkit.core.settings import add_arguments

    add_arguments(lab, "lab")
    lab.add_argument("--runs-root", default="runs", help="where new run directories go (default runs/)")
    lab.add_argument("--like", metavar="RUN_DIR",
                     help="run again with the parameters recorded in RUN_DIR/environment.json, warning about every "
                          "difference in host, tools and versions (then: labkit merge RUN_DIR NEW --out DIR)")
    lab.add_argument("--reboot-loop", action="store_true",
                     help="rehearse the hardware reboot loop (labkit measure arm/collect) on the lab image: one QEMU "
                          "run, the guests reboot themselves, bundles collected from the image's /data")
    lab.add_argument("--rounds", type=whole(1, 50), help="with --reboot-loop: boots of each system (default 2)")
    lab.add_argument("--loop-order", default="interleaved", choices=["interleaved", "blocked"],
                     help="with --reboot-loop: the boot order (default interleaved)")
    lab.add_argument("--loop-restart-qemu", action="store_true",
                     help="with --reboot-loop: QEMU with -no-reboot, started again after each guest reboot (a cold "
                          "start per boot, to cross-check the warm reboots)")
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

    from labkit.cli.settings import register as register_settings

    register_settings(sub)

    from labkit.cli.run import register as register_run

    register_run(sub)

    from labkit.cli.parse import register as register_parse

    register_parse(sub)

    from labkit.cli.matrix import register as register_matrix

    register_matrix(sub)

    from labkit.cli.measure import register as register_measure

    register_measure(sub)
    return p


def _say_error(text: str) -> None:
    from labkit.core.text import printable

    lines = [printable(ln) for ln in str(text).split("\n")]
    print("labkit: error: " + "\n".join(lines), file=sys.stderr)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
        return rc
    except BrokenPipeError:
        # the reader went away (`labkit ... | head`): stop quietly, like a C tool killed by SIGPIPE
        _quiet_stdout()
        return 141
    except LabkitError as exc:
        _say_error(str(exc))
        return 2
    except OSError as exc:
        # a path the user gave that the command could not use (every labkit error names its fix;
        # this is the net for the rest)
        from labkit.core.files import os_error

        where = exc.filename if exc.filename is not None else "a file"
        _say_error(str(os_error(exc, where, "use")))
        return 2
    except KeyboardInterrupt:
        print("labkit: interrupted", file=sys.stderr)
        return 130
