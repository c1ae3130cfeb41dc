"""notebooks/04_alpine.ipynb: committed clean, runs under papermill in plan mode."""

from __future__ import annotations

from pathlib import Path

import nbformat
from test_alpine_extract import make_iso

from labkit.report.report import _kernel_name

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "04_alpine.ipynb"


def test_committed_clean_with_one_parameters_cell() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert len([c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]) == 1


def test_runs_in_plan_mode(tmp_path: Path) -> None:
    """Plan mode with an ISO: the extraction and the copy onto the Alpine partition are shown on the
    placeholder disk, the apkovl's entries are listed, nothing is extracted or written."""
    import papermill

    iso = make_iso(tmp_path)
    run = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "run.ipynb"), kernel_name=_kernel_name(), progress_bar=False, cwd=str(tmp_path),
        parameters={"target": "plan", "alpine_iso": str(iso), "run_dir": str(run), "hostname": "nb",
                    "interactive": False},
    )
    text = (tmp_path / "run.ipynb").read_text()
    assert "-extract /apks" in text and "/dev/sdX4" in text and "DISKOPTS=none" in text
    assert "etc/apk/world" in text and "nb" in text
    assert not list(run.rglob("apks"))  # plan: the extraction is shown, not run
