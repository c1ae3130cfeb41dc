"""The load-cost model: per-package timing (real apk 2.14 console, apk 3 shapes, the rehearsal's kmsg),
the guest's own gzip rate (the probe under busybox), the robust fit and its bootstrap, host load
(labkit.measure.hostload), the adaptive rule, the report's "host load" statement, the .apk cache."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from paths import ALPINE_FIXTURES

from labkit.core.console import SerialLine
from labkit.core.data import GUEST_DIR
from labkit.core.errors import InputError
from labkit.measure.bundle import SectionError, format_bundle, parse_bundle_text
from labkit.measure.hostload import HostLoadSampler, contention
from labkit.measure.loadcost import (
    FIREFOX_MB,
    LoadCostError,
    analyse,
    fit_packages,
    package_rows,
    weighted_theil_sen,
)
from labkit.measure.metrics import metrics_from_bundle
from labkit.measure.parsers.apk import parse_apk_installed
from labkit.measure.parsers.apk_timing import package_steps, parse_apk_gunzip
from labkit.measure.stats import more_boots_reason

CONSOLE = ALPINE_FIXTURES / "apk-diskless-install-console.txt"


# -- per-package lines ---------------------------------------------------------------------------------
def test_package_steps_on_the_real_apk_2_14_console() -> None:
    """The fixture is a real `apk add --initramfs-diskless-boot --progress` console (ANSI progress bars before
    each message on the same line); each line gets a time, here its line number."""
    raw = CONSOLE.read_text(encoding="utf-8").split("\n")
    steps = package_steps([(float(i), line) for i, line in enumerate(raw)])
    assert [s.index for s in steps] == list(range(1, 16)) and {s.total for s in steps} == {15}
    assert steps[0].name == "alpine-baselayout-data" and steps[0].version == "3.6.5-r0"
    assert steps[1].name == "musl" and steps[2].name == "busybox" and steps[-1].name == "alpine-base"
    # a package runs until the next package's line (its scripts included) ...
    busybox = steps[2]
    assert raw[int(busybox.end)].endswith("(4/15) Installing busybox-binsh (1.36.1-r29)")
    assert "Executing busybox-1.36.1-r29.post-install" in raw[int(busybox.end) - 1]
    # ... and the last one until the trigger that runs after the loop (before "OK: 8 MiB in 15 packages")
    assert raw[int(steps[-1].end)].endswith("Executing busybox-1.36.1-r29.trigger")
    sizes = {p.name: p.installed_size for p in parse_apk_installed(
        (ALPINE_FIXTURES / "lib-apk-db-installed").read_text())}
    assert sizes["musl"] and sizes["busybox"] and all(s.seconds > 0 for s in steps)


def test_package_steps_apk3_shapes_and_kmsg() -> None:
    """apk 3 pads the index (`( 1/12)`), indents script lines and prints KiB; the rehearsal's kmsg lines end
    at the initramfs's eend line. Upgrades give the new version."""
    apk3 = [(0.0, "( 1/12) Installing musl (1.2.5-r9)"), (0.5, "  Executing musl-1.2.5-r9.post-install"),
            (1.0, "( 2/12) Upgrading busybox (1.36.1-r29 -> 1.37.0-r12)"),
            (3.0, "OK: 8440 KiB in 12 packages")]
    steps = package_steps(apk3)
    assert [(s.index, s.name, s.version, s.seconds) for s in steps] == [
        (1, "musl", "1.2.5-r9", 1.0), (2, "busybox", "1.37.0-r12", 2.0)]
    kmsg = [(3.18, "Installing packages to root filesystem..."),
            (3.21, "(1/2) Installing busybox-static (1:1.35.0-4+deb12u1+b1)"),
            (3.47, "(2/2) Installing chromium (156.0.8078.114-1~deb12u1)"),
            (24.47, "Installing packages to root filesystem: ok.")]
    steps = package_steps(kmsg)
    assert steps[0].version == "1:1.35.0-4+deb12u1+b1" and steps[1].seconds == pytest.approx(21.0)
    # a log that stops before the end: the last package has no end time
    assert np.isnan(package_steps(kmsg[:3])[-1].seconds)
    # the first run wins: the bundle's dmesg copy printed later on the same serial console is not read again
    later = [(50.0, "[    3.21] (1/2) Installing busybox-static (1)"), (50.1, "[    3.47] (2/2) Installing x (1)")]
    assert package_steps([*kmsg, *later])[1].seconds == pytest.approx(21.0)
    with pytest.raises(SectionError, match=r"\(3/2\) does not follow \(1/2\)"):
        package_steps([(0.0, "(1/2) Installing a (1)"), (1.0, "(3/2) Installing b (1)")])


