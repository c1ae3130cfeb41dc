"""What every notebook does first: short errors, the run's settings, the form.

``S = start(globals(), "01_disk")`` in the first code cell after the parameters:

- a labkit error (bad input, a refusal) shows as a short box — the problem, the fix in notebook terms (the
  parameter or form field to change, not a command-line flag) and the traceback folded away — and still
  fails the cell, so papermill stops there; any other exception (a bug) keeps its full traceback;
- the settings: the parameters cell's values, validated at once. In JupyterLab the form saves every valid
  change to the run's settings file (``<run_dir>/labkit-settings.json``) and every notebook reads it back
  over its parameters cell, so a value chosen once holds for the whole install and "Run All" never resets
  it. Under papermill (``interactive=False``) the injected parameters win; ``labkit run`` writes the same
  values to the file;
- the form (JupyterLab only), generated from the settings table.
"""

from __future__ import annotations

import html
import json
import re
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labkit.core.errors import LabkitError
from labkit.core.runner import atomic_write_text
from labkit.core.settings import NOTEBOOKS, Settings, meta, names

SETTINGS_FILE = "labkit-settings.json"


def settings_path(run_dir: str | Path) -> Path:
    return Path(run_dir or ".") / SETTINGS_FILE


def saved(run_dir: str | Path) -> dict[str, Any]:
    """The settings the form saved for this run (empty when none or unreadable)."""
    try:
        data = json.loads(settings_path(run_dir).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if k in names()} if isinstance(data, dict) else {}


def save(s: Settings) -> Path:
    """Write the settings every notebook of this run reads (no secret: credentials are file paths)."""
    path = settings_path(s.run_dir)
    atomic_write_text(path, json.dumps(s.as_record(), indent=2, default=list) + "\n")
    return path


def start(ns: Mapping[str, Any], notebook: str) -> Settings:
    """The notebook's settings (see the module docstring); installs the short-error display."""
    install_error_display()
    values = {k: ns[k] for k in NOTEBOOKS.get(notebook, names()) if k in ns}
    interactive = bool(values.get("interactive", False))
    if interactive:
        for k, v in saved(values.get("run_dir", "")).items():
            if k in NOTEBOOKS.get(notebook, names()):
                values[k] = v
    s = Settings.from_mapping(values)
    if interactive:
        from IPython.display import display

        from labkit.guide.widgets import ParamsForm

        form = ParamsForm(s, fields=NOTEBOOKS.get(notebook), on_valid=save)
        display(form.widget)
    return s


# -- errors a learner can read -----------------------------------------------------------------------
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(?:[ =]([^\s,;)-][^\s,;)]*))?")


def notebook_terms(text: str) -> str:
    """A fix written for the command line, in notebook terms: ``pass --wipe --confirm ab12`` →
    ``set wipe=True fingerprint="ab12"`` (the parameter, or the form field of the same name)."""
    by_option: dict[str, str] = {}
    for name in names():
        m = meta(name)
        for opt in (m.cli or "--" + name.replace("_", "-"), *m.aliases):
            by_option[opt.lstrip("-")] = name

    def sub(match: re.Match[str]) -> str:
        name = by_option.get(match.group(1))
        if name is None:
            return match.group(0)
        value = match.group(2)
        if isinstance(getattr(Settings(), name), bool):
            return f"{name}=True" + (f" {value}" if value else "")
        return f'{name}="{value}"' if value else f"{name}=…"

    out = _OPTION.sub(sub, text)
    return re.sub(r"\bpass (\w+=)", r"set \1", out)


def error_box(exc: LabkitError, tb: str = "") -> str:
    """The short error as HTML: the problem, the fix, the traceback folded away."""
    fix = notebook_terms(exc.fix) if exc.fix else ""
    details = (f"<details><summary>traceback (for a bug report)</summary><pre>{html.escape(tb)}</pre></details>"
               if tb else "")
    return ("<div class='labkit-error' style='border-left:4px solid #c00;padding:.4em .8em;background:#fff4f4'>"
            f"<b>{html.escape(type(exc).__name__)}:</b> {html.escape(exc.problem)}"
            + (f"<br><b>Fix:</b> {html.escape(fix)}" if fix else "") + details + "</div>")


def install_error_display() -> None:
    """Show :class:`LabkitError` as :func:`error_box` in this IPython kernel (a no-op outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def handler(self: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> list[str]:
        from IPython.display import HTML, display

        assert isinstance(value, LabkitError)
        full = "".join(traceback.format_exception(etype, value, tb))
        display(HTML(error_box(value, full)))
        short = [f"{etype.__name__}: {value.problem}"]
        if value.fix:
            short.append(f"fix: {notebook_terms(value.fix)}")
        # IPython's run_code calls the handler and ignores what it returns: send the (short) error output
        # itself, so the cell fails with ename/evalue (papermill stops there) and shows two lines, not labkit
        self._showtraceback(etype, value, short)
        return short

    shell.set_custom_exc((LabkitError,), handler)
