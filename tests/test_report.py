"""The report notebook: committed clean, validated parameters, rendered to a self-contained HTML."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import synth

from labkit.core.runner import Runner, read_transcript
from labkit.report.report import (
    ReportError,
    load_report_context,
    notebook_path,
    origin_label,
    phases_figure,
    ram_figure,
    render_report,
    threats,
    validate_run_dir,
)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_report.ipynb"


def test_committed_notebook_has_no_outputs_and_one_parameters_cell() -> None:
    assert notebook_path() == NOTEBOOK
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    from labkit.core.settings import parameters_cell

    assert len(params) == 1 and params[0].source == parameters_cell("06_report")
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_notebook_cells_stay_thin() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            assert len(c.source.splitlines()) <= 3, c.source
            assert "rehearsal" not in c.source and "tcg" not in c.source  # never hard-coded


def test_validate_run_dir(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="run_dir is empty"):
        validate_run_dir("")
    with pytest.raises(ReportError, match="not a directory"):
        validate_run_dir(tmp_path / "nope")
    with pytest.raises(ReportError, match=r"has no results\.csv"):
        validate_run_dir(tmp_path)
    with pytest.raises(ReportError, match=r"has no results\.csv"):
        render_report(tmp_path)  # fails before starting a kernel


def _results(guest: str, os_id: str, accel: str) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": "r", "os": os_id, "guest": guest, "boot": 0, "warmup": False, "accel": accel,
                          "metric": "kernel_s", "value": 1.0, "unit": "s", "source": "dmesg"}])


def test_origin_label_comes_from_the_data() -> None:
    lab = {"params": {"target": "lab"}}
    assert origin_label(_results("rehearsal", "alpine-rehearsal", "tcg"), lab) == (
        "rehearsal guests (not Alpine/NixOS), lab VM, accelerator: tcg"
    )
    assert origin_label(_results("real", "alpine", "kvm"), lab) == "real systems: alpine, lab VM, accelerator: kvm"
    assert origin_label(_results("real", "nixos", "hardware"), {"params": {"target": "disk"}}) == (
        "real systems: nixos, hardware, accelerator: hardware"
    )
    # who installed the Alpine-style guest's packages (environment.json, from the guest build)
    for how, says in (("apk-tools", "installed by Alpine's apk-tools"), ("labkit-tarballs", "not apk-tools")):
        env = {**lab, "extra": {"guests": {"alpine": {"package_install": how}}}}
        assert origin_label(_results("rehearsal", "alpine-rehearsal", "tcg"), env).startswith(
            "rehearsal guests (not Alpine/NixOS), lab VM, accelerator: tcg; Alpine-style packages")
        assert says in origin_label(_results("rehearsal", "alpine-rehearsal", "tcg"), env)
    mixed = pd.concat([_results("rehearsal", "nixos-rehearsal", "tcg"), _results("real", "alpine", "tcg")])
    assert origin_label(mixed, {}).startswith("mixed: rehearsal guests nixos-rehearsal (not Alpine/NixOS) and real")


def test_figures_and_threats_without_kernel(tmp_path: Path) -> None:
    ctx = load_report_context(synth.make_run_dir(tmp_path / "run", boots=3))
    assert ctx.origin == "rehearsal guests (not Alpine/NixOS), lab VM, accelerator: tcg"
    for fig in (phases_figure(ctx), ram_figure(ctx)):
        assert ctx.origin in fig.axes[0].get_title()
    text = " ".join(threats(ctx))
    assert "TCG" in text and "Rehearsal guests" in text and "n=2" in text


def test_render_report_end_to_end(tmp_path: Path) -> None:
    run_dir = synth.make_run_dir(tmp_path / "run", boots=4)
    transcript = tmp_path / "transcript.jsonl"
    start = time.monotonic()
    html_path = render_report(run_dir, runner=Runner(transcript=transcript, progress=None))
    elapsed = time.monotonic() - start
    assert html_path == run_dir.resolve() / "report.html"
    html = html_path.read_text()
    assert "data:image/png;base64" in html
    assert len(re.findall(r"data:image/png;base64", html)) >= 2
    assert "rehearsal guests (not Alpine/NixOS), lab VM, accelerator: tcg" in html
    assert "Threats to validity" in html and "TCG emulation" in html
    # a metric that does not apply to nixos shows as "n/a", one that applies but is absent as "missing"
    def wide_row(metric: str) -> list[str]:  # the row of the "median [CI] per system" table
        for row in re.findall(rf"<tr>\s*<td>{metric}</td>(.*?)</tr>", html, re.S):
            cells = re.findall(r"<td>(.*?)</td>", row)
            if len(cells) == 3:
                return cells
        raise AssertionError(metric)

    cells = wide_row("alpine_package_load_s")
    assert cells[1] == "n/a" and re.match(r"^[0-9.]+ \[", cells[0])
    assert wide_row("package_count")[:2] == ["missing", "missing"]
    # the executed notebook is kept, no temp files are left
    assert (run_dir / "report.ipynb").is_file()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]
    events = read_transcript(transcript)
    papermill_runs = [e for e in events if str(e.get("argv", "")).startswith("['papermill'")]
    assert papermill_runs and papermill_runs[-1]["rc"] == 0
    assert elapsed < 120


def test_failing_notebook_keeps_the_evidence(tmp_path: Path) -> None:
    run_dir = synth.make_run_dir(tmp_path / "run", boots=2)
    (run_dir / "environment.json").write_text("{not json")
    with pytest.raises(ReportError, match="report notebook failed") as exc:
        render_report(run_dir)
    assert "report-failed.ipynb" in str(exc.value)
    assert (run_dir / "report-failed.ipynb").is_file()
    assert not (run_dir / "report.html").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


NB05 = Path(__file__).resolve().parents[1] / "notebooks" / "05_benchmark.ipynb"


def test_benchmark_notebook_is_clean_and_plans_without_booting(tmp_path: Path) -> None:
    import papermill

    nb = nbformat.read(NB05, as_version=4)
    nbformat.validate(nb)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert len([c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]) == 1
    out = papermill.execute_notebook(str(NB05), str(tmp_path / "o.ipynb"), parameters={"target": "plan", "boots": 2},
                                     kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "nothing was built or booted" in text and "load cost" in text and "nixos#1" in text
    assert not (tmp_path / "runs").exists()


def test_metric_missing_on_one_system_is_missing_not_zero(tmp_path: Path) -> None:
    from labkit.measure.results import ResultRow, write_results_csv
    from labkit.report.report import load_report_context, wide_summary_table, write_tables

    rows = []
    for os_id in ("alpine-rehearsal", "nixos-rehearsal"):
        for b in range(3):
            rows.append(ResultRow("r", os_id, "rehearsal", b, False, "tcg", "kernel_s", 2.0 + b / 10, "s", "dmesg"))
            if os_id == "alpine-rehearsal":  # ram measured on one system only
                rows.append(ResultRow("r", os_id, "rehearsal", b, False, "tcg", "ram_used_mib", 60.0, "MiB", "m"))
    write_results_csv(rows, tmp_path / "results.csv")
    # the lab writes, per boot, the metrics that apply but have no value, with the reason (JSON)
    why = json.dumps({"ram_used_mib": "no meminfo section"}).replace('"', '""')
    (tmp_path / "boots.csv").write_text(
        "os,boot,warmup,ok,reason,wall_s,accel,timed_out,serial_log,bundle,missing\n"
        + "".join(f'nixos,{b},False,True,ok,1.0,tcg,False,s,b,"{why}"\n' for b in range(3)))
    ctx = load_report_context(tmp_path)
    wide = wide_summary_table(ctx).set_index("metric")
    assert wide.loc["ram_used_mib", "nixos-rehearsal"] == "missing"
    assert wide.loc["ram_used_mib", "alpine-rehearsal"].startswith("60")
    assert wide.loc["alpine_package_load_s", "nixos-rehearsal"] == "n/a"
    assert wide.loc["alpine_package_load_s", "alpine-rehearsal"] == "missing"
    paths = {p.name for p in write_tables(ctx)}
    assert {"summary.csv", "summary_wide.csv", "comparison_mann_whitney.csv"} <= paths
    summary = (tmp_path / "tables" / "summary.csv").read_text()
    line = next(ln for ln in summary.splitlines() if ln.startswith("nixos-rehearsal,ram_used_mib"))
    assert ",0," in line and line.endswith("missing,no meminfo section")  # n = 0, empty statistics: never 0


def test_failed_boots_are_listed_not_hidden(tmp_path: Path) -> None:
    """A boot that timed out contributes no metric, but the report says so, with its reason and log."""
    run_dir = synth.make_run_dir(tmp_path / "run", boots=3)
    (run_dir / "boots.csv").write_text(
        "os,boot,warmup,ok,reason,wall_s,accel,timed_out,serial_log,bundle\n"
        "alpine,1,False,True,guest powered off,12.1,tcg,False,serial/alpine-1.log,bundles/alpine-1.txt\n"
        "nixos,1,False,False,no exit within 120 s: killed,120.0,tcg,True,serial/nixos-1.log,\n"
    )
    from labkit.report.report import boots_table, failed_boots

    ctx = load_report_context(run_dir)
    assert len(boots_table(ctx)) == 2
    bad = failed_boots(ctx)
    assert list(bad["os"]) == ["nixos"] and "killed" in bad["reason"].iloc[0]
    html = render_report(run_dir).read_text()
    assert "1 of 2 boots failed" in html and "no exit within 120 s: killed" in html
    assert (run_dir / "tables" / "boots.csv").is_file()


def test_incomplete_installs_leave_the_statistics(tmp_path: Path) -> None:
    """An Alpine boot that came up without some world packages would read as a fast boot: none of its
    metrics enter the statistics, and the threats say which boot and why."""
    run_dir = synth.make_run_dir(tmp_path / "run", boots=4)
    df = pd.read_csv(run_dir / "results.csv")
    alpine = df[df["os"] == "alpine-rehearsal"].drop_duplicates("boot").copy()
    alpine["metric"], alpine["unit"] = "packages_missing", "count"
    alpine["value"] = [3.0 if b == 2 else 0.0 for b in alpine["boot"]]  # boot 2 lost three world packages
    pd.concat([df, alpine]).to_csv(run_dir / "results.csv", index=False)
    ctx = load_report_context(run_dir)
    assert ctx.incomplete is not None and list(zip(ctx.incomplete["os"], ctx.incomplete["boot"], strict=True)) == [
        ("alpine-rehearsal", 2)]
    alpine = ctx.results[ctx.results["os"] == "alpine-rehearsal"]
    assert 2 not in set(alpine["boot"]) and {1, 3} <= set(alpine["boot"])
    assert 2 in set(ctx.results[ctx.results["os"] == "nixos-rehearsal"]["boot"])
    assert any("**Incomplete installs**: 1 boot(s) (alpine-rehearsal #2)" in t for t in threats(ctx))


def test_method_check_table_gives_guest_minus_host(tmp_path: Path) -> None:
    """The reboot loop's method_check.csv in the report: guest - host per boot; a missing guest clock stays
    missing (no FPDT under OVMF), never 0."""
    from types import SimpleNamespace

    from labkit.report.report import method_check_table

    ctx = SimpleNamespace(run_dir=tmp_path)
    assert method_check_table(ctx).empty  # type: ignore[arg-type]
    (tmp_path / "method_check.csv").write_text(
        "os,boot,host_firmware_loaders_s,guest_firmware_s,guest_loader_s,guest_firmware_plus_loader_s,"
        "host_total_to_probe_s,guest_uptime_at_probe_s\n"
        "alpine-rehearsal,1,12.5,,,,33.0,21.25\n"
        "nixos-rehearsal,2,10.0,6.0,4.5,10.5,30.0,20.0\n")
    t = method_check_table(ctx)  # type: ignore[arg-type]
    assert pd.isna(t.loc[0, "firmware_loader_diff_s"]) and t.loc[0, "to_probe_diff_s"] == pytest.approx(-11.75)
    assert t.loc[1, "firmware_loader_diff_s"] == pytest.approx(0.5)