def test_package_rows_prefer_kmsg_and_fall_back_to_the_serial_console() -> None:
    installed = "P:busybox-static\nV:1\nS:1000\nI:2097152\n\nP:big\nV:2\nS:9000\nI:104857600\n"
    dmesg = ("[    3.100000] Installing packages to root filesystem...\n"
             "[    3.200000] (1/2) Installing busybox-static (1)\n[    3.400000] (2/2) Installing big (2)\n"
             "[    8.400000] Installing packages to root filesystem: ok.")
    b = parse_bundle_text(format_bundle("alpine-rehearsal", "rehearsal", {"dmesg": dmesg, "apk_installed": installed}))
    rows = package_rows(b)
    assert [(r["name"], r["mib"], r["source"]) for r in rows] == [("busybox-static", 2.0, "kmsg"),
                                                                   ("big", 100.0, "kmsg")]
    assert rows[1]["seconds"] == pytest.approx(5.0)
    b2 = parse_bundle_text(format_bundle("alpine", "real", {"dmesg": "[    1.0] Run /init as init process",
                                                            "apk_installed": installed}))
    serial = [SerialLine(10.0, "(1/2) Installing busybox-static (1)"), SerialLine(10.5, "(2/2) Installing big (2)"),
              SerialLine(14.5, "OK: 102 MiB in 2 packages"), SerialLine(20.0, "@@LABKIT-BUNDLE-BEGIN v=1 ...")]
    rows = package_rows(b2, serial)
    assert [(r["source"], r["seconds"]) for r in rows] == [("serial", 0.5), ("serial", 4.0)]
    assert all(np.isnan(r["cpu_seconds"]) for r in rows)  # no CPU marks
    # QEMU's CPU time marked as the console lines came: each package's CPU cost, on either clock's rows
    marks = [(9.0, 1.0), (10.0, 2.5), (10.5, 2.9), (14.5, 6.1)]
    assert [r["cpu_seconds"] for r in package_rows(b2, serial, marks)] == [pytest.approx(0.4), pytest.approx(3.2)]
    assert [r["cpu_seconds"] for r in package_rows(b, serial, marks)] == [pytest.approx(0.4), pytest.approx(3.2)]


# -- the guest's gzip rate: the probe's section under busybox ----------------------------------------------
def test_probe_times_gzip_over_the_installed_apks(tmp_path: Path) -> None:
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static)")
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "proc" / "uptime").write_text("3.14 2.00\n")
    (root / "proc" / "meminfo").write_text("MemTotal:         468400 kB\nMemAvailable:     386428 kB\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet\n")
    (root / "etc" / "labkit-rehearsal").write_text("alpine-rehearsal\n")
    repo = root / "media" / "vda4" / "apks" / "x86_64"
    repo.mkdir(parents=True)
    payload = {"a-1.0": os.urandom(20000) + b"a" * 300000, "b-1_2.0": b"labkit " * 100000, "c-9": b"not installed"}
    for stem, data in payload.items():
        (repo / f"{stem}.apk").write_bytes(gzip.compress(data))
    db = root / "lib" / "apk" / "db"
    db.mkdir(parents=True)
    db.joinpath("installed").write_text("P:a\nV:1.0\nS:1\nI:1\n\nP:b\nV:1:2.0\nS:1\nI:1\n\n")  # b: an epoch
    out = tmp_path / "out"
    env = {**os.environ, "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out), "LABKIT_PROBE_SETTLE": "0",
           "LABKIT_PROBE_DMESG": str(tmp_path / "dmesg"), "TMPDIR": str(tmp_path)}
    (tmp_path / "dmesg").write_text("[    1.000000] Run /init as init process\n")
    subprocess.run(["busybox", "sh", str(GUEST_DIR / "probe.sh")], env=env, check=True, timeout=60)
    b = parse_bundle_text(out.read_text(encoding="latin-1"))
    gz = parse_apk_gunzip(b.sections["apk_gunzip"])
    assert gz.files == 2 and gz.status == 0  # c is not installed: left out
    assert gz.uncompressed_bytes == len(payload["a-1.0"]) + len(payload["b-1_2.0"])
    assert gz.compressed_bytes == sum((repo / f"{s}.apk").stat().st_size for s in ("a-1.0", "b-1_2.0"))
    assert gz.seconds >= 0 and list(b.sections)[-1] == "apk_gunzip"
    # the kernel command line switch turns it off
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet labkit.gunzip=0\n")
    out.unlink()
    subprocess.run(["busybox", "sh", str(GUEST_DIR / "probe.sh")], env=env, check=True, timeout=60)
    assert "apk_gunzip" not in parse_bundle_text(out.read_text(encoding="latin-1")).sections


