"""The notebook chain: parameters per notebook, stop at the first failure, resume, index.html."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.core.settings import Settings
from labkit.guide.chain import parameters_for, run_chain, split_assignments

META = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}


def _nb(path: Path, params: str, *body: str) -> Path:
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[cell, *(new_code_cell(b) for b in body)], metadata=META)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def nbs(tmp_path: Path) -> Path:
    d = tmp_path / "nbs"
    d.mkdir()
    _nb(d / "00_overview.ipynb", 'target = "plan"\nboots = 1', "print('overview', target, boots)")
    _nb(d / "01_disk.ipynb", 'workdir = "x"\nflag = 0', "import os\nprint('disk', workdir, flag)")
    _nb(d / "02_refind.ipynb", "fail = False", "x = 1", "if fail:\n    raise ValueError('boom in refind')")
    _nb(d / "03_nixos.ipynb", 'target = ""', "print('nixos', target)")
    return d


def test_params_validate_with_a_fix() -> None:
    with pytest.raises(InputError, match="target"):
        Settings(target="cloud")
    with pytest.raises(InputError, match="fingerprint"):
        Settings(target="disk", device="/dev/sdb")
    p, extra = split_assignments([("boots", "3"), ("target", "lab"), ("01_disk.flag", "7")], Settings())
    assert (p.boots, p.target, p.layout_name, extra) == (3, "lab", "lab", {"01_disk.flag": 7})


def test_each_notebook_gets_only_what_it_declares(nbs: Path, tmp_path: Path) -> None:
    p = Settings(target="lab", boots=2)
    assert parameters_for(nbs / "00_overview.ipynb", p, tmp_path) == {"target": "lab", "boots": 2}
    got = parameters_for(nbs / "01_disk.ipynb", p, tmp_path, {"01_disk.flag": 5, "02_refind.fail": True})
    assert got == {"workdir": str(tmp_path / "work" / "01_disk"), "flag": 5}


def test_stops_at_the_first_failure_then_resumes(nbs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    run = run_chain(Settings(), out=out, nb_dir=nbs, extra={"fail": True}, log=None)
    assert [s.status for s in run.steps] == ["ok", "ok", "failed", "skipped"]
    bad = run.failed
    assert bad is not None and bad.name == "02_refind" and "boom in refind" in bad.reason
    assert bad.failed_cell and "raise ValueError" in bad.failed_cell
    index = (out / "index.html").read_text()
    assert "failing cell" in index and 'href="html/02_refind.html"' in index
    with pytest.raises(InputError, match="already holds a chain run"):
        run_chain(Settings(), out=out, nb_dir=nbs, log=None)
    run2 = run_chain(Settings(), out=out, nb_dir=nbs, start_from="02_refind", log=None)
    assert [s.status for s in run2.steps] == ["ok", "ok", "ok", "ok"] and run2.ok
    assert "nixos plan" in (out / "notebooks" / "03_nixos.ipynb").read_text()


def test_unknown_parameter_is_refused_before_running(nbs: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="declares"):
        run_chain(Settings(), out=tmp_path / "r", nb_dir=nbs, extra={"bots": 3}, log=None)
    assert not (tmp_path / "r").exists()


def test_cli_run_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--list"]) == 0
    assert "00_overview: target=" in capsys.readouterr().out
