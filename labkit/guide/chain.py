"""The notebook chain: every phase notebook executed with papermill into one run directory.

``labkit run`` calls :func:`run_chain`. The order is fixed (:data:`CHAIN`); notebooks not in
the checkout are left out. Each notebook receives only the parameters its ``parameters`` cell
declares (read with ``papermill.inspect_notebook``), from one validated
:class:`~labkit.guide.params.Settings`. The run directory holds::

    chain.json                   the parameters and the status of every step (rewritten after each)
    notebooks/<name>.ipynb       each executed notebook (a failed one keeps its error output)
    html/<name>.html             each executed notebook as HTML (nbconvert)
    index.html                   links to all of them, with status, time and the failure
    work/<name>/                 per-notebook working directory (``workdir``/``out_dir`` parameters)

The chain stops at the first failing notebook, prints the failing cell and its error, and can
resume from a named notebook (``start_from``) in the same run directory.
"""

from __future__ import annotations

import html
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from labkit.core.console import strip_ansi
from labkit.core.data import NOTEBOOKS_DIR
from labkit.core.errors import InputError, LabkitError
from labkit.core.files import check_output_dir
from labkit.core.runner import atomic_write_text, redact_secrets
from labkit.core.settings import Settings
from labkit.guide.params import parse_loose

CHAIN: tuple[str, ...] = (
    "00_overview", "01_disk", "02_refind", "03_nixos", "04_alpine", "05_benchmark", "06_report",
)
#: Files a notebook needs in the run directory. A notebook that does not declare ``target``
#: cannot be told it is a plan run, so it is skipped (with the reason) when they are missing.
NEEDS: dict[str, tuple[str, ...]] = {"06_report": ("lab/results.csv",)}
#: The measured lab run (05_benchmark's ``out``) lives in <run>/lab; 06_report reads it from there.
LAB_SUBDIR = "lab"
#: Parameters that name a per-notebook working directory: each notebook gets work/<name>/.
WORKDIR_PARAMS = ("workdir", "work_dir", "out_dir", "output_dir")
CHAIN_FILE = "chain.json"


class ChainError(LabkitError):
    """The chain cannot start or a notebook failed."""


@dataclass(frozen=True)
class StepResult:
    name: str
    status: str  # ok | failed | skipped
    duration_s: float = 0.0
    parameters: dict[str, Any] = field(default_factory=dict)
    notebook: str | None = None  # relative to the run directory
    html: str | None = None
    reason: str = ""  # why skipped, or the error
    failed_cell: str | None = None  # the failing cell's source
    traceback: str | None = None


@dataclass(frozen=True)
class ChainRun:
    run_dir: Path
    params: Settings
    steps: tuple[StepResult, ...]

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if s.status == "failed"), None)

    @property
    def index(self) -> Path:
        return self.run_dir / "index.html"


def notebooks_dir() -> Path:
    return NOTEBOOKS_DIR


def chain_notebooks(nb_dir: Path | None = None) -> list[Path]:
    """The chain's notebooks present in ``nb_dir``, in chain order."""
    d = nb_dir or notebooks_dir()
    return [d / f"{n}.ipynb" for n in CHAIN if (d / f"{n}.ipynb").is_file()]


def declared_parameters(path: Path) -> dict[str, dict[str, Any]]:
    """The ``parameters`` cell's names (papermill's inspection: name -> default, type, help)."""
    import papermill

    return dict(papermill.inspect_notebook(str(path)))


