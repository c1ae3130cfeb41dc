"""JupyterLab in headless Chromium, as a learner uses it: the form in one notebook, the value used by the next,
and a bad value shown as a short error.

The test starts JupyterLab from this venv on 127.0.0.1 (a free port, a token, ``--no-browser``, isolated
config/data/runtime directories) with a temporary root holding two small notebooks made from the real ones:
``form.ipynb`` (``00_overview``'s parameters cell and its first code cell, which builds the form) and
``next.ipynb`` (``01_disk``'s parameters cell and first code cell, then a cell printing the settings it got,
then a cell asking for a bad value). Both kernels are created through the REST API before the page opens.

Playwright drives Debian's /usr/bin/chromium (fresh profile). In ``form.ipynb`` the form is changed through the
UI (the ``lab`` toggle button); the form saves the run's settings file. In ``next.ipynb`` —
whose own parameters cell still says ``target='plan'`` — the settings read back are the form's; then a bad
value gives the short error box (problem, fix, folded traceback) and no labkit traceback in the cell's error
output. Screenshots go to test-artifacts/ (browser-form.png, browser-next.png, browser-failure.png on failure).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NOTEBOOKS = ("form.ipynb", "next.ipynb")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 45_000  # bound on every single wait in the page
READBACK = (
    "import json, sys\n"
    'print("LABKIT-PARAMS " + json.dumps({"target": S.target, "layout_name": S.layout_name, "boots": S.boots,\n'
    '                                     "prefix": sys.prefix}))'
)
BAD_VALUE = 'start({**globals(), "target": "lab", "sizes": {"nix_store": "lots"}, "interactive": False}, "01_disk")'


def _playwright_missing() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return True
    return False


pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is missing: apt-get install chromium"),
    pytest.mark.skipif(_playwright_missing(), reason="python playwright is missing: pip install -e '.[dev]'"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _first_cells(name: str) -> list[Any]:
    """A real notebook's parameters cell and its first code cell after it (the one calling start())."""
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    start = next(c for c in code if "start(globals()" in c.source)
    assert "interactive = True" in code[0].source, f"{name}'s parameters cell no longer defaults interactive"
    return [nbformat.v4.new_code_cell(code[0].source), nbformat.v4.new_code_cell(start.source)]


def _write_notebooks(root: Path) -> dict[str, int]:
    import nbformat

    cells = {"form.ipynb": _first_cells("00_overview"),
             "next.ipynb": [*_first_cells("01_disk"), nbformat.v4.new_code_cell(READBACK),
                            nbformat.v4.new_code_cell(BAD_VALUE)]}
    for name, cs in cells.items():
        nb = nbformat.v4.new_notebook(cells=cs)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        nbformat.write(nb, root / name)
    return {name: len(cs) for name, cs in cells.items()}


