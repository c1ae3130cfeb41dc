"""Every chain notebook under papermill, through the chain: plan mode always, lab mode as a boot test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.guide.chain import CHAIN, chain_notebooks, run_chain
from labkit.guide.params import LabkitParams


def test_every_notebook_runs_in_plan_mode(tmp_path: Path) -> None:
    run = run_chain(LabkitParams(target="plan"), out=tmp_path / "run", log=None)
    assert run.ok, [(s.name, s.reason, s.traceback) for s in run.steps if s.status == "failed"]
    names = [s.name for s in run.steps]
    assert names == [p.stem for p in chain_notebooks()] and names == [n for n in CHAIN if n in names]
    for s in run.steps:
        assert s.status == "ok" or (s.status == "skipped" and s.reason), s
        if s.status == "ok":
            assert (run.run_dir / s.html).is_file() and (run.run_dir / s.notebook).is_file()
            assert s.parameters.get("interactive", False) is False
    index = (run.run_dir / "index.html").read_text()
    assert all(f'href="html/{s.name}.html"' in index for s in run.steps if s.status == "ok")
    overview = (run.run_dir / "html" / "00_overview.html").read_text()
    assert "data:image/png;base64" in overview  # the layout diagram
    assert "free space" in overview and "KVM" in overview
    refind = (run.run_dir / "notebooks" / "02_refind.ipynb").read_text()
    assert "refind-install" in refind and "drivers_x64/ext4_x64.efi" in refind
    assert json.loads((run.run_dir / "chain.json").read_text())["ok"] is True


@pytest.mark.boot
def test_chain_in_lab_mode(tmp_path: Path) -> None:
    # one boot per system, no load-cost sets: the whole chain, kept short
    run = run_chain(LabkitParams(target="lab", boots=1), out=tmp_path / "run", log=None,
                    extra={"05_benchmark.load_sets": []})
    assert run.ok, [(s.name, s.reason, s.traceback) for s in run.steps if s.status == "failed"]
    status = {s.name: s.status for s in run.steps}
    assert status["05_benchmark"] == "ok" and status["06_report"] == "ok", status
    report = (run.run_dir / "html" / "06_report.html").read_text()
    assert "rehearsal" in report and "data:image/png;base64" in report
    assert (run.run_dir / "lab" / "results.csv").is_file()
    disk = (run.run_dir / "notebooks" / "01_disk.ipynb").read_text()
    assert "first run applied: partition table" in disk  # the disk phase, rehearsed on a loop disk
    assert "second run applied: nothing" in disk
    refind = (run.run_dir / "notebooks" / "02_refind.ipynb").read_text()
    assert "EFI/BOOT/drivers_x64/ext4_x64.efi" in refind
    # the output line (the source also holds the words, so match the printed kernel banner)
    assert "kernel loaded by rEFInd from ext4: [" in refind and "Linux version" in refind
