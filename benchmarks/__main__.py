"""labkit benchmarks: ``./run bench [--rounds N] [--only boot|image|parse|memory] [--out FILE]``.

Each benchmark measures labkit against the plain tools doing the same work, side by side in
one run, in alternating order (so load changes on the host hit both sides alike):

- boot: labkit's per-boot wall time (``labkit.lab.qemu.boot``: serial read line by line, host
  timestamps, log file, transcript) against a bare ``qemu-system-x86_64`` invocation with the
  identical argv and a fresh OVMF vars copy, both booting the same lab image to power-off.
  Aim: ratio <= 1.10.
- image: the install (disk ▸ rEFInd ▸ NixOS ▸ Alpine) on the lab's image target, with every check and
  read-back, against a plain bash script that calls the same tools (truncate, sgdisk, mkfs.vfat,
  mmd/mcopy, mke2fs -d) in place on the same staged trees. Aim: ratio <= 1.2.
- parse: read, verify (md5) and compute every metric of 10,000 probe bundles given as text (realistic
  rehearsal-Alpine bundles: ~430 dmesg lines, meminfo, free, df, apk db, cache listing; 100 variants
  cycled), against a floor on the same texts in the same run: the md5 of each body plus splitting it
  into lines, the least any reader must do (``floor_median_s``). Aim: ratio <= 4.
- memory: the peak memory of reading a ~100 MB bundle from a file and computing its metrics (a fresh
  Python process; VmHWM above the interpreter's own), as a multiple of the file's size, for two bundles: a
  dmesg flood and a huge package database + meminfo; the larger median is the ratio. Aim: <= 3.

Results are printed and written as JSON (default ``benchmarks/results/latest.json``), with the
host and accelerator they were measured on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labkit.core.layout import LAB_LAYOUT, FsType, Role
from labkit.core.runner import Runner
from labkit.lab import qemu
from labkit.phases.install import InstallOptions, prepare, run_install
from labkit.rehearsal.kernel import default_cache_dir
from labkit.systems.bootchain import set_default_selection
from labkit.targets.image import MTOOLS_ENV, ImageTarget, sgdisk_args

AIMS = {"boot": 1.10, "image": 1.20, "parse": 4.0, "memory": 3.0}
PARSE_BUNDLES = 10_000
PARSE_VARIANTS = 100
PARSE_CHUNK = 250
MEMORY_BUNDLE_MB = 100


def sample_bundle_lines(variant: int = 0, dmesg_lines: int = 420) -> list[str]:
    """A bundle shaped like a rehearsal Alpine guest's (sizes as seen in the lab); ``variant`` moves its
    numbers (so no reader can cache one text), ``dmesg_lines`` makes it as large as wanted."""
    from labkit.measure.bundle import format_bundle

    dmesg = [f"[{0.001 * i + 1e-6 * variant:12.6f}] kernel message number {i} with some text"
             for i in range(dmesg_lines)]
    dmesg += ["[    2.044485] Run /init as init process", "[    2.500000] Installing packages to root filesystem...",
              "[    5.100000] Installing packages to root filesystem: ok.",
              "[    5.570000] labkit-rehearsal: switch_root"]
    meminfo = "\n".join(["MemTotal:         462240 kB", "MemAvailable:     395800 kB", "Shmem:             32980 kB",
                         *(f"Key{i}:        {i * 7} kB" for i in range(50))])
    apk = "\n".join(f"P:pkg{i}\nV:1.{i}-r0\nS:{1000 * i}\nI:{4000 * i}\n" for i in range(20))
    cache = "\n".join(f"-rw-r--r--    1 0        0        {1000 * i:9d} Jan  1  1970 pkg{i}-1.{i}.apk"
                      for i in range(20))
    text = format_bundle("alpine-rehearsal", "rehearsal", {
        "uptime": "5.70 4.10", "dmesg": "\n".join(dmesg), "meminfo": meminfo,
        "free": "              total        used        free      shared  buff/cache   available\n"
                "Mem:         462240       66440      340000       32980       55800      395800\n"
                "Swap:             0           0           0",
        "df": "Filesystem           1K-blocks      Used Available Use% Mounted on\n"
              "tmpfs                   231120     32980    198140  14% /\n"
              "/dev/vda4               754008    100000    600000  14% /media/vda4",
        "cmdline": "console=ttyS0,115200 quiet", "kernel": "Linux alpinelab 6.1.0 x86_64 GNU/Linux",
        "uptime_mid": "5.71 4.11", "apk_installed": apk, "apk_world": "cpio\nzstd", "apk_cache": cache,
        "uptime_end": "5.78 4.15",
    })
    return text.rstrip("\n").split("\n")


def parse_floor(text: str) -> int:
    """The least a bundle reader does: find the body, md5 it, split it into lines."""
    start = text.index("\n") + 1
    end = text.rindex("@@LABKIT-BUNDLE-END")
    body = text[start:end]
    hashlib.md5(body.encode("latin-1")).hexdigest()
    return len(body.split("\n"))


def bench_parse(rounds: int) -> dict[str, object]:
    """Read PARSE_BUNDLES bundle texts (md5 verified, every metric) against the floor on the same texts,
    ``rounds`` times per side in alternating order."""
    from labkit.measure.bundle import parse_bundle_text
    from labkit.measure.metrics import metrics_from_bundle

    texts = ["\n".join(sample_bundle_lines(v)) + "\n" for v in range(PARSE_VARIANTS)]
    n_metrics = 0

    def labkit_side(ks: range) -> None:
        nonlocal n_metrics
        for k in ks:
            n_metrics += len(metrics_from_bundle(parse_bundle_text(texts[k % PARSE_VARIANTS])))

    def floor_side(ks: range) -> None:
        for k in ks:
            parse_floor(texts[k % PARSE_VARIANTS])

    # each round reads the 10,000 bundles on both sides, in chunks of PARSE_CHUNK taken in turn (the order
    # swapped every chunk), so a burst of load on a shared host falls on both sides alike
    times: dict[str, list[float]] = {"labkit": [], "floor": []}
    for _ in range(rounds):
        spent = {"labkit": 0.0, "floor": 0.0}
        for c, first in enumerate(range(0, PARSE_BUNDLES, PARSE_CHUNK)):
            ks = range(first, min(first + PARSE_CHUNK, PARSE_BUNDLES))
            for side in (("labkit", "floor") if c % 2 == 0 else ("floor", "labkit")):
                start = time.perf_counter()
                (labkit_side if side == "labkit" else floor_side)(ks)
                spent[side] += time.perf_counter() - start
        for side, s in spent.items():
            times[side].append(s)
    n_metrics //= rounds
    res = _summary("parse", times["labkit"], times["floor"])
    res["floor_median_s"] = res["baseline_median_s"]
    res["baseline"] = "md5 of each body plus splitting it into lines (hashlib, str.split), same texts, same run"
    res["bundles"] = PARSE_BUNDLES
    res["bundle_bytes"] = len(texts[0])
    res["metrics_per_bundle"] = n_metrics // PARSE_BUNDLES
    res["bundles_per_s"] = round(PARSE_BUNDLES / statistics.median(times["labkit"]))
    return res


# VmHWM (the peak RSS of this process image), not ru_maxrss: Linux carries ru_maxrss over exec() from the
# parent's image (fs/exec.c setmax_mm_hiwater_rss), which here holds the 100 MB text being written.
MEMORY_CHILD = """
import sys
from pathlib import Path
from labkit.measure.bundle import parse_bundle_text
from labkit.measure.metrics import metrics_from_bundle
def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
base = hwm()
b = parse_bundle_text(Path(sys.argv[1]).read_text(encoding="utf-8"))
n = len(metrics_from_bundle(b))
print(base, hwm(), n, len(b.sections))
"""


def db_bundle_text(size_mb: int) -> str:
    """A bundle of ~``size_mb`` MB whose bulk is the sections parsed line by line: the apk database (2/3)
    and /proc/meminfo (1/3), both well-formed (a probe gone wrong, or a hostile guest)."""
    from labkit.measure.bundle import format_bundle

    records = size_mb * 1024**2 * 2 // 3 // 54
    apk = "\n".join(f"P:package-name-{i}\nV:1.2.{i}-r0\nS:{1000 + i}\nI:{4000 + i}\n" for i in range(records))
    keys = size_mb * 1024**2 // 3 // 22
    meminfo = "\n".join(["MemTotal:         462240 kB", "MemAvailable:     395800 kB", "Shmem:  32980 kB",
                          *(f"Key{i}:    {i} kB" for i in range(keys))])
    return format_bundle("alpine-rehearsal", "rehearsal", {
        "uptime": "5.70 4.10", "dmesg": "[    2.044485] Run /init as init process", "meminfo": meminfo,
        "apk_installed": apk, "apk_world": "package-name-1\nzstd", "uptime_end": "5.78 4.15"})


def _peak_over_size(path: Path, rounds: int) -> list[float]:
    size = path.stat().st_size
    extra: list[float] = []
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], check=True, capture_output=True,
                             text=True, cwd=Path(__file__).resolve().parent.parent).stdout.split()
        base_kib, peak_kib = int(out[0]), int(out[1])  # KiB
        extra.append((peak_kib - base_kib) * 1024 / size)
    return extra


def bench_memory(rounds: int, tmp: Path) -> dict[str, object]:
    """Peak memory of reading a ~MEMORY_BUNDLE_MB bundle file and computing its metrics, in a fresh process
    each round (VmHWM after the imports is the baseline), as a multiple of the file's size; two bundles: a
    dmesg flood (the big section is only searched) and a huge package database + meminfo (the big sections
    are read record by record). The ratio is the larger median."""
    lines = MEMORY_BUNDLE_MB * 1024**2 // 56
    path = tmp / "big-bundle.txt"
    path.write_text("\n".join(sample_bundle_lines(0, dmesg_lines=lines)) + "\n", encoding="utf-8")
    db_path = tmp / "big-db-bundle.txt"
    db_path.write_text(db_bundle_text(MEMORY_BUNDLE_MB), encoding="utf-8")
    extra = _peak_over_size(path, rounds)
    db_extra = _peak_over_size(db_path, rounds)
    med = max(statistics.median(extra), statistics.median(db_extra))
    return {"benchmark": "memory", "bundle_bytes": path.stat().st_size,
            "peak_over_size": [round(x, 3) for x in extra],
            "db_bundle_bytes": db_path.stat().st_size, "db_peak_over_size": [round(x, 3) for x in db_extra],
            "labkit_median_s": None, "baseline_median_s": None, "ratio": round(med, 3), "aim": AIMS["memory"],
            "meets_aim": med <= AIMS["memory"],
            "baseline": "the bundle file's size (peak RSS above the interpreter's, read + parse + metrics); "
                        "ratio: the larger median of the dmesg-flood and package-database bundles"}


def plain_image_script(trees: dict[Role, Path], esp: Path, out: Path) -> str:
    """The same image as a plain bash script: the same tools on the same staged trees, in place at each
    partition's offset (truncate, sgdisk, mkfs.vfat --offset, mmd/mcopy, mke2fs -E offset -d), no
    checks and no read-back."""
    lines = ["set -euo pipefail", f"rm -f {out}; truncate -s {LAB_LAYOUT.disk_size} {out}",
             "sgdisk " + " ".join(shlex.quote(a) for a in sgdisk_args(LAB_LAYOUT.extents())) + f" {out} >/dev/null"]
    for ext in LAB_LAYOUT.extents():
        p = ext.partition
        if p.fs is FsType.VFAT:
            lines.append(f"mkfs.vfat -F 32 -s 1 -n {p.label} --offset {ext.start // 512} {out} {ext.size // 1024} "
                         ">/dev/null 2>&1")
            spec = shlex.quote(f"{out}@@{ext.start}")
            dirs = sorted("::/" + d.relative_to(esp).as_posix() for d in esp.rglob("*") if d.is_dir())
            if dirs:
                lines.append(f"MTOOLS_SKIP_CHECK=1 mmd -i {spec} {' '.join(dirs)}")
            for f in sorted(x for x in esp.rglob("*") if x.is_file()):
                lines.append(f"MTOOLS_SKIP_CHECK=1 mcopy -i {spec} {shlex.quote(str(f))} ::/{f.relative_to(esp)}")
        else:
            tree = trees.get(p.role)
            d = f"-d {shlex.quote(str(tree))}" if tree else ""
            lines.append(f"mke2fs -q -F -t ext4 -b 4096 -L {p.label} -E offset={ext.start},lazy_itable_init=1,"
                         f"lazy_journal_init=1 {d} {out} {ext.size // 1024}k")
    return "\n".join(lines) + "\n"


def bench_image(rounds: int, tmp: Path) -> dict[str, object]:
    runner = Runner(progress=None)
    opts = InstallOptions(cache_dir=default_cache_dir())
    prepared = prepare(runner, LAB_LAYOUT, tmp / "stage-work", opts)
    trees: dict[Role, Path] = {f.role: f.tree for sc in prepared.systems.values() for f in sc.files
                               if f.role is not Role.ESP}
    esp = tmp / "esp-all"  # the ESP's files of every phase, as one tree for the script
    shutil.copytree(prepared.esp.tree, esp)
    for sc in prepared.systems.values():
        for f in sc.files:
            if f.role is Role.ESP:
                shutil.copytree(f.tree, esp, dirs_exist_ok=True)
    script = tmp / "plain.sh"
    script.write_text(plain_image_script(trees, esp, tmp / "plain" / "disk.img"))
    (tmp / "plain").mkdir()
    times: dict[str, list[float]] = {"labkit": [], "plain": []}
    for i in range(rounds):
        for side in (["labkit", "plain"] if i % 2 == 0 else ["plain", "labkit"]):
            t = time.monotonic()
            if side == "labkit":
                work = tmp / "labkit"
                shutil.rmtree(work, ignore_errors=True)
                target = ImageTarget(Runner(progress=None), LAB_LAYOUT, work / "disk.img", work=work / "image.d")
                run_install(target, opts, work, wipe=True, prepared=prepared)
            else:
                subprocess.run(["bash", str(script)], check=True, env={**MTOOLS_ENV, "PATH": _path()},
                               stdout=subprocess.DEVNULL)
            times[side].append(time.monotonic() - t)
    res = _summary("image", times["labkit"], times["plain"])
    res["baseline"] = ("plain bash script: the same tools on the same staged trees, in place at the offsets, "
                       "no checks and no read-back")
    return res


def bench_boot(rounds: int, tmp: Path, accel: str) -> dict[str, object]:
    from labkit.lab.run import build_lab_image

    runner = Runner(progress=None)
    lab = build_lab_image(runner, tmp / "work", systems=("alpine",), cache_dir=default_cache_dir())
    set_default_selection(runner, lab.image.path, lab.esp_offset, lab.titles["alpine"])
    labkit_s: list[float] = []
    bare_s: list[float] = []
    for i in range(rounds):
        for side in (("labkit", "bare") if i % 2 == 0 else ("bare", "labkit")):
            work = tmp / f"{side}-{i}"
            work.mkdir()
            if side == "labkit":
                t = time.monotonic()
                res = qemu.boot(runner, lab.image.path, workdir=work, accel=accel, timeout_s=300,
                                serial_log=work / "serial.log")
                labkit_s.append(time.monotonic() - t)
                if not res.ok:
                    raise SystemExit(f"labkit boot failed: {res.reason}")
            else:
                vars_file = work / "OVMF_VARS.fd"
                t = time.monotonic()
                shutil.copyfile(qemu.OVMF_VARS, vars_file)
                argv = qemu.qemu_argv(lab.image.path, vars_file=vars_file, accel=accel)
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, timeout=300)
                bare_s.append(time.monotonic() - t)
                if proc.returncode != 0:
                    raise SystemExit(f"bare qemu exited {proc.returncode}")
    return _summary("boot", labkit_s, bare_s)


def _path() -> str:
    import os

    return os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") + ":/usr/sbin:/sbin"


def _summary(name: str, labkit_s: list[float], base_s: list[float]) -> dict[str, object]:
    lm, bm = statistics.median(labkit_s), statistics.median(base_s)
    ratio = lm / bm
    return {
        "benchmark": name,
        "labkit_s": [round(x, 3) for x in labkit_s],
        "baseline_s": [round(x, 3) for x in base_s],
        "labkit_median_s": round(lm, 3),
        "baseline_median_s": round(bm, 3),
        "ratio": round(ratio, 3),
        "aim": AIMS[name],
        "meets_aim": ratio <= AIMS[name],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds per side (default 3)")
    ap.add_argument("--only", choices=["boot", "image", "parse", "memory"], action="append")
    ap.add_argument("--out", default="benchmarks/results/latest.json")
    args = ap.parse_args(argv)
    which = args.only or ["image", "boot", "parse", "memory"]
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="labkit-bench-") as td:
        tmp = Path(td)
        accel = "tcg"
        if "boot" in which:
            choice = qemu.choose_accelerator(Runner(progress=None), workdir=tmp / "accel")
            accel = choice.accel
        for name in which:
            sub = tmp / name
            sub.mkdir()
            print(f"benchmark {name}: {args.rounds} rounds per side ...", file=sys.stderr)
            if name == "parse":
                res = bench_parse(args.rounds)
            elif name == "memory":
                res = bench_memory(args.rounds, sub)
            else:
                res = bench_image(args.rounds, sub) if name == "image" else bench_boot(args.rounds, sub, accel)
            results.append(res)
            if name == "memory":
                print(f"  memory: peak {res['ratio']} x the bundle's size (dmesg flood of {res['bundle_bytes']} "
                      f"bytes: {res['peak_over_size']}; package database + meminfo of {res['db_bundle_bytes']} "
                      f"bytes: {res['db_peak_over_size']}) "
                      f"(aim <= {res['aim']}: {'met' if res['meets_aim'] else 'NOT met'})")
                continue
            floor = f" (floor_median_s {res['floor_median_s']})" if "floor_median_s" in res else ""
            print(f"  {name}: labkit {res['labkit_median_s']} s vs baseline {res['baseline_median_s']} s{floor} "
                  f"-> ratio {res['ratio']} (aim <= {res['aim']}: {'met' if res['meets_aim'] else 'NOT met'})")
    doc = {
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"machine": platform.machine(), "node": platform.node(), "release": platform.release(),
                 "nproc": __import__("os").cpu_count()},
        "where": "lab VM (rehearsal guest) on this host",
        "accel": accel,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
