"""Merging run folders into one (de-duplicated by run id, environments kept, statistics per host and cell,
CI overlap between runs) and repeating a run with ``labkit lab --like``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth

from labkit.cli import main as cli
from labkit.core.errors import InputError
from labkit.core.settings import Settings
from labkit.lab.like import params_from_record, setup_differences
from labkit.measure.environment import environment_differences, host_name
from labkit.report.merge import MergeError, load_merged, merge_runs, overlap_word, per_cell_wide
from labkit.report.report import load_report_context, render_report


def _run(path: Path, run_id: str, *, host: str | None = None, boots: int = 4, **params: object) -> Path:
    run = synth.make_run_dir(path, boots=boots, run_id=run_id)
    env = json.loads((run / "environment.json").read_text())
    env["params"].update(params)
    env.setdefault("extra", {})["run_id"] = run_id
    if host is not None:
        env["host"]["hostname"] = host
    (run / "environment.json").write_text(json.dumps(env))
    (run / "boots.csv").write_text(
        "os,boot,warmup,ok,reason,wall_s,accel,timed_out,serial_log,bundle\n"
        + "".join(f"alpine,{b},{b == 0},True,guest powered off,12.0,tcg,False,serial-alpine-rehearsal-{b}.log,\n"
                  for b in range(boots)))
    return run


def test_two_runs_merge_into_one_folder_with_their_factor_as_a_column(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", "run-a", memory_mib=512)
    b = _run(tmp_path / "b", "run-b", memory_mib=384)
    m = merge_runs([a, b], tmp_path / "m")
    assert m.factors == ["memory_mib"] and list(m.runs["cell"]) == ["memory_mib=512", "memory_mib=384"]
    out = tmp_path / "m"
    # each run's folder copied (the merged folder stands alone), each environment kept as it was
    assert (out / "runs" / "run-a" / "results.csv").read_bytes() == (a / "results.csv").read_bytes()
    assert (out / "environments" / "run-b.json").read_bytes() == (b / "environment.json").read_bytes()
    res = pd.read_csv(out / "results.csv")
    assert set(res["run_id"]) == {"run-a", "run-b"} and set(res["memory_mib"]) == {384, 512}
    assert len(res) == len(pd.read_csv(a / "results.csv")) + len(pd.read_csv(b / "results.csv"))
    boots = pd.read_csv(out / "boots.csv")
    assert (out / boots["serial_log"].iloc[0]).is_file()  # links still lead to the serial logs
    # statistics per host and cell, numbers in numeric order
    per_cell = pd.read_csv(out / "stats_per_cell.csv")
    assert list(dict.fromkeys(per_cell["cell"])) == ["memory_mib=384", "memory_mib=512"]
    wide = per_cell_wide(per_cell, with_host=False)
    assert list(wide.columns) == ["os", "metric", "unit", "memory_mib=384", "memory_mib=512"]
    # two runs merged: their CIs compared per metric
    ov = m.overlap
    assert set(ov["overlap"]) <= {"yes", "no"} and "total_to_probe_s" in set(ov["metric"])
    assert (ov["overlap"] == "yes").all()  # the same synthetic boots: identical intervals


def test_rows_are_deduplicated_by_run_id(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", "run-a")
    copy = tmp_path / "copy-of-a"
    shutil.copytree(a, copy)
    b = _run(tmp_path / "b", "run-b")
    m = merge_runs([a, copy, b], tmp_path / "m")
    assert list(m.runs["run_id"]) == ["run-a", "run-b"]
    assert m.duplicates == [{"run_id": "run-a", "kept": str(a), "dropped": str(copy), "identical_rows": True}]
    res = pd.read_csv(tmp_path / "m" / "results.csv")
    assert len(res) == len(pd.read_csv(a / "results.csv")) * 2
    assert m.factors == [] and set(m.runs["cell"]) == {"all"}
    # merging the merged folder with one more run expands it into its runs, once each
    c = _run(tmp_path / "c", "run-c")
    m2 = merge_runs([tmp_path / "m", a, c], tmp_path / "m2")
    assert list(m2.runs["run_id"]) == ["run-a", "run-b", "run-c"] and len(m2.duplicates) == 1


def test_hosts_are_never_pooled(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", "run-a", host="pc-1")
    b = _run(tmp_path / "b", "run-b", host="pc-2")
    b_env = json.loads((b / "environment.json").read_text())
    b_env["packages"]["qemu-system-x86"] = "1:9.9-test"
    (b / "environment.json").write_text(json.dumps(b_env))
    m = merge_runs([a, b], tmp_path / "m")
    assert m.hosts == ["pc-1", "pc-2"]
    per_cell = pd.read_csv(tmp_path / "m" / "stats_per_cell.csv")
    assert sorted(per_cell["host"].unique()) == ["pc-1", "pc-2"]
    n = per_cell[(per_cell["metric"] == "kernel_s") & (per_cell["os"] == "alpine-rehearsal")]["n"]
    assert list(n) == [3, 3]  # 3 measured boots per host, not 6 pooled
    diff = pd.read_csv(tmp_path / "m" / "environment_differences.csv").set_index("item")
    assert diff.loc["packages.qemu-system-x86", "run-b"] == "1:9.9-test"
    assert "host.hostname" in diff.index
    ctx = load_report_context(tmp_path / "m")
    assert "alpine-rehearsal @ pc-1" in ctx.systems and "nixos-rehearsal @ pc-2" in ctx.systems


def test_merged_folder_renders_with_the_report_notebook(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", "run-a", memory_mib=512)
    b = _run(tmp_path / "b", "run-b", memory_mib=384)
    merge_runs([a, b], tmp_path / "m")
    html = render_report(tmp_path / "m").read_text()
    assert "alpine-rehearsal | memory_mib=384" in html and "nixos-rehearsal | memory_mib=512" in html
    assert "2 run(s) from 1 host(s)" in html and "Do the runs' 95 % CIs overlap?" in html
    assert html.count("data:image/png;base64") >= 4  # phases, RAM, packages, the factors' figure
    ctx = load_report_context(tmp_path / "m")
    assert ctx.merged is not None and len(load_merged(tmp_path / "m").per_run)
    # a single run still renders as before, saying nothing was merged
    single = render_report(synth.make_run_dir(tmp_path / "single", boots=3)).read_text()
    assert "A single run: nothing merged" in single


def test_bad_merges_are_refused(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", "run-a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="not a run folder"):
        merge_runs([tmp_path / "empty"], tmp_path / "m")
    with pytest.raises(MergeError, match="not a directory"):
        merge_runs([tmp_path / "nope"], tmp_path / "m")
    with pytest.raises(InputError, match="already holds a run"):  # the one run-folder rule (core/runfolder)
        merge_runs([a], a)
    assert not (tmp_path / "m").exists()


def test_overlap_of_two_intervals() -> None:
    assert overlap_word(1.0, 2.0, 1.5, 3.0) == "yes"
    assert overlap_word(1.0, 2.0, 2.0, 3.0) == "yes"
    assert overlap_word(1.0, 2.0, 2.1, 3.0) == "no"
    assert overlap_word(np.nan, np.nan, 2.1, 3.0).startswith("unknown")


# -- labkit lab --like -----------------------------------------------------------------------------------
def test_recorded_parameters_come_back_as_lab_settings(tmp_path: Path) -> None:
    p = Settings(out=str(tmp_path / "x"), boots=2, warmup=0, systems=("alpine",), memory_mib=384, load_cost=False,
                 spread_threshold=0.1, max_boots=4, cache_dir="/elsewhere/cache")
    record = json.loads(json.dumps(p.as_record()))  # as environment.json holds it
    record["a_newer_option"] = 1
    del record["package_set"]
    back, notes = params_from_record(record, out=str(tmp_path / "y"))
    assert back.boots == 2 and back.systems == ("alpine",) and back.memory_mib == 384 and back.max_boots == 4
    assert back.load_sets == ("base", "xlarge") and back.out == str(tmp_path / "y")
    assert back.cache_dir == ""  # local: this machine's cache, never the other machine's path
    assert notes == ["parameter 'package_set' is not recorded: this labkit's default is used",
                     "recorded parameter 'a_newer_option' is unknown to this labkit version: ignored"]
    # a run recorded before the settings table (LabParams' names and None values)
    old, notes = params_from_record({"world": "small", "accel_candidates": ["tcg"], "max_boots": None,
                                     "alpine_iso": None, "boots": 1, "systems": ["alpine"], "load_cost": False})
    assert (old.package_set, old.accel, old.max_boots, old.alpine_iso, old.boots) == ("small", ("tcg",), 0, "", 1)
    with pytest.raises(InputError, match="is not a whole number"):
        params_from_record({"boots": "three"})


def test_like_warns_about_every_host_and_tool_difference(tmp_path: Path) -> None:
    run = _run(tmp_path / "a", "run-a")
    env = json.loads((run / "environment.json").read_text())
    env["host"]["cpu_model"] = "Some Other CPU"
    env["labkit_version"] = "0.0.1"
    env.setdefault("extra", {})["host_versions"] = {"qemu": "1.0.0"}
    keys = {k for k, _, _ in setup_differences(env)}
    assert {"host.cpu_model", "labkit_version", "extra.host_versions.qemu"} <= keys
    assert "captured_at" not in keys and not any(k.startswith("params.") for k in keys)
    assert environment_differences(env, env) == []
    assert host_name({"host": {"uname": "Linux pc-7 6.1.0 #1 x86_64"}}) == "pc-7"


def test_like_refuses_extra_parameters_and_folders_without_an_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(tmp_path / "a", "run-a")
    assert cli.main(["lab", "--like", str(run), "--boots", "5"]) == 2
    err = capsys.readouterr().err
    assert "--boots was given too" in err and "drop those options" in err
    (tmp_path / "bare").mkdir()
    assert cli.main(["lab", "--like", str(tmp_path / "bare")]) == 2
    assert "no environment.json there" in capsys.readouterr().err


@pytest.mark.boot
def test_lab_like_then_merge_reports_the_overlap_per_metric(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    first, again, merged = tmp_path / "first", tmp_path / "again", tmp_path / "merged"
    t0 = time.monotonic()
    assert cli.main(["lab", "--boots", "2", "--max-boots", "2", "--warmup", "0", "--no-load-cost", "--systems",
                     "alpine", "--no-report", "--out", str(first)]) == 0
    t1 = time.monotonic()
    capsys.readouterr()
    assert cli.main(["lab", "--like", str(first), "--out", str(again), "--no-report"]) == 0
    t2 = time.monotonic()
    like = capsys.readouterr()
    assert "host, tools and versions are the same as in the recorded run" in like.err
    env_new = json.loads((again / "environment.json").read_text())
    env_old = json.loads((first / "environment.json").read_text())
    assert env_new["extra"]["like"]["run_id"] == env_old["extra"]["run_id"] == "first"
    assert {k: v for k, v in env_new["params"].items() if k != "out"} == \
        {k: v for k, v in env_old["params"].items() if k != "out"}
    assert cli.main(["merge", str(first), str(again), "--out", str(merged)]) == 0
    t3 = time.monotonic()
    out = capsys.readouterr().out
    assert "do the 95 % confidence intervals of the median overlap? A = first, B = again" in out
    lines = [ln for ln in out.splitlines() if ln.startswith("  total_to_probe_s")]
    assert len(lines) == 1 and lines[0].rstrip().endswith(("yes", "no"))
    ov = pd.read_csv(merged / "ci_overlap.csv")
    assert {"total_to_probe_s", "kernel_s", "ram_used_mib"} <= set(ov["metric"])
    assert set(ov["overlap"]) <= {"yes", "no"}
    html = (merged / "report.html").read_text()
    assert "Do the runs' 95 % CIs overlap?" in html
    print(f"lab {t1 - t0:.0f} s, lab --like {t2 - t1:.0f} s, merge + report {t3 - t2:.0f} s")
