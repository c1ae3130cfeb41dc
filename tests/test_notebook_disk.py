"""notebooks/01_disk.ipynb runs under papermill in plan mode and executes nothing."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from conftest_loop import make_loop, needs_loop  # noqa: F401

from labkit.core.runner import Runner
from labkit.report.report import _kernel_name
from labkit.targets.disks import read_disk

NB = Path(__file__).resolve().parent.parent / "notebooks" / "01_disk.ipynb"


def test_committed_without_outputs() -> None:
    nb = nbformat.read(NB, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    assert [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


@pytest.mark.root
@needs_loop
def test_plan_mode_under_papermill(tmp_path: Path, make_loop) -> None:  # noqa: F811
    import papermill

    dev = make_loop()
    fp = read_disk(Runner(progress=None), dev).fingerprint
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(NB), str(out), kernel_name=_kernel_name(), progress_bar=False, cwd=str(tmp_path),
                               parameters={"target": "plan", "device": dev, "fingerprint": fp, "layout": "lab",
                                           "workdir": str(tmp_path / "w")})
    text = out.read_text()
    assert "sgdisk --clear" in text and "mkfs.ext4 -q -F -b 4096 -L alpine" in text
    assert "nothing was executed" in text
    assert read_disk(Runner(progress=None), dev).pttype == ""  # the disk is untouched
