"""JupyterLab in headless Chromium: the widget form renders, and its values reach the parameters.

The test starts JupyterLab from this venv on 127.0.0.1 (a free port, a token, ``--no-browser``,
isolated config/data/runtime directories) with a temporary root holding one small notebook: the
first code cells of ``notebooks/00_overview.ipynb`` (its ``parameters`` cell, the validation cell
and the cell that builds the form when ``interactive`` is true), then a cell that prints
``form.params`` back. The kernel session is created through the REST API before the page opens,
so JupyterLab attaches to a running ``python3`` kernel instead of asking which kernel to start.

Playwright drives Debian's /usr/bin/chromium (fresh profile). Each cell is run with Shift+Enter
and the test waits for its prompt number; the form is changed through the UI (the ``lab`` toggle
button, ``boots`` typed, ``hostname`` typed); the form's own status line (computed by the
kernel) must show the new values; the read-back cell's output must hold them too. Screenshots go
to test-artifacts/ (browser-form.png, browser-notebook.png, and browser-failure.png on failure).
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
NOTEBOOK = "browser_form.ipynb"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
WAIT_MS = 45_000  # bound on every single wait in the page
READBACK = (
    "import json, sys\n"
    "p = form.params\n"
    'print("LABKIT-PARAMS " + json.dumps({"target": p.target, "layout_name": p.layout_name, "boots": p.boots,\n'
    '                                     "hostname": p.hostname, "prefix": sys.prefix}))'
)


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


def _write_notebook(path: Path) -> int:
    """The overview's cells up to the one building the form, then the read-back cell; returns the cell count."""
    import nbformat

    overview = nbformat.read(ROOT / "notebooks" / "00_overview.ipynb", as_version=4)
    cells = []
    for cell in overview.cells:
        if cell.cell_type != "code":
            continue
        cells.append(nbformat.v4.new_code_cell(cell.source))
        if "params_form(" in cell.source:
            break
    else:
        raise AssertionError("00_overview.ipynb has no cell calling params_form(")
    assert "interactive = True" in cells[0].source, "the overview's parameters cell no longer defaults interactive"
    cells.append(nbformat.v4.new_code_cell(READBACK))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)
    return len(cells)


@dataclass
class Lab:
    base: str
    token: str
    log: Path
    ncells: int

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"{self.base}{path}", method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    @property
    def url(self) -> str:
        return f"{self.base}/lab/tree/{NOTEBOOK}?token={self.token}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    root = tmp_path / "notebooks"
    root.mkdir()
    ncells = _write_notebook(root / NOTEBOOK)
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
    session_id = None
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
        # the session first: JupyterLab attaches to this kernel and never shows "Select Kernel"
        session = server.api("POST", "/api/sessions", {
            "path": NOTEBOOK, "name": NOTEBOOK, "type": "notebook", "kernel": {"name": "python3"}})
        session_id = session["id"]
        yield server
    finally:
        if session_id is not None and proc.poll() is None:
            try:
                server.api("DELETE", f"/api/sessions/{session_id}")  # shuts the kernel down
            except OSError:
                pass
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def test_form_renders_and_fills_the_parameters(lab: Lab, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    for old in ("browser-form.png", "browser-notebook.png", "browser-failure.png"):
        (ARTIFACTS / old).unlink(missing_ok=True)
    prompt_done = re.compile(r"^\s*\[\d+\]:\s*$")
    expect.set_options(timeout=WAIT_MS)

    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
            headless=True, viewport={"width": 1400, "height": 1000},
        )
        ctx.set_default_timeout(WAIT_MS)
        page = ctx.pages[0] if ctx.pages else ctx.new_page()
        try:
            page.goto(lab.url)
            cells = page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")
            expect(cells).to_have_count(lab.ncells, timeout=60_000)
            # the kernel created through the REST API is attached and idle
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(1)
            expect(page.locator(".jp-StatusBar-TextItem", has_text="| Idle").first).to_be_visible()
            expect(page.locator(".jp-Dialog")).to_have_count(0)

            def run_cell(i: int, attempts: int = 1) -> None:
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
                if errors.count():
                    raise AssertionError(f"cell {i} failed in the kernel:\n" + errors.first.inner_text()[-3000:])

            # the parameters cell only assigns constants: safe to send again if the first request is lost
            run_cell(0, attempts=3)
            for i in range(1, lab.ncells - 1):
                run_cell(i)

            form = page.locator(".jupyter-widgets.labkit-params-form")
            expect(form).to_be_visible()
            status = form.locator(".labkit-params-ok")
            expect(status).to_contain_text("target=plan")
            expect(status).to_contain_text("boots=3")  # the settings table's default

            # change the form through the UI: target lab, 2 boots, a hostname
            form.locator(".widget-toggle-buttons button", has_text=re.compile(r"^\s*lab\s*$")).click()
            expect(status).to_contain_text("target=lab")
            boots = form.locator(".widget-inline-hbox", has=page.locator("label", has_text="boots")).locator("input")
            boots.click()
            boots.fill("2")
            boots.press("Tab")  # BoundedIntText syncs on blur/enter
            hostname = form.locator(".widget-inline-hbox",
                                    has=page.locator("label", has_text="hostname")).locator("input")
            hostname.fill("browserlab")
            hostname.press("Tab")
            # the status line is computed in the kernel from the widget values
            expect(status).to_contain_text("target=lab, layout=lab, boots=2")
            form.scroll_into_view_if_needed()
            form.screenshot(path=str(ARTIFACTS / "browser-form.png"))

            # read the parameters back from the kernel: the last cell, run through the UI
            run_cell(lab.ncells - 1)
            out = cells.nth(lab.ncells - 1).locator(".jp-OutputArea-output", has_text="LABKIT-PARAMS")
            expect(out).to_be_visible()
            text = out.inner_text()
            page.screenshot(path=str(ARTIFACTS / "browser-notebook.png"))
        except Exception:
            try:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"))
            finally:
                sys.stderr.write("jupyter log tail:\n" + lab.log.read_text()[-3000:])
            raise
        finally:
            ctx.close()

    got = json.loads(text.split("LABKIT-PARAMS", 1)[1].strip().splitlines()[0])
    assert got == {"target": "lab", "layout_name": "lab", "boots": 2, "hostname": "browserlab",
                   "prefix": sys.prefix}, got
    assert (ARTIFACTS / "browser-form.png").stat().st_size > 1000