@dataclass
class Lab:
    base: str
    token: str
    log: Path
    ncells: dict[str, int]

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"{self.base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def url(self, notebook: str) -> str:
        return f"{self.base}/lab/tree/{notebook}?token={self.token}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "notebooks"
    root.mkdir()
    ncells = _write_notebooks(root)
    cfg = tmp_path / "jcfg"
    # no news/update toasts over the page
    notif = cfg / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notif.parent.mkdir(parents=True)
    notif.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {
        **os.environ, "JUPYTER_CONFIG_DIR": str(cfg), "JUPYTER_DATA_DIR": str(tmp_path / "jdata"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"), "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    env.pop("JUPYTER_PATH", None)  # kernelspecs: only this venv's python3
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp_path / "jupyter.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    server = Lab(f"http://127.0.0.1:{port}", token, log_path, ncells)
    session_ids: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                server.api("GET", "/api/status")
                break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.3)
        specs = server.api("GET", "/api/kernelspecs")
        assert "python3" in specs["kernelspecs"], specs
        # the sessions first: JupyterLab attaches to these kernels and never shows "Select Kernel"
        for name in NOTEBOOKS:
            session = server.api("POST", "/api/sessions", {
                "path": name, "name": name, "type": "notebook", "kernel": {"name": "python3"}})
            session_ids.append(session["id"])
        yield server
    finally:
        for sid in session_ids:
            if proc.poll() is None:
                try:
                    server.api("DELETE", f"/api/sessions/{sid}")  # shuts the kernel down
                except OSError:
                    pass
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_the_form_in_one_notebook_holds_in_the_next_and_errors_are_short(lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import Page, expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    for old in ("browser-form.png", "browser-next.png", "browser-failure.png"):
        (ARTIFACTS / old).unlink(missing_ok=True)
    prompt_done = re.compile(r"^\s*\[\d+\]:\s*$")
    expect.set_options(timeout=WAIT_MS)

    def open_notebook(page: Page, name: str) -> Any:
        page.goto(lab.url(name))
        cells = page.locator(".jp-NotebookPanel:visible .jp-Notebook .jp-Cell")
        expect(cells).to_have_count(lab.ncells[name], timeout=60_000)
        expect(page.locator(".jp-Dialog")).to_have_count(0)
        return cells

    def run_cell(page: Page, cells: Any, i: int, attempts: int = 1, fails: bool = False) -> None:
        """Select cell i in command mode, Shift+Enter, wait for its prompt number."""
        prompt = cells.nth(i).locator(".jp-InputArea-prompt")
        for attempt in range(attempts):
            prompt.click()
            page.keyboard.press("Escape")
            page.keyboard.press("Shift+Enter")
            try:
                expect(prompt).to_have_text(prompt_done, timeout=20_000 if attempts > 1 else WAIT_MS)
                break
            except AssertionError:
                if attempt == attempts - 1:
                    raise
        errors = cells.nth(i).locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        if errors.count() and not fails:
            raise AssertionError(f"cell {i} failed in the kernel:\n" + errors.first.inner_text()[-3000:])

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 1000},
        )
        ctx.set_default_timeout(WAIT_MS)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        try:
            cells = open_notebook(page, "form.ipynb")
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first).to_be_visible()
            # the parameters cell only assigns constants: safe to send again if the first request is lost
            run_cell(page, cells, 0, attempts=3)
            run_cell(page, cells, 1)
            form = page.locator(".jupyter-widgets.labkit-params-form")
            expect(form).to_be_visible()
            status = form.locator(".labkit-params-ok")
            expect(status).to_contain_text("target=plan")
            expect(status).to_contain_text("layout=seed")
            # change the form through the UI: the lab target (the layout follows: lab)
            form.locator(".widget-toggle-buttons button", has_text=re.compile(r"^\s*lab\s*$")).click()
            expect(status).to_contain_text("target=lab, layout=lab")  # computed in the kernel, saved
            form.scroll_into_view_if_needed()
            form.screenshot(path=str(ARTIFACTS / "browser-form.png"))

            # the next notebook: its own parameters cell says target='plan'; the form's choice holds
            cells = open_notebook(page, "next.ipynb")
            run_cell(page, cells, 0, attempts=3)
            run_cell(page, cells, 1)
            run_cell(page, cells, 2)
            out = cells.nth(2).locator(".jp-OutputArea-output", has_text="LABKIT-PARAMS")
            expect(out).to_be_visible()
            text = out.inner_text()
            # a bad value: the short error box, and no labkit source in the cell's error output
            run_cell(page, cells, 3, fails=True)
            box = cells.nth(3).locator(".labkit-error")
            expect(box).to_be_visible()
            expect(box).to_contain_text("sizes: cannot read size 'lots'")
            expect(box).to_contain_text("Fix:")
            err = cells.nth(3).locator(".jp-OutputArea-output", has_text="InputError").last
            expect(err).to_be_visible()
            err_text = err.inner_text()
            page.screenshot(path=str(ARTIFACTS / "browser-next.png"))
        except Exception:
            try:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
            finally:
                sys.stderr.write("jupyter log tail:\n" + lab.log.read_text()[-3000:])
            raise
        finally:
            ctx.close()

    got = json.loads(text.split("LABKIT-PARAMS", 1)[1].strip().splitlines()[0])
    assert got == {"target": "lab", "layout_name": "lab", "boots": 3, "prefix": sys.prefix}, got
    assert "InputError" in err_text and "labkit/core" not in err_text and len(err_text.splitlines()) <= 6, err_text
    assert (ARTIFACTS / "browser-form.png").stat().st_size > 1000
