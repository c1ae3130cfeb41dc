"""The lab spine: run directories, parameters, and end-to-end runs through OVMF → rEFInd (→ GRUB)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from paths import alpine_minirootfs

from labkit.cli import main as cli
from labkit.core.errors import InputError, LabkitError, ToolMissing
from labkit.core.runner import read_transcript
from labkit.lab.run import LabParams, boot_order, prepare_run_dir, run_lab


def test_boot_order_is_interleaved() -> None:
    order = boot_order(("alpine", "nixos"), boots=2, warmup=1)
    assert order == [
        ("alpine", 0, True), ("nixos", 0, True),
        ("nixos", 1, False), ("alpine", 1, False),
        ("alpine", 2, False), ("nixos", 2, False),
    ]


def test_run_dir_holding_a_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.csv").write_text("run_id\n")
    with pytest.raises(InputError) as exc:
        prepare_run_dir(out)
    assert "already holds a run" in str(exc.value) and "--out" in str(exc.value)
    assert (out / "results.csv").read_text() == "run_id\n"  # untouched
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        prepare_run_dir(tmp_path / "other")


def test_new_run_ids_never_collide(tmp_path: Path) -> None:
    a = prepare_run_dir(None, tmp_path)
    b = prepare_run_dir(None, tmp_path)
    assert a[1] != b[1] and a[1].is_dir() and b[1].is_dir()
    assert (tmp_path / "latest").resolve() == b[1].resolve()


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"boots": 0}, "boots=0: must be a number of at least 1"),
        ({"systems": ("windows",)}, "systems: 'windows' is not one of alpine, nixos"),
        ({"package_set": "everything"}, "package_set: 'everything' is not one of"),
        ({"memory_mib": 64}, "memory_mib=64: must be a number of at least 256"),
        ({"warmup": -1}, "warmup=-1: must be a number of at least 0"),
        ({"load_sets": ("small",)}, "needs at least 2 different package sets"),
        ({"load_sets": ("base", "xlarge"), "load_top_boots": 1}, "needs at least 3 boots: 2 package sets with "
                                                                 "load_top_boots=1 give 2"),
    ],
)
def test_bad_parameters_are_refused(tmp_path: Path, kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        run_lab(LabParams(out=tmp_path / "r", **kwargs), progress=None)  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()


def test_cli_reports_a_run_dir_conflict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "environment.json").write_text("{}")
    rc = cli.main(["lab", "--out", str(out), "--boots", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "fix:" in err


def test_missing_tool_stops_the_lab_and_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labkit.core.runner as runner_mod

    real = runner_mod.which
    monkeypatch.setattr(runner_mod, "which", lambda tool: None if tool == "sgdisk" else real(tool))
    with pytest.raises(ToolMissing) as exc:
        run_lab(LabParams(out=tmp_path / "run", boots=1, report=False), progress=None)
    assert "apt-get install -y gdisk" in str(exc.value)
    rows = read_transcript(tmp_path / "run" / "transcript.jsonl")
    assert any(r.get("error") == "tool-missing" and r.get("package") == "gdisk" for r in rows)
    # the failed run still says what it was
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["params"]["boots"] == 1


def _boots(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "boots.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.boot
@pytest.mark.timeout(3600)  # 8 boots of guests running OpenRC / systemd under TCG: ~1 min each on a loaded host
def test_lab_end_to_end(tmp_path: Path) -> None:
    """Both entries boot through OVMF → rEFInd (→ GRUB for NixOS); bundles parse; report renders."""
    # small load-cost sets (the default goes to ~384 MiB: `./run lab`), no redo: a fixed boot list
    # the Alpine-style guest installs with Alpine's own apk when the minirootfs is here (tests/paths.py), else
    # with labkit's own install, labelled so
    rootfs = alpine_minirootfs()
    run = run_lab(LabParams(out=tmp_path / "run", boots=2, max_boots=2, warmup=1, load_sets=("base", "medium"),
                            load_top_boots=2, load_top_max=2, load_redo=0,
                            alpine_rootfs=str(rootfs) if rootfs else ""), progress=None)
    d = run.run_dir
    assert not run.failed, [b.reason for b in run.failed]
    boots = _boots(d)
    # a warm-up round (boot 0), the measured rounds in interleaved order, then the Alpine-style guest with each
    # load-cost set (base once, medium, the largest, twice), all with the same RAM
    assert [(b["os"], b["boot"], b["warmup"], b["ok"]) for b in boots] == [
        ("alpine", "0", "True", "True"), ("nixos", "0", "True", "True"),
        ("nixos", "1", "False", "True"), ("alpine", "1", "False", "True"),
        ("alpine", "2", "False", "True"), ("nixos", "2", "False", "True"),
        ("alpine", "100", "False", "True"), ("alpine", "101", "False", "True"), ("alpine", "102", "False", "True")]
    assert len({b["memory_mib"] for b in boots[6:]}) == 1
    # the load-cost boots ran the probe in the initramfs right after the install and powered off: no OpenRC
    for n in (100, 101, 102):
        assert "@@SECTION probe_stage@@\ninitramfs\n" in (d / "bundles" / f"alpine-{n}.txt").read_text()
        assert "OpenRC" not in (d / "serial" / f"alpine-{n}.log").read_text(encoding="utf-8")
    assert "@@SECTION probe_stage@@" not in (d / "bundles" / "alpine-1.txt").read_text()
    # every boot records the host's load meanwhile (labkit.measure.hostload)
    for b in boots:
        assert float(b["host_other_cpu"]) == float(b["host_other_cpu"]) and b["host_contended"] in ("True", "False")
        assert float(b["host_qemu_cpu"]) > 0
    # the real boot chain was walked: rEFInd for both, GRUB only for NixOS
    alpine_log = (d / "serial" / "alpine-0.log").read_text(encoding="utf-8")
    nixos_log = (d / "serial" / "nixos-0.log").read_text(encoding="utf-8")
    assert "rEFInd" in alpine_log and "GRUB" not in alpine_log
    assert "rEFInd" in nixos_log and "Welcome to GRUB" in nixos_log
    # serial lines carry increasing host timestamps
    stamps = [float(line.split("\t", 1)[0]) for line in alpine_log.splitlines()]
    assert stamps == sorted(stamps) and stamps[-1] > 1.0
    # results: every metric per system, labelled rehearsal + accelerator
    with open(d / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    by_os: dict[str, set[str]] = {}
    for r in rows:
        by_os.setdefault(r["os"], set()).add(r["metric"])
        assert r["guest"] == "rehearsal" and r["accel"] == run.accel
    common = {"firmware_loaders_s", "kernel_s", "initramfs_s", "userspace_to_probe_s", "total_to_probe_s",
              "ram_used_mib", "root_tmpfs_used_mib"}
    assert common <= by_os["alpine-rehearsal"] and common <= by_os["nixos-rehearsal"]
    assert "alpine_package_load_s" in by_os["alpine-rehearsal"]
    assert "alpine_package_load_s" not in by_os["nixos-rehearsal"]
    # every metric of the table that applies to a system is there, or each boot says why it is missing
    from labkit.measure.metrics import METRICS, applies

    for os_id, names in by_os.items():
        want = {m.name for m in METRICS if applies(m.name, os_id)}
        for b in boots:
            if b["ok"] == "True" and os_id.startswith(b["os"]):
                why = json.loads(b["missing"] or "{}")
                assert want <= names | set(why), (os_id, want - names - set(why))
                assert all(why.values()), why
    # the warm-up boots are in the results, flagged, and reported apart from the statistics
    assert {r["warmup"] for r in rows if r["boot"] == "0"} == {"True"}
    warm = (d / "tables" / "warmup_boots.csv").read_text()
    assert "alpine-rehearsal" in warm and "nixos-rehearsal" in warm
    # probe cost: the timing part under 1 % of the boot it measures
    with open(d / "tables" / "summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    for r in summary:  # every applicable metric of both systems: a median and a 95 % CI, or why there is none
        assert (r["median"] and r["ci_low"] and r["ci_high"]) or (r["status"] == "missing" and r["why"]) or (
            r["status"] == "one boot" and r["median"] and r["why"].startswith("measured on one boot only")), r
    # the guest's gzip rate: one boot of the run measured it (two when the host was busy during the first), the
    # summary says so
    gz = next(r for r in summary if r["os"] == "alpine-rehearsal" and r["metric"] == "guest_gunzip_mib_s")
    assert (gz["n"], gz["status"]) in (("1", "one boot"), ("2", "measured"))
    assert gz["n"] == "2" or "labkit.gunzip=0" in gz["why"]
    assert {r["os"] for r in summary} == {"alpine-rehearsal", "nixos-rehearsal"}
    probe = {r["os"]: float(r["value"]) for r in rows if r["metric"] == "probe_timing_s"}
    total = {r["os"]: float(r["value"]) for r in rows if r["metric"] == "total_to_probe_s"}
    assert all(probe[o] < 0.01 * total[o] + 0.011 for o in probe), (probe, total)  # 0.01 s resolution
    # load cost: >= 2 package sets, a fit with its CI, the Firefox prediction, the host's limit
    with open(d / "loadcost.csv") as fh:
        lc = list(csv.DictReader(fh))
    assert {r["package_set"] for r in lc} == {"base", "medium"} and {r["probe_stage"] for r in lc} == {"initramfs"}
    assert "total_to_probe_s" not in {r["metric"] for r in lc}
    with open(d / "loadcost_packages.csv") as fh:
        pk = list(csv.DictReader(fh))
    # one point per package per boot, timed from the (i/n) Installing lines: the rehearsal's own install writes them
    # to the kernel log (guest clock); the real apk (the Alpine minirootfs found) prints them on the console only
    # (host serial clock), as on Alpine
    real_apk = json.loads((d / "environment.json").read_text())["extra"]["guests"]["alpine"]["package_install"] \
        == "apk-tools"
    assert real_apk == (rootfs is not None)
    if real_apk:  # the bundle's database is the one apk wrote: the minirootfs's own packages at its versions
        installed = (d / "bundles" / "alpine-1.txt").read_text(encoding="utf-8")
        for name, version in (("apk-tools", "2.14.4-r0"), ("busybox", "1.36.1-r29"), ("musl", "1.2.5-r0")):
            assert f"P:{name}\nV:{version}\n" in installed, name
    assert {r["boot"] for r in pk} == {"100", "101", "102"}
    assert {r["source"] for r in pk} == {"serial" if real_apk else "kmsg"}
    assert all(float(r["seconds"]) > 0 for r in pk)
    with open(d / "tables" / "loadcost_fits.csv") as fh:
        fits = {r["term"]: r for r in csv.DictReader(fh) if r["fit"].startswith("package model")}
    b = fits["b: per MiB installed"]
    assert float(b["ci_low"]) <= float(b["estimate"]) <= float(b["ci_high"])
    with open(d / "tables" / "loadcost_firefox.csv") as fh:
        ff = list(csv.DictReader(fh))
    assert [r["extrapolated"] for r in ff] == ["True", "True"]  # these small sets stop far below Firefox
    assert (d / "tables" / "summary_wide.csv").is_file()
    dec = json.loads((d / "decompression.json").read_text())
    assert dec["gzip_mib_s"] > 0 and dec["package_set"] == "medium"
    assert dec["guest_gzip_mib_s"] > 0 and 0 < dec["load_fraction_of_guest_gzip"]
    # measured in the first measured main-run boot of the main set (and the next one only when the host was busy
    # during it); the warm-up and load-cost boots skipped it
    gz = [n for n in (0, 1, 2, 100, 101, 102)
          if "@@SECTION apk_gunzip@@" in (d / "bundles" / f"alpine-{n}.txt").read_text()]
    assert gz[0] == 1 and set(gz) <= {1, 2} and dec["guest_boots"] and set(dec["guest_boots"]) <= set(gz)
    # environment: accelerator and what was tried, image hash, guest kernel
    env = json.loads((d / "environment.json").read_text())
    assert env["extra"]["accel"] == run.accel
    assert env["extra"]["accel_tried"][-1][0] == run.accel and env["extra"]["accel_tried"][-1][1] is True
    assert len(env["extra"]["image"]["sha256"]) == 64 and env["guest_kernel"]
    # transcript: commands with argv/rc/duration, including the QEMU boots
    tr = read_transcript(d / "transcript.jsonl")
    qemu_rows = [r for r in tr if r.get("event") == "command" and "qemu-system-x86_64" in str(r["argv"][0])]
    assert len(qemu_rows) >= 2 and all("duration_s" in r for r in qemu_rows)
    # the report
    html = (d / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in html
    assert "rehearsal" in html and run.accel in html
    assert "alpine-rehearsal" in html and "nixos-rehearsal" in html
    assert "load cost" in html and "Firefox" in html and "Mann" in html
    assert (d / "bundles" / "alpine-0.txt").read_text().startswith("@@LABKIT-BUNDLE-BEGIN v=1 os=alpine-rehearsal")
    assert not (d / "work" / "disk.img").exists()  # removed unless --keep-image


@pytest.mark.boot
def test_hung_boots_are_killed_logged_and_the_run_goes_on(tmp_path: Path) -> None:
    """A boot that never finishes: killed at the timeout, partial serial log kept, marked failed,
    and the next boot still runs."""
    params = LabParams(out=str(tmp_path / "run"), boots=2, max_boots=2, warmup=0, systems=("alpine",),
                       boot_timeout_s=7.0, accel=("tcg",), load_cost=False)
    with pytest.raises(LabkitError, match="no boot produced a usable bundle"):
        run_lab(params, progress=None)
    d = tmp_path / "run"
    boots = _boots(d)
    assert len(boots) == 2
    for b in boots:
        assert b["ok"] == "False" and b["timed_out"] == "True"
        # the serial log is kept (what OVMF printed before the kill; empty when the host was too busy for
        # OVMF to print within 7 s — the partial-line case is tests/test_qemu.py's hanging guest)
        assert (d / b["serial_log"]).is_file()
    assert not (d / "results.csv").read_text().strip().splitlines()[1:]
    env = json.loads((d / "environment.json").read_text())
    assert env["extra"]["boots_failed"] == 2
