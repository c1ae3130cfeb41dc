"""``labkit alpine ...``: apkovl, audit, diff, extract, predict, answers."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from labkit.cli.args import whole
from labkit.core.errors import InputError
from labkit.core.text import dumps_json, printable


def _read_indexes(paths: list[str]) -> list[Any]:
    from labkit.systems.alpine.apkindex import read_apkindex

    return [p for idx in paths for p in read_apkindex(Path(idx))]


def _apkovl(args: argparse.Namespace) -> int:
    from labkit.core.files import read_user_text
    from labkit.systems.alpine.apkindex import Index, package_set
    from labkit.systems.alpine.apkovl import ApkovlSpec, User, read_password_hash_file, write_apkovl

    for opt in ("root_password_hash", "user_password_hash"):
        if getattr(args, opt) is not None:
            flag = "--" + opt.replace("_", "-")
            raise InputError(f"{flag} takes the hash on the command line, where shell history and ps keep it",
                             f"write the hash alone in a file (openssl passwd -6 > FILE) and pass {flag}-file FILE")
    world = tuple(args.world or ()) + tuple(p for s in args.set or () for p in package_set(s))
    user_hash = (read_password_hash_file(Path(args.user_password_hash_file), "the users")
                 if args.user_password_hash_file else "!")
    users = tuple(User(name=u, password_hash=user_hash, uid=1000 + i) for i, u in enumerate(args.user or ()))
    keys = tuple(key.strip() for k in args.root_ssh_key or ()
                 for key in read_user_text(Path(k), what="the SSH public key file", limit=1024 * 1024,
                                           fix="give the path of a .pub file").strip().splitlines()
                 if key.strip() and not key.startswith("#"))
    probe = read_user_text(Path(args.probe), what="the probe script (--probe)", limit=16 * 1024 * 1024,
                           fix="give the path of a POSIX sh script") if args.probe else None
    root_hash = (read_password_hash_file(Path(args.root_password_hash_file), "root")
                 if args.root_password_hash_file else "*")
    spec = ApkovlSpec(
        hostname=args.hostname, media=args.media, media_uuid=args.media_uuid, world=world or ("alpine-base",),
        mirror=args.mirror, lbu_include=tuple(args.include or ()), lbu_exclude=tuple(args.exclude or ()),
        root_password_hash=root_hash, root_ssh_keys=keys, users=users,
        probe=probe, rc_logger=not args.no_rc_logger, root_size=args.root_size, no_login=args.no_login,
    )
    if args.index:
        # the diskless boot installs with APK_FORCE_BROKEN_WORLD: a name the media's repository lacks is
        # dropped without an error (apk.md section 0.2), so it is refused here, before anything is written
        Index(_read_indexes(args.index)).closure(spec.world)
    out = write_apkovl(spec, Path(args.out), make_parents=False)
    print(f"wrote {out}")
    if spec.no_login:
        print("note: --no-login: nobody can log in to this system (a measurement-only apkovl)")
    if spec.kernel_args():
        print(f"kernel options for refind_linux.conf: {' '.join(spec.kernel_args())}")
    return 0


def _audit_disk(args: argparse.Namespace) -> int:
    from labkit.core.runner import Runner
    from labkit.systems.alpine.diskaudit import audit_disk

    res = audit_disk(Runner(), Path(args.file))
    if args.json:
        print(dumps_json(res.as_json(), indent=2))
    else:
        for p in res.partitions:
            what = (f"{len(p.apkovls)} apkovl(s) {', '.join(p.apkovls) or '-'}; "
                    f"boot repositories {', '.join(p.repositories) or '-'}") if not p.note else p.note
            print(f"{p.where:<14} {p.fstype or '-':<6} {p.label or '-':<10} {what}")
        for f in res.findings:
            print(f"{f.severity}: {f.path}: {f.message}")
        for key, (ovl, fs) in res.apkovls.items():
            print(f"{key}: {len(ovl.members)} entries, {ovl.total_size} bytes of files")
            for f in fs:
                print(f"  {f.severity}: {f.path}: {f.message}")
    warn = [f for f in res.findings if f.severity == "warning"]
    warn += [f for _o, fs in res.apkovls.values() for f in fs if f.severity == "warning"]
    return 1 if warn else 0


def _audit(args: argparse.Namespace) -> int:
    from labkit.systems.alpine.audit import as_json, audit_file
    from labkit.systems.alpine.diskaudit import looks_like_apkovl

    path = Path(args.file)
    fix = "give an .apkovl.tar.gz, a disk image or a block device"
    if not path.exists():
        raise InputError(f"{printable(str(path))} does not exist", fix)
    if path.is_dir():
        raise InputError(f"{printable(str(path))} is a directory, not an apkovl or a disk", fix)
    if not looks_like_apkovl(path):  # a disk image or a block device: every partition
        return _audit_disk(args)
    ovl, findings = audit_file(Path(args.file), large=args.large)
    if args.json:
        print(dumps_json(as_json(ovl, findings), indent=2))  # JSON escapes control characters itself
    else:
        # names come from the archive: control characters (terminal escapes) are printed escaped
        for m in ovl.members:
            print(f"{m.mode:04o} {printable(m.owner):<13} {m.size:>8}  {printable(m.name)}"
                  f"{'/' if m.kind == 'dir' else ''}{' -> ' + printable(m.target) if m.target else ''}")
        print(f"{len(ovl.members)} entries, {ovl.total_size} bytes of files, {ovl.compressed_size} bytes compressed")
        for f in findings:
            print(f"{f.severity}: {printable(f.path)}: {f.message}")
    return 1 if any(f.severity == "warning" for f in findings) else 0


def _diff(args: argparse.Namespace) -> int:
    from labkit.systems.alpine.audit import diff, read_apkovl

    d = diff(read_apkovl(Path(args.a)), read_apkovl(Path(args.b)), mtimes=args.mtimes)
    print("\n".join(d.lines()) if not d.empty else "no differences")
    return 0 if d.empty else 1


def _extract(args: argparse.Namespace) -> int:
    from labkit.core.runner import Mode, Runner
    from labkit.systems.alpine.extract import extract_iso

    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory; extract writes a tree (apks/, boot/) into a folder",
                         "give a new or existing folder, e.g. the mounted Alpine partition")
    runner = Runner(mode=Mode.PLAN if args.plan else Mode.APPLY)
    info = extract_iso(runner, Path(args.iso), out, flavor=args.flavor, lab=not args.no_serial)
    print(f"Alpine {info.release or '?'} ({', '.join(info.flavors)}) -> {args.dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from labkit.systems.alpine.apkindex import package_set, predict, read_apkindex
    from labkit.systems.alpine.rules import check_world_entry

    world = list(args.world or []) + [p for s in args.set or [] for p in package_set(s)]
    if not world:
        raise InputError("no world given", "pass --world PKG... or --set base|dillo|sylpheed|firefox")
    for w in world:
        check_world_entry(w)
    pkgs = [p for idx in args.index for p in read_apkindex(Path(idx))]
    pred = predict(pkgs, world)
    s: dict[str, Any] = pred.summary()
    if args.json:
        print(dumps_json(s | {"closure": [p.name for p in pred.packages]}, indent=2))
    else:
        print(f"{s['packages']} packages: download {s['download_bytes']} bytes, installed (RAM) {s['ram_bytes']} bytes")
    return 0


def _answers(args: argparse.Namespace) -> int:
    import shlex

    from labkit.systems.alpine.answers import AnswerSpec, answer_file, post_commands

    spec = AnswerSpec(hostname=args.hostname, media=args.media, user=args.user)
    text = answer_file(spec)
    cmds = post_commands(tuple(args.include or ()), tuple(args.exclude or ()))
    if args.out:
        from labkit.core.runner import atomic_write_text

        atomic_write_text(Path(args.out), text, make_parents=False, what="--out")
    else:
        print(text, end="")
    print("# then, on the installed system:")
    for cmd in cmds:
        print("#   " + shlex.join(cmd))
    return 0


def register(subparsers: Any) -> None:
    al = subparsers.add_parser("alpine", help="Alpine media, apkovl, audit and package-set prediction")
    sub = al.add_subparsers(dest="alpine_cmd", required=True)

    ap = sub.add_parser("apkovl", help="write a declarative <hostname>.apkovl.tar.gz")
    ap.add_argument("--out", required=True, help="output file, or a directory")
    ap.add_argument("--hostname", default="alpinelab")
    ap.add_argument("--world", nargs="+", help="packages for etc/apk/world")
    ap.add_argument("--set", nargs="+", help="package sets: base, +dillo, +sylpheed, +firefox")
    ap.add_argument("--media", default="sda4", help="LBU media device (default sda4)")
    ap.add_argument("--media-uuid", help="filesystem UUID of the media (adds the fstab line)")
    ap.add_argument("--mirror", help="extra repository base, e.g. https://dl-cdn.alpinelinux.org/alpine/v3.20")
    ap.add_argument("--include", nargs="+", help="lbu include paths (relative)")
    ap.add_argument("--exclude", nargs="+", help="lbu exclude paths (relative)")
    ap.add_argument("--root-password-hash-file",
                    help="file holding root's crypt(3) hash (openssl passwd -6 > FILE); musl: not yescrypt")
    ap.add_argument("--root-password-hash", help=argparse.SUPPRESS)  # refused: hashes come from a file
    ap.add_argument("--root-ssh-key", nargs="+", help="public key files for root (add openssh to --world)")
    ap.add_argument("--user", nargs="+", help="extra users (locked password unless --user-password-hash-file)")
    ap.add_argument("--user-password-hash-file", help="file holding the users' crypt(3) hash")
    ap.add_argument("--user-password-hash", help=argparse.SUPPRESS)  # refused: hashes come from a file
    ap.add_argument("--no-login", action="store_true",
                    help="a measurement-only apkovl nobody can log in to (else a locked one is refused)")
    ap.add_argument("--probe", help="script installed as etc/local.d/labkit-probe.start")
    ap.add_argument("--no-rc-logger", action="store_true")
    ap.add_argument("--root-size", help="tmpfs root size (rootflags=size=), e.g. 512m or 75%%")
    ap.add_argument("--index", nargs="+", metavar="APKINDEX",
                    help="the media's APKINDEX.tar.gz (e.g. apks/x86_64/APKINDEX.tar.gz of the ISO): refuse world "
                         "packages it does not carry (the diskless boot would drop them silently)")
    ap.set_defaults(func=_apkovl)

    au = sub.add_parser("audit", help="list an apkovl, its size and what should not be in it; or, given a disk "
                        "image or device, every apkovl and boot repository the initramfs would find on it")
    au.add_argument("file", help="an apkovl, or a disk image / block device (all partitions are read)")
    au.add_argument("--json", action="store_true")
    au.add_argument("--large", type=whole(0, 2**62), default=1024 * 1024,
                    help="size threshold in bytes (default 1 MiB)")
    au.set_defaults(func=_audit)

    di = sub.add_parser("diff", help="compare two apkovls (A added, D deleted, U updated)")
    di.add_argument("a")
    di.add_argument("b")
    di.add_argument("--mtimes", action="store_true", help="also report mtime changes")
    di.set_defaults(func=_diff)

    ex = sub.add_parser("extract", help="copy apks/ and boot/ of an Alpine ISO into DIR (no mount)")
    ex.add_argument("iso")
    ex.add_argument("dir")
    ex.add_argument("--flavor", help="kernel flavor when the ISO has several")
    ex.add_argument("--no-serial", action="store_true", help="leave console=ttyS0,115200 out (hardware)")
    ex.add_argument("--plan", action="store_true", help="show the commands only")
    ex.set_defaults(func=_extract)

    pr = sub.add_parser("predict", help="download size and RAM of a package set, from APKINDEX.tar.gz")
    pr.add_argument("--index", nargs="+", required=True, help="APKINDEX.tar.gz files (main, community)")
    pr.add_argument("--world", nargs="+")
    pr.add_argument("--set", nargs="+")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_predict)

    an = sub.add_parser("answers", help="setup-alpine answer file for a diskless install")
    an.add_argument("--hostname", default="alpinelab")
    an.add_argument("--media", default="sda4")
    an.add_argument("--user")
    an.add_argument("--include", nargs="+")
    an.add_argument("--exclude", nargs="+")
    an.add_argument("--out")
    an.set_defaults(func=_answers)