def test_gunzip_section_metric_and_bad_input() -> None:
    text = ("start 63.52 1.98\nstatus 0\nend 93.38 1.98\nfiles\n"
            "-rw-r--r--    1 0        0          1086987 Dec  1 11:26 /media/vda4/apks/x86_64/a-1.apk\n"
            "-rw-r--r--    1 0        0        115410978 Dec  1 11:26 /media/vda4/apks/x86_64/b-2.apk\n"
            "isize\n    2211840  297246720\n")
    gz = parse_apk_gunzip(text)
    assert (gz.files, gz.uncompressed_bytes, gz.seconds) == (2, 2211840 + 297246720, pytest.approx(29.86))
    assert gz.mib_s == pytest.approx((2211840 + 297246720) / 2**20 / 29.86)
    b = parse_bundle_text(format_bundle("alpine-rehearsal", "rehearsal", {"apk_gunzip": text}))
    m = {x.name: x.value for x in metrics_from_bundle(b)}
    assert m["guest_gunzip_mib_s"] == pytest.approx(gz.mib_s)
    with pytest.raises(SectionError, match="2 files but 1 gzip trailer"):
        parse_apk_gunzip(text.replace("  297246720", ""))
    with pytest.raises(SectionError, match="no end"):
        parse_apk_gunzip(text.replace("end 93.38 1.98\n", ""))


# -- the fit ----------------------------------------------------------------------------------------------
def test_weighted_theil_sen_resists_outliers_and_small_packages() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.01, 2.0, 40), [18.0, 65.0, 283.0]])
    y = 0.05 + 0.075 * x + rng.normal(0, 0.01, x.size)
    y[:4] += 3.0  # four tiny packages hit by a burst of host load
    b, a = weighted_theil_sen(x, y)
    assert b == pytest.approx(0.075, rel=0.05) and a == pytest.approx(0.05, abs=0.02)
    assert np.isnan(weighted_theil_sen(np.array([1.0, 1.0]), np.array([1.0, 2.0]))[0])


