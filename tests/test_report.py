"""The report notebook: committed clean, validated parameters, rendered to a self-contained HTML."""

from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import synth

from labkit.report import (
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
from labkit.runner import Runner, read_transcript

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_report.ipynb"


def test_committed_notebook_has_no_outputs_and_one_parameters_cell() -> None:
    assert notebook_path() == NOTEBOOK
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0].source.strip() == 'run_dir: str = ""'
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
    # the metric missing on nixos shows as "missing", not as a number
    row = re.search(r"<tr>\s*<td>nixos-rehearsal</td>\s*<td>alpine_package_load_s</td>(.*?)</tr>", html, re.S)
    assert row is not None
    cells = re.findall(r"<td>(.*?)</td>", row.group(1))
    assert cells[1] == "0"  # n
    assert cells[2:] == ["missing"] * 5
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
