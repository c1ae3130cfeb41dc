"""``labkit measure arm | disarm | collect``: the reboot loop that benchmarks both systems on a real PC."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from labkit.cli.args import assignment, whole

DEFAULT_DATA = "/data"
DEFAULT_ESP = "/boot/efi"


def _place(args: argparse.Namespace) -> Any:
    from labkit.core.runner import Runner
    from labkit.lab.hwloop import locate

    runner = Runner(progress=None)
    data = Path(args.data)
    esp = Path(args.esp) if getattr(args, "esp", None) else None
    if data.is_dir() and esp is None and Path(DEFAULT_ESP).is_dir():
        esp = Path(DEFAULT_ESP)
    place = locate(runner, data, esp)
    if place.disk is not None:
        from labkit.lab.diskboot import check_disk_free

        check_disk_free(runner, place.disk)
    return runner, place


def _cmd_arm(args: argparse.Namespace) -> int:
    from labkit.core.errors import InputError
    from labkit.lab.hwloop import arm

    runner, place = _place(args)
    if place.esp_dir is None and place.disk is None:
        raise InputError(f"no ESP at {DEFAULT_ESP}", "pass --esp with the mounted ESP (it holds EFI/BOOT/refind.conf)")
    titles = dict(args.title)
    state = arm(runner, place, rounds=args.rounds, systems=tuple(args.systems), order=args.order, titles=titles,
                max_gap_s=args.max_gap)
    print(f"armed: {len(state['plan'])} boots ({' '.join(state['plan'])}); rEFInd's default is now "
          f"{state['title_' + state['plan'][0]]!r} (the original refind.conf is kept as refind.conf.labkit-orig)")
    print("reboot to start; stop it at any time with `labkit measure disarm`")
    return 0


def _cmd_disarm(args: argparse.Namespace) -> int:
    from labkit.lab.hwloop import disarm

    runner, place = _place(args)
    state = disarm(runner, place)
    done = sum(1 for b in state.get("boots", []) if b.get("status") == "ok")
    print(f"disarmed; the original refind.conf is back. {done} boot(s) recorded: collect them with "
          "`labkit measure collect --data ... --out DIR`")
    return 0


def _cmd_collect(args: argparse.Namespace) -> int:
    from labkit.core.files import check_output_dir
    from labkit.lab.hwloop import collect

    runner, place = _place(args)
    out = check_output_dir(Path(args.out))
    res = collect(runner, place, out, report=not args.no_report)
    ok = sum(r.ok for r in res.boots)
    print(f"{res.label}: {ok} boot(s) measured, {len(res.boots) - ok} failed → {out}")
    if res.state is not None:
        print(f"loop: armed={json.dumps(res.state.get('armed'))}, {res.state.get('reason', '')}")
    return 0


def register(sub: Any) -> None:
    m = sub.add_parser("measure", help="the reboot loop that measures both systems on the real PC (arm, disarm, "
                                       "collect)")
    msub = m.add_subparsers(dest="measure_cmd", required=True)
    data_help = (f"the mounted /data directory (default {DEFAULT_DATA}), or the disk image / block device "
                 "holding it (read and written without mounting)")
    a = msub.add_parser("arm", help="arm the loop: the next boots alternate between the systems, each one's probe "
                                    "rebooting into the next")
    a.add_argument("--rounds", type=whole(1, 200), required=True, help="boots of each system")
    a.add_argument("--systems", nargs="+", default=["nixos", "alpine"], choices=["nixos", "alpine"])
    a.add_argument("--order", default="interleaved", choices=["interleaved", "blocked"],
                   help="interleaved: nixos alpine nixos alpine ...; blocked: nixos nixos ... alpine alpine ...")
    a.add_argument("--data", default=DEFAULT_DATA, help=data_help)
    a.add_argument("--esp", help=f"the mounted ESP (default {DEFAULT_ESP}; not with a disk image)")
    a.add_argument("--title", action="append", default=[], type=assignment, metavar="SYSTEM=TEXT",
                   help="the rEFInd entry of a system, a piece of its title (default: the one entry naming it)")
    a.add_argument("--max-gap", type=whole(30, 86400), default=900,
                   help="seconds after the loop's reboot within which the next boot must come back, else it is "
                        "recorded as failed (default 900)")
    a.set_defaults(func=_cmd_arm)
    d = msub.add_parser("disarm", help="stop the loop: restore the original refind.conf, mark the loop disarmed")
    d.add_argument("--data", default=DEFAULT_DATA, help=data_help)
    d.add_argument("--esp", help=f"the mounted ESP (default {DEFAULT_ESP}; not with a disk image)")
    d.set_defaults(func=_cmd_disarm)
    c = msub.add_parser("collect", help="turn the bundles on /data into a run folder (results.csv, boots.csv, "
                                        "environment.json, report.html)")
    c.add_argument("--data", default=DEFAULT_DATA, help=data_help)
    c.add_argument("--out", required=True, help="the run folder to write")
    c.add_argument("--no-report", action="store_true", help="skip report.html")
    c.set_defaults(func=_cmd_collect)