def parameters_for(
    path: Path, params: Settings, run_dir: Path, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """What ``path`` receives: the shared values it declares, work dirs, then ``extra``.

    ``extra`` keys are plain names (any notebook declaring them) or ``<notebook>.<name>``.
    """
    name = path.stem
    declared = declared_parameters(path)
    pool = params.as_parameters()
    pool["run_dir"] = str(run_dir)
    out: dict[str, Any] = {k: pool[k] for k in declared if k in pool}
    for k in WORKDIR_PARAMS:
        if k in declared:
            out[k] = str(run_dir / "work" / name)
    if name == "05_benchmark" and "out" in declared:
        out["out"] = str(run_dir / LAB_SUBDIR)
    if name == "06_report" and "run_dir" in declared:
        out["run_dir"] = str(run_dir / LAB_SUBDIR)
    for key, value in (extra or {}).items():
        scope, _, pname = key.rpartition(".")
        if scope and scope != name:
            continue
        if pname in declared:
            out[pname] = value
    return out


def check_extra(extra: Mapping[str, Any], notebooks: Sequence[Path]) -> None:
    """Every ``-p`` key must be declared by some notebook (a typo fails before anything runs)."""
    declared = {p.stem: set(declared_parameters(p)) for p in notebooks}
    for key in extra:
        scope, _, pname = key.rpartition(".")
        if scope:
            if scope not in declared:
                raise InputError(f"-p {key}: no notebook {scope!r} in the chain",
                                 f"notebooks: {', '.join(declared)}")
            if pname not in declared[scope]:
                raise InputError(f"-p {key}: {scope} declares no parameter {pname!r}",
                                 f"its parameters: {', '.join(sorted(declared[scope]))}")
        elif not any(pname in names for names in declared.values()):
            raise InputError(f"-p {key}: no notebook in the chain declares {pname!r}",
                             "check the spelling (labkit run --list shows every notebook's parameters)")


def refuse_secrets(extra: Mapping[str, Any]) -> None:
    """No password hash is passed as a parameter: papermill writes parameters into the executed
    notebook, its HTML, chain.json and index.html. Notebooks take the hash *file's* path."""
    from labkit.core.runner import CRYPT_HASH_RE

    def values(v: Any) -> list[str]:
        if isinstance(v, str):
            return [v]
        if isinstance(v, Mapping):
            return [x for item in v.values() for x in values(item)]
        if isinstance(v, list | tuple):
            return [x for item in v for x in values(item)]
        return []

    for key, value in extra.items():
        if any(CRYPT_HASH_RE.search(v) for v in values(value)):
            raise InputError(f"-p {key}: the value is a password hash; labkit never passes a secret as a notebook "
                             "parameter (it would be written into the executed notebook and its HTML)",
                             "write the hash alone into a file (chmod 600) and pass the file's path, e.g. "
                             "-p hashed_password_file=lab.hash")


def split_assignments(pairs: Sequence[tuple[str, str]], base: Settings | type[Settings]) -> tuple[Settings,
                                                                                                    dict[str, Any]]:
    """Command-line ``key=value`` pairs: settings go into one :class:`Settings` (validated once, with every
    value), the rest stay extra (notebook-specific parameters)."""
    from labkit.core.settings import coerce
    from labkit.core.settings import names as field_names

    shared: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in pairs:
        if key in field_names():
            shared[key] = coerce(key, value)
        else:
            extra[key] = parse_loose(value)
    if isinstance(base, Settings):
        return base.with_values(**shared), extra
    return base(**shared), extra


# -- run directory ------------------------------------------------------------------------------
def prepare_run_dir(out: Path | None, runs_root: Path, *, resume: bool) -> Path:
    """A new run directory, or (resume) the existing one holding a chain run."""
    if out is None:
        if resume:
            raise InputError("resuming needs the run directory", "pass --out runs/<id> with --from")
        from labkit.core.runfolder import prepare_run_dir as new_folder

        return new_folder(None, runs_root)[1].resolve()
    out = Path(out)
    if resume:
        if not (out / CHAIN_FILE).is_file():
            raise InputError(f"{out} holds no chain run ({CHAIN_FILE} missing): nothing to resume",
                             "leave --from away to start a new run there, or pass the right --out")
        return out.resolve()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory", "choose a new directory")
    if out.is_dir() and any(out.iterdir()):
        held = "a chain run" if (out / CHAIN_FILE).exists() else "files"
        raise InputError(f"--out {out} already holds {held}; labkit never overwrites a run",
                         f"choose a new directory, or resume it: labkit run --out {out} --from <notebook>")
    return check_output_dir(out, what="the run directory (--out)").resolve()


def _load_steps(run_dir: Path) -> dict[str, StepResult]:
    try:
        data = json.loads((run_dir / CHAIN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return {s["name"]: StepResult(**s) for s in data.get("steps", [])}


def _save(run: ChainRun) -> None:
    data = {"params": run.params.as_parameters(), "ok": run.ok, "steps": [asdict(s) for s in run.steps]}
    atomic_write_text(run.run_dir / CHAIN_FILE, json.dumps(data, indent=2, default=str) + "\n")


# -- execution ----------------------------------------------------------------------------------
def _failed_cell(nb_path: Path, exec_count: int | None) -> tuple[str | None, str | None]:
    """Source and error text of the cell that raised, read from the executed notebook."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except (OSError, ValueError):
        return None, None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        errs = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if errs and (exec_count is None or cell.get("execution_count") in (exec_count, None)):
            tb = "\n".join(errs[0].get("traceback", []))
            return str(cell.source), strip_ansi(tb)
    return None, None


def scrub_notebook(nb_path: Path) -> int:
    """Replace every password hash in an executed notebook's sources and outputs (a net behind the
    redacted settings and module: whatever a cell printed, no hash stays in the notebook or its HTML).
    Returns how many strings were changed."""
    import nbformat

    from labkit.core.runner import redact_secrets

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except (OSError, ValueError):
        return 0
    changed = 0

    def walk(v: Any) -> Any:
        nonlocal changed
        if isinstance(v, str):
            r = redact_secrets(v)
            changed += r != v
            return r
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            for k in list(v):
                v[k] = walk(v[k])
            return v
        return v

    for cell in nb.cells:
        cell["source"] = walk(cell.get("source", ""))
        if "outputs" in cell:
            walk(cell["outputs"])
    if changed:
        atomic_write_text(nb_path, nbformat.writes(nb) + "\n")
    return changed


def export_html(nb_path: Path, html_path: Path) -> None:
    """The executed notebook as a self-contained HTML page (figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(nb_path, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb, resources={"metadata": {"name": nb_path.stem}})
    atomic_write_text(html_path, body)


def run_notebook(path: Path, run_dir: Path, parameters: dict[str, Any], *, kernel: str,
                 timeout_s: float, log: TextIO | None) -> StepResult:
    import papermill

    name = path.stem
    out_nb = run_dir / "notebooks" / f"{name}.ipynb"
    out_html = run_dir / "html" / f"{name}.html"
    out_nb.parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "work" / name).mkdir(parents=True, exist_ok=True)
    rel_nb, rel_html = str(out_nb.relative_to(run_dir)), str(out_html.relative_to(run_dir))
    start = time.monotonic()
    try:
        papermill.execute_notebook(
            str(path), str(out_nb), parameters=parameters, kernel_name=kernel, cwd=str(run_dir),
            progress_bar=log is not None and getattr(log, "isatty", lambda: False)(), log_output=False,
            execution_timeout=int(timeout_s),
        )
    except papermill.PapermillExecutionError as exc:
        dur = time.monotonic() - start
        scrub_notebook(out_nb)
        source, tb = _failed_cell(out_nb, exc.exec_count)
        export_html(out_nb, out_html)
        return StepResult(name, "failed", round(dur, 2), parameters, rel_nb, rel_html,
                          redact_secrets(f"{exc.ename}: {exc.evalue}"), source, tb)
    except Exception as exc:  # kernel died, timeout, bad notebook: still one failed step
        dur = time.monotonic() - start
        html_rel = None
        if out_nb.is_file():
            scrub_notebook(out_nb)
            export_html(out_nb, out_html)
            html_rel = rel_html
        return StepResult(name, "failed", round(dur, 2), parameters, rel_nb if out_nb.is_file() else None,
                          html_rel, redact_secrets(f"{type(exc).__name__}: {exc}"))
    scrub_notebook(out_nb)
    export_html(out_nb, out_html)
    return StepResult(name, "ok", round(time.monotonic() - start, 2), parameters, rel_nb, rel_html)


def run_chain(
    params: Settings,
    *,
    out: Path | None = None,
    runs_root: Path = Path("runs"),
    start_from: str | None = None,
    extra: Mapping[str, Any] | None = None,
    nb_dir: Path | None = None,
    only: Sequence[str] | None = None,
    timeout_s: float = 1800.0,
    log: TextIO | None = sys.stderr,
) -> ChainRun:
    """Execute the chain (or resume it at ``start_from``); never raises for a failing notebook:
    the returned :class:`ChainRun` says which one failed (and ``index.html`` shows it)."""
    from labkit.report.report import _kernel_name

    params = params.with_values(interactive=False)
    notebooks = chain_notebooks(nb_dir)
    if only is not None:
        notebooks = [p for p in notebooks if p.stem in only]
    if not notebooks:
        raise ChainError(f"no chain notebook found in {nb_dir or notebooks_dir()}", "run from a labkit checkout")
    names = [p.stem for p in notebooks]
    if start_from is not None:
        start_from = start_from.removesuffix(".ipynb")
        if start_from not in names:
            raise InputError(f"--from {start_from}: not a notebook of the chain", f"choose one of {', '.join(names)}")
    check_extra(extra or {}, notebooks)
    refuse_secrets(extra or {})
    kernel = _kernel_name()
    run_dir = prepare_run_dir(out, runs_root, resume=start_from is not None)
    previous = _load_steps(run_dir) if start_from is not None else {}
    steps: list[StepResult] = []
    started = start_from is None
    failed = False
    for path in notebooks:
        name = path.stem
        if not started and name != start_from:
            steps.append(previous.get(name, StepResult(name, "skipped", reason="before --from, not in this run")))
            continue
        started = True
        if failed:
            steps.append(StepResult(name, "skipped", reason="an earlier notebook failed"))
            continue
        p = parameters_for(path, params, run_dir, extra)
        declared = declared_parameters(path)
        missing = [f for f in NEEDS.get(name, ()) if not (run_dir / f).exists()]
        if missing and "target" not in declared:
            reason = (f"needs {', '.join(missing)} in the run directory (written by a lab run of 05_benchmark); "
                      f"target={params.target}")
            _say(log, f"– {name}: skipped ({reason})")
            steps.append(StepResult(name, "skipped", parameters=p, reason=reason))
            _save(ChainRun(run_dir, params, tuple(steps)))
            continue
        _say(log, f"▸ {name}  {json.dumps(p, default=str)}")
        res = run_notebook(path, run_dir, p, kernel=kernel, timeout_s=timeout_s, log=log)
        steps.append(res)
        if res.status == "ok":
            _say(log, f"✓ {name} ({res.duration_s:.1f} s) → {run_dir / (res.html or '')}")
        else:
            failed = True
            _say(log, describe_failure(res, run_dir))
        _save(ChainRun(run_dir, params, tuple(steps)))
        write_index(ChainRun(run_dir, params, tuple(steps)))
    run = ChainRun(run_dir, params, tuple(steps))
    _save(run)
    write_index(run)
    return run


def describe_failure(step: StepResult, run_dir: Path) -> str:
    lines = [f"✗ {step.name} failed after {step.duration_s:.1f} s: {step.reason}"]
    if step.failed_cell:
        lines.append("  failing cell:")
        lines += [f"    {ln}" for ln in step.failed_cell.splitlines()]
    if step.traceback:
        tail = step.traceback.strip().splitlines()[-6:]
        lines.append("  error:")
        lines += [f"    {ln}" for ln in tail]
    if step.notebook:
        lines.append(f"  executed notebook: {run_dir / step.notebook}")
    lines.append(f"  fix it, then resume: labkit run --out {run_dir} --from {step.name}")
    return "\n".join(lines)


def _say(log: TextIO | None, text: str) -> None:
    if log is not None:
        log.write(text + "\n")
        log.flush()


# -- index ----------------------------------------------------------------------------------------
def write_index(run: ChainRun) -> Path:
    e = html.escape
    rows = []
    for s in run.steps:
        link = f'<a href="{e(s.html)}">{e(s.name)}</a>' if s.html else e(s.name)
        nb = f' (<a href="{e(s.notebook)}">ipynb</a>)' if s.notebook else ""
        detail = e(s.reason)
        if s.failed_cell:
            detail += f"<details><summary>failing cell</summary><pre>{e(s.failed_cell)}</pre>"
            detail += f"<pre>{e(s.traceback or '')}</pre></details>"
        rows.append(f'<tr class="{e(s.status)}"><td>{link}{nb}</td><td>{e(s.status)}</td>'
                    f"<td>{s.duration_s:.1f} s</td><td>{detail}</td></tr>")
    params = e(json.dumps(run.params.as_parameters(), indent=1, default=str))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>labkit run {e(run.run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:.3em .8em;text-align:left;
vertical-align:top}}tr.failed{{background:#fdd}}tr.skipped{{color:#777}}tr.ok td:nth-child(2){{color:#070}}</style>
</head><body>
<h1>labkit run {e(run.run_dir.name)}</h1>
<p>target <b>{e(run.params.target)}</b> — {"all notebooks ok" if run.ok else "stopped at a failing notebook"}</p>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>notes</th></tr>
{chr(10).join(rows)}
</table>
<h2>Parameters</h2><pre>{params}</pre>
</body></html>
"""
    atomic_write_text(run.index, page)
    return run.index