def _synthetic(b: float = 0.08, a: float = 0.05, c: float = 0.03, contended: tuple[int, ...] = (),
               noise: float = 0.03, top: int = 3, cpu: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(7)
    sizes = {"base": [2.0], "medium": [2.0, 0.3, 1.0, 14.5, 5.0], "large": [2.0, 0.3, 1.0, 14.5, 5.0, 18.5, 17.6],
             "xlarge": [2.0, 0.3, 1.0, 14.5, 5.0, 18.5, 17.6, 65.0, 250.0]}
    rows, pk = [], []
    boot = 100
    for name, mibs in sizes.items():
        for _ in range(top if name == "xlarge" else 1):
            slow = 1.6 if boot in contended else 1.0
            secs = [(a + b * m) * slow * (1 + rng.normal(0, noise)) for m in mibs]
            total = c + sum(secs)
            for metric, value in (("installed_size_mib", sum(mibs)), ("alpine_package_load_s", total),
                                  ("root_tmpfs_used_mib", 1.0 + 1.01 * sum(mibs))):
                rows.append({"run_id": "r", "os": "alpine-rehearsal", "boot": boot, "warmup": False, "metric": metric,
                             "value": value, "package_set": name, "host_contended": boot in contended,
                             "host_other_cpu": 1.0 if boot in contended else 0.05})
            pk += [{"package_set": name, "boot": boot, "name": f"p{k}", "mib": m, "seconds": s,
                    "cpu_seconds": (a + b * m) * (1 + rng.normal(0, noise / 3)) if cpu else float("nan")}
                   for k, (m, s) in enumerate(zip(mibs, secs, strict=True))]
            boot += 1
    return pd.DataFrame(rows), pd.DataFrame(pk)


def test_package_model_recovers_the_costs_with_bootstrap_intervals() -> None:
    df, pk = _synthetic()
    lc = analyse(df, pk, resamples=400)
    m = lc.model
    assert m is not None and m.n_boots == 6 and m.n_packages == len(pk) and len(m.b_per_boot) == 3
    assert m.b_ci[0] < 0.08 < m.b_ci[1] and m.a_ci[0] < 0.05 < m.a_ci[1]
    assert "3 boots, Student-t" in m.b_from
    assert m.c == pytest.approx(0.03, abs=0.02)
    ff = lc.firefox()
    assert list(ff["case"]) == ["Firefox 200 MB", "Firefox 400 MB"]
    assert ff["extra_load_s"].iloc[0] == pytest.approx(m.b * FIREFOX_MB[0] * 1e6 / 2**20)
    assert (ff["extra_load_s_low"] < ff["extra_load_s"]).all() and (ff["extra_load_s"] < ff["extra_load_s_high"]).all()
    assert (ff["ci_half_width_pct"] < 25).all()
    # the sets reach 374 MiB: 200 MB (191 MiB) inside, 400 MB (381 MiB) beyond, and the table says so
    assert ff["extrapolated"].tolist() == [False, True]
    assert lc.rate_mib_s == pytest.approx(1 / m.b)
    fits = lc.fits_table()
    assert {"b: per MiB installed", "a: per package", "slope"} <= set(fits["term"])
    lo, hi = lc.content_rates()  # the large packages' own per-MiB costs (all 0.08 here, up to noise)
    assert lo <= hi and lo == pytest.approx(0.08, rel=0.1) and hi == pytest.approx(0.08, rel=0.1)
    assert ff["extra_load_s_content_low"].iloc[0] == pytest.approx(lo * FIREFOX_MB[0] * 1e6 / 2**20)
    # one boot of the largest set: its packages are bootstrapped, and the interval says so by its width
    one = analyse(*_synthetic(top=1), resamples=400).model
    assert one is not None and "1 boot, its packages bootstrapped" in one.b_from
    assert one.b_ci[0] <= one.b <= one.b_ci[1]


def test_cpu_time_is_the_headline_when_every_package_has_it() -> None:
    """Host load stretches the wall time (here x1.6 on one boot) but not QEMU's CPU time (on a quiet host
    the two agree): the model fits the CPU seconds and keeps the wall-time fit beside it."""
    df, pk = _synthetic(cpu=True, contended=(104,), noise=0.05)
    df["host_contended"] = False  # kept in the fit: the CPU time is what is trusted here
    lc = analyse(df, pk, resamples=200)
    assert lc.model is not None and lc.model.basis == "cpu_seconds" and lc.wall_model is not None
    assert lc.model.b == pytest.approx(0.08, rel=0.03)
    assert lc.wall_model.b > lc.model.b  # the slowed boot drags the wall-time fit up
    ff = lc.firefox()
    assert ff["basis"].iloc[0].startswith("QEMU's CPU time") and (ff["extra_load_wall_s"] > ff["extra_load_s"]).all()
    assert {"package model, QEMU CPU s", "package model, wall s"} <= {f.split(" (")[0] for f in lc.fits_table()["fit"]}


def test_contended_boots_leave_the_fit_when_their_set_has_a_quiet_one() -> None:
    df, pk = _synthetic(contended=(104,))  # the second xlarge boot ran beside a CPU hog
    lc = analyse(df, pk, resamples=200)
    assert list(lc.left_out["boot"]) == [104] and 104 not in set(lc.packages["boot"])
    assert lc.model is not None and lc.model.b == pytest.approx(0.08, rel=0.05)
    df2, pk2 = _synthetic(contended=tuple(range(100, 106)))  # the whole run under load: kept, flagged
    lc2 = analyse(df2, pk2, resamples=200)
    assert lc2.left_out.empty and len(lc2.contended_used) == 6


def test_incomplete_installs_never_enter_the_fit(tmp_path: Path) -> None:
    """A boot whose install dropped world packages loaded less than its set: it would look like a fast
    load. It is left out even when it is the only boot of its set, and the report says why."""
    df, pk = _synthetic()
    extra = []
    for boot in sorted(set(df["boot"])):
        name = df.loc[df["boot"] == boot, "package_set"].iloc[0]
        missing = 3.0 if boot in (101, 104) else 0.0  # medium's only boot, and an xlarge replicate
        extra.append({"run_id": "r", "os": "alpine-rehearsal", "boot": boot, "warmup": False,
                      "metric": "packages_missing", "value": missing, "package_set": name,
                      "host_contended": False, "host_other_cpu": 0.05})
    df = pd.concat([df, pd.DataFrame(extra)], ignore_index=True)
    lc = analyse(df, pk, resamples=200)
    assert sorted(lc.left_out["boot"]) == [101, 104]
    assert not {101, 104} & set(lc.packages["boot"]) and "medium" not in set(lc.used["package_set"])
    from labkit.report.report import loadcost_threat

    text = loadcost_threat(lc)
    assert "2 boot(s) with an incomplete install left out" in text and "under host load" not in text


def test_without_package_lines_the_boot_totals_are_used() -> None:
    df, _ = _synthetic()
    lc = analyse(df)
    assert lc.model is None and lc.firefox()["from"].iloc[0].startswith("boot totals")
    with pytest.raises(LoadCostError, match="per-package fit"):
        fit_packages(pd.DataFrame({"package_set": ["a"], "boot": [1], "mib": [1.0], "seconds": [1.0]}),
                     pd.DataFrame({"package_set": ["a"], "boot": [1], "alpine_package_load_s": [1.0]}))


# -- host load ----------------------------------------------------------------------------------------------
def test_contention_rule() -> None:
    assert contention(0.05, 0.01, 0.0) == (False, "")
    flag, why = contention(1.02, 0.08, 0.0)
    assert flag and "other processes used 1.02 CPUs" in why and "QEMU waited" in why
    assert contention(float("nan"), float("nan"), float("nan"))[0] is False


def _burn(seconds: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", f"import time\nt=time.time()\nwhile time.time()-t<{seconds}: pass"])


def test_sampler_tells_the_booted_process_from_other_load() -> None:
    """A CPU-bound child stands in for QEMU; a second CPU-bound process, not ours to account, is the other
    load: the sampler gives the first to qemu_cpu and the second to other_cpu, and flags contention."""
    hog = _burn(3.0)
    try:
        sampler = HostLoadSampler()
        child = _burn(1.5)
        sampler.attach(child.pid)
        started = time.monotonic()
        while child.poll() is None:
            sampler.poll()
            sampler.mark(time.monotonic() - started)
            time.sleep(0.05)
        load = sampler.finish(qemu_reaped=True)
    finally:
        hog.wait()
    # the child's CPU time is QEMU's, the hog's is other processes' (with whatever else the host runs): on a
    # busy host the child may get little CPU, but the two never add up to more than the host has
    assert load.qemu_cpu > 0.05 and load.qemu_cpu + load.other_cpu <= load.ncpu + 0.25
    assert load.other_cpu > 0.5 and load.contended
    assert "other processes" in load.describe()
    cpu = [c for _, c in sampler.cpu_marks]  # the child's CPU time as it ran: never decreasing, and growing
    assert len(cpu) > 5 and cpu == sorted(cpu) and cpu[-1] > cpu[0]


def test_adaptive_rule_redoes_transient_contention_only() -> None:
    quiet = {"alpine": [10.0, 10.1, 10.0]}
    assert more_boots_reason(quiet, done=3, cap=5) is None
    one_busy = {"alpine": [10.0, 13.0, 10.1]}
    why = more_boots_reason(one_busy, done=3, cap=5, contended={"alpine": [False, True, False]})
    assert why is not None and "under host load" in why
    # the last two boots were busy: the load is persistent, every value counts (spread 0.7 % < 5 %)
    assert more_boots_reason({"alpine": [13.0, 13.1, 13.0]}, done=3, cap=5,
                             contended={"alpine": [True, True, True]}) is None
    assert more_boots_reason(one_busy, done=5, cap=5, contended={"alpine": [False, True, False]}) is None


def test_report_says_host_load(tmp_path: Path) -> None:
    from labkit.report.report import ReportContext, drop_contended, host_load_text

    results = pd.DataFrame([{"run_id": "r", "os": "alpine-rehearsal", "guest": "rehearsal", "boot": b, "warmup": False,
                             "accel": "tcg", "metric": "total_to_probe_s", "value": v, "unit": "s", "source": "x"}
                            for b, v in ((1, 20.0), (2, 26.0), (3, 20.2))])
    boots = pd.DataFrame([{"os": "alpine", "boot": b, "warmup": False, "ok": True, "host_other_cpu": o,
                           "host_qemu_wait": w, "host_steal": 0.0, "host_contended": c, "host_reason": ""}
                          for b, o, w, c in ((1, 0.05, 0.01, False), (2, 1.03, 0.12, True), (3, 0.1, 0.0, False))])
    kept, left = drop_contended(results, boots)
    assert sorted(kept["boot"]) == [1, 3] and list(left["boot"]) == [2]
    ctx = ReportContext(tmp_path, kept, pd.DataFrame(), {}, boots=boots, excluded=left)
    text = host_load_text(ctx)
    assert text.startswith("**Host load**: 1 of 3 boots") and "1.03 CPUs" in text and "left out" in text
    assert "stole" not in text  # no steal worth naming
    # the hypervisor's steal is named when it is what flagged the boots (this machine is itself a VM)
    stolen = boots.assign(host_other_cpu=0.01, host_qemu_wait=0.01, host_steal=[0.0, 0.23, 0.0])
    text = host_load_text(ReportContext(tmp_path, kept, pd.DataFrame(), {}, boots=stolen, excluded=left))
    assert "the hypervisor stole 0.23 CPUs on average" in text
    quiet = boots.assign(host_contended=False)
    assert host_load_text(ReportContext(tmp_path, results, pd.DataFrame(), {}, boots=quiet)) == ""


# -- the .apk cache -----------------------------------------------------------------------------------------
def test_apk_cache_gives_the_same_bytes(tmp_path: Path) -> None:
    from labkit.rehearsal.payloads import Payload, PkgEntry, write_apk

    p = Payload("demo", "1:1.0-1", (PkgEntry("usr/share/demo/a", "file", 0o644, 6, data=b"hello\n"),))
    first = write_apk(p, tmp_path / "a", cache=tmp_path / "cache")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    second = write_apk(p, tmp_path / "b", cache=tmp_path / "cache")
    assert first == second
    assert (tmp_path / "a" / "demo-1_1.0-1.apk").read_bytes() == (tmp_path / "b" / "demo-1_1.0-1.apk").read_bytes()


def test_load_cost_memory_and_persistence_rules() -> None:
    from labkit.lab.run import LabParams, load_memory_mib, persistent_load

    # the tmpfs root gets half the RAM (as on Alpine): 384 MiB installed needs more than the main run's 512
    assert load_memory_mib(LabParams(), 384.0) == 1280
    assert load_memory_mib(LabParams(), 8.0) == 512  # never less than the main run's
    assert load_memory_mib(LabParams(load_memory_mib=2048), 384.0) == 2048
    assert not persistent_load([True]) and not persistent_load([True, False])
    assert persistent_load([False, True, True])
    with pytest.raises(InputError, match="too little"):
        LabParams(load_memory_mib=100)


def test_adaptive_top_boots_rule_reads_the_interval_the_report_shows() -> None:
    from labkit.lab.run import LOAD_CI_TARGET, per_mib_ci_width

    steady = per_mib_ci_width(*(t.to_dict("records") for t in _synthetic(noise=0.02)))
    assert steady is not None and steady < LOAD_CI_TARGET
    # one boot of the largest set slowed x1.6 by load the sampler did not flag: the interval over them widens
    df, pk = _synthetic(noise=0.02, contended=(104,))
    df["host_contended"] = False
    busy = per_mib_ci_width(df.to_dict("records"), pk.to_dict("records"))
    assert busy is not None and busy > LOAD_CI_TARGET > steady
    # flagged, that boot leaves the fit (the set has quiet ones): the interval is narrow again
    flagged = per_mib_ci_width(*(t.to_dict("records") for t in _synthetic(noise=0.02, contended=(104,))))
    assert flagged is not None and flagged < LOAD_CI_TARGET
    assert per_mib_ci_width([], []) is None
