"""Progress bars (tqdm) for boots, downloads and image builds, in a notebook and on a terminal.

- :func:`bar` — a tqdm bar: the notebook widget in an interactive Jupyter kernel, plain text
  elsewhere (terminal, papermill: the executed notebook keeps a readable last line).
- :class:`StepProgress` — a text stream to pass as ``progress=`` to :class:`labkit.core.runner.Runner`
  or :func:`labkit.lab.run.run_lab`: it turns the runner's ``▸ step`` / ``✓ step (1.2 s)`` lines
  into one bar (one tick per finished top-level step or per boot), so the lab shows progress
  without any change to the code that runs it.
- :func:`boots_total` — how many ticks a lab run makes (image build, accelerator, each boot).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import std as tqdm_std

T = TypeVar("T")


def in_interactive_kernel() -> bool:
    """True in a Jupyter kernel with a front end that renders widgets (not under papermill)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None or "IPKernelApp" not in getattr(ip, "config", {}):
        return False
    return not under_papermill()


def under_papermill() -> bool:
    """papermill's engine injects a cell tagged ``injected-parameters``; labkit's chain also passes
    ``interactive=False``. This checks the kernel's history for papermill's marker comment."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    if ip is None:
        return False
    cells: list[str] = list(ip.user_ns.get("In", []))
    return any(c.lstrip().startswith("# Parameters\n") for c in cells)


def bar(iterable: Iterable[T] | None = None, *, total: float | None = None, desc: str = "",
        unit: str = "it", file: TextIO | None = None, **kw: Any) -> tqdm_std.tqdm:
    """A tqdm bar suited to where the code runs (widget in JupyterLab, text elsewhere)."""
    if file is None and in_interactive_kernel():
        try:
            from tqdm.notebook import tqdm as tqdm_nb

            return tqdm_nb(iterable, total=total, desc=desc, unit=unit, **kw)
        except ImportError:  # ipywidgets missing: fall back to text
            pass
    return tqdm_std.tqdm(iterable, total=total, desc=desc, unit=unit, file=file or sys.stderr,
                         dynamic_ncols=False, ncols=100, mininterval=0.5, **kw)


class StepProgress(io.TextIOBase):
    """A write-only stream for ``Runner(progress=...)``: runner lines become tqdm ticks.

    A tick is a finished top-level step (``✓``/``✗`` at depth 0) or a finished boot step
    (``✓ boot ...`` at any depth). The bar's description shows the step running now; with
    ``echo`` the lines are also written to that stream (a terminal log).
    """

    def __init__(self, total: int | None = None, desc: str = "lab", *, echo: TextIO | None = None,
                 file: TextIO | None = None) -> None:
        super().__init__()
        self.echo = echo
        self.bar = bar(total=total, desc=desc, unit="step", file=file)
        self.done: list[str] = []
        self._buf = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if self.echo is not None:
            self.bar.write(line, file=self.echo)
        depth = (len(line) - len(line.lstrip(" "))) // 2
        body = line.strip()
        if not body:
            return
        mark, _, rest = body.partition(" ")
        if mark == "▸":
            self.bar.set_description_str(rest[:40], refresh=True)
        elif mark in ("✓", "✗"):
            name = rest.rsplit(" (", 1)[0]
            if depth == 0 or name.startswith("boot "):
                self.done.append(("" if mark == "✓" else "FAILED ") + name)
                self.bar.update(1)

    def close(self) -> None:
        if not self.closed:
            self.bar.close()
        super().close()
