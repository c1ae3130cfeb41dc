"""The comparison report: helpers the notebook calls, and its rendering to HTML.

``notebooks/06_report.ipynb`` stays thin: every table and figure comes from a function here.
:func:`render_report` runs it with papermill and converts it with nbconvert (figures embedded).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.environment import ENVIRONMENT_FILE, flatten, labkit_version, load_environment
from labkit.errors import LabkitError
from labkit.metrics import PHASES, metric_definitions
from labkit.results import load_results, per_boot_table, summarize
from labkit.runner import Runner, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NOTEBOOK = "06_report.ipynb"
RESULTS_FILE = "results.csv"
MISSING = "missing"
RAM_METRICS = ("ram_used_mib", "shmem_mib", "root_tmpfs_used_mib")
_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


class ReportError(LabkitError):
    """The report cannot be built (inputs missing, notebook failed)."""


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportContext:
    run_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    environment: dict[str, Any]

    @property
    def systems(self) -> list[str]:
        return sorted(self.results["os"].unique())

    @property
    def accelerators(self) -> list[str]:
        return sorted(str(a) for a in self.results["accel"].dropna().unique())

    @property
    def run_ids(self) -> list[str]:
        return sorted(str(r) for r in self.results["run_id"].unique())

    @property
    def origin(self) -> str:
        """Where the figures come from, read from the data (never assumed)."""
        return origin_label(self.results, self.environment)


def validate_run_dir(run_dir: str | os.PathLike[str]) -> Path:
    if not str(run_dir):
        raise ReportError("parameter run_dir is empty", "pass the run directory: -p run_dir runs/<run-id>")
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise ReportError(f"run_dir {path} is not a directory", "pass the directory the benchmark wrote")
    if not (path / RESULTS_FILE).is_file():
        raise ReportError(
            f"run_dir {path} has no {RESULTS_FILE}",
            "run the benchmark into this directory first (it writes results.csv)",
        )
    return path


def load_report_context(run_dir: str | os.PathLike[str]) -> ReportContext:
    """Validate ``run_dir`` and read results.csv + environment.json."""
    path = validate_run_dir(run_dir)
    results = load_results(path / RESULTS_FILE)
    if results.empty:
        raise ReportError(f"{path / RESULTS_FILE} has no rows", "the benchmark recorded no metric; check its log")
    env = load_environment(path) if (path / ENVIRONMENT_FILE).is_file() else {}
    return ReportContext(path, results, summarize(results), env)


def origin_label(results: pd.DataFrame, environment: dict[str, Any]) -> str:
    """E.g. ``rehearsal guests (not Alpine/NixOS), lab VM, accelerator: tcg``."""
    kinds = set(results["guest"].unique())
    if kinds == {"rehearsal"}:
        guests = "rehearsal guests (not Alpine/NixOS)"
    elif kinds == {"real"}:
        guests = "real systems: " + ", ".join(sorted(results["os"].unique()))
    else:
        rehearsal = sorted(results.loc[results["guest"] == "rehearsal", "os"].unique())
        real = sorted(results.loc[results["guest"] != "rehearsal", "os"].unique())
        guests = f"mixed: rehearsal guests {', '.join(rehearsal)} (not Alpine/NixOS) and real {', '.join(real)}"
    accels = sorted(str(a) for a in results["accel"].dropna().unique())
    target = str(environment.get("params", {}).get("target", "") or "")
    if target == "disk" or (not target and accels and set(accels) <= {"hardware", "none"}):
        where = "hardware"
    elif target == "lab" or set(accels) & {"tcg", "kvm"}:
        where = "lab VM"
    else:
        where = target or "unknown target"
    return f"{guests}, {where}, accelerator: {', '.join(accels) or 'unknown'}"


# -- tables ---------------------------------------------------------------------------------------
def _html_table(df: pd.DataFrame, *, index: bool = False) -> str:
    return df.to_html(index=index, na_rep=MISSING, float_format=lambda x: f"{x:.3f}", border=0, escape=True)


def definitions_table() -> pd.DataFrame:
    return pd.DataFrame(metric_definitions())


def summary_table(ctx: ReportContext) -> pd.DataFrame:
    return ctx.summary.copy()


def environment_table(ctx: ReportContext) -> pd.DataFrame:
    flat = flatten(ctx.environment)
    return pd.DataFrame({"item": list(flat), "value": list(flat.values())})


def threats(ctx: ReportContext) -> list[str]:
    """Threats to validity that apply to this run, from its data."""
    out: list[str] = []
    accels = ctx.accelerators
    if "tcg" in accels:
        out.append(
            "**TCG emulation**: the guest CPU is emulated (no KVM); absolute times are many times slower "
            "than on hardware and CPU-bound phases are inflated more than I/O-bound ones."
        )
    kinds = set(ctx.results["guest"].unique())
    if "rehearsal" in kinds:
        out.append(
            "**Rehearsal guests**: small busybox guests built from the host's Debian kernel that reproduce each "
            "system's boot *mechanism*; they are not Alpine or NixOS, and their numbers do not predict those systems'."
        )
    measured = ctx.results[~ctx.results["warmup"]]
    n_by_os = measured.groupby("os")["boot"].nunique().to_dict()
    n_text = ", ".join(f"{k}: n={v}" for k, v in sorted(n_by_os.items())) or "no measured boots"
    small = any(v < 10 for v in n_by_os.values()) or not n_by_os
    out.append(
        f"**Sample size** ({n_text}{', warm-up boots excluded' if ctx.results['warmup'].any() else ''}): "
        + ("small — the bootstrap intervals are rough and the medians can move between runs." if small
           else "intervals are percentile bootstrap of the median (fixed seed).")
    )
    out.append(
        "**Timing sources**: firmware/loader and total use host serial timestamps (when a line arrives); the "
        "other phases use the guest clock (dmesg, /proc/uptime). A missing metric is shown as "
        f"'{MISSING}', never as 0."
    )
    return out


# -- figures --------------------------------------------------------------------------------------
def _stat(summary: pd.DataFrame, os_id: str, metric: str) -> tuple[float, float, float]:
    row = summary[(summary["os"] == os_id) & (summary["metric"] == metric)]
    if row.empty:
        return (np.nan, np.nan, np.nan)
    r = row.iloc[0]
    return (float(r["median"]), float(r["ci_low"]), float(r["ci_high"]))


def phases_figure(ctx: ReportContext) -> Figure:
    """Stacked horizontal bars of the boot phases' medians per system; CI of the total as error bar."""
    import matplotlib.pyplot as plt

    systems = ctx.systems
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.9 * len(systems)))
    for y, os_id in enumerate(systems):
        left = 0.0
        missing: list[str] = []
        for i, phase in enumerate(PHASES):
            med, _, _ = _stat(ctx.summary, os_id, phase)
            if np.isnan(med):
                missing.append(phase)
                continue
            ax.barh(y, med, left=left, color=_COLORS[i % len(_COLORS)], edgecolor="white",
                    label=phase if y == 0 or phase not in ax.get_legend_handles_labels()[1] else None)
            left += med
        total, lo, hi = _stat(ctx.summary, os_id, "total_to_probe_s")
        if not np.isnan(total):
            xerr = None if np.isnan(lo) else [[total - lo], [hi - total]]
            ax.errorbar(total, y, xerr=xerr, fmt="|", color="black", markersize=18, capsize=5,
                        label="total to probe (median, 95 % CI)" if y == 0 else None)
        pkg, _, _ = _stat(ctx.summary, os_id, "alpine_package_load_s")
        notes = []
        if not np.isnan(pkg):
            notes.append(f"package load {pkg:.2f} s (in initramfs)")
        if missing:
            notes.append(f"{MISSING}: {', '.join(missing)}")
        if notes:
            ax.text(max(left, total if not np.isnan(total) else 0.0) * 1.02 + 0.05, y, "; ".join(notes),
                    va="center", fontsize=8)
    ax.set_yticks(range(len(systems)), systems)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since QEMU start (medians)")
    ax.set_title(f"Boot phases per system\n{ctx.origin}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), loc="upper center", bbox_to_anchor=(0.5, -0.35 - 0.05 * len(systems)),
              ncol=3, fontsize=8, frameon=False)
    xmax = ax.get_xlim()[1]
    ax.set_xlim(0, xmax * 1.45)
    fig.tight_layout()
    return fig


def ram_figure(ctx: ReportContext) -> Figure:
    """RAM per system: medians with 95 % CI; a metric missing on a system is labelled, not drawn as 0."""
    import matplotlib.pyplot as plt

    systems = ctx.systems
    fig, ax = plt.subplots(figsize=(9, 1.2 + 1.1 * len(systems)))
    height = 0.8 / len(RAM_METRICS)
    for y, os_id in enumerate(systems):
        for j, metric in enumerate(RAM_METRICS):
            pos = y - 0.4 + height * (j + 0.5)
            med, lo, hi = _stat(ctx.summary, os_id, metric)
            if np.isnan(med):
                ax.text(0.5, pos, f"{metric}: {MISSING}", va="center", fontsize=8, color="gray")
                continue
            xerr = None if np.isnan(lo) else [[med - lo], [hi - med]]
            ax.barh(pos, med, height=height * 0.9, xerr=xerr, capsize=3, color=_COLORS[j],
                    label=metric if y == 0 else None)
    ax.set_yticks(range(len(systems)), systems)
    ax.invert_yaxis()
    ax.set_xlabel("MiB (median, error bar: 95 % CI)")
    ax.set_title(f"RAM at probe start\n{ctx.origin}", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# -- notebook display helpers (thin cells call these) ----------------------------------------------
def _display_html(html: str) -> None:
    from IPython.display import HTML, display

    display(HTML(html))


def _display_md(md: str) -> None:
    from IPython.display import Markdown, display

    display(Markdown(md))


def _display_fig(fig: Figure) -> None:
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(fig)
    plt.close(fig)


def _boots_text(ctx: ReportContext) -> str:
    r = ctx.results
    parts = []
    for os_id in ctx.systems:
        sub = r[r["os"] == os_id]
        warm = sub.loc[sub["warmup"], "boot"].nunique()
        meas = sub.loc[~sub["warmup"], "boot"].nunique()
        parts.append(f"{os_id}: {meas} measured boot(s)" + (f" + {warm} warm-up" if warm else ""))
    return ", ".join(parts)


def show_title(ctx: ReportContext) -> None:
    _display_md(
        f"# Boot time and RAM: {' vs '.join(ctx.systems)}\n\n"
        f"**Figures from: {ctx.origin}.**\n\n"
        f"Run {', '.join(ctx.run_ids)}: {_boots_text(ctx)}; "
        f"labkit {ctx.environment.get('labkit_version', labkit_version())}."
    )


def show_definitions() -> None:
    _display_html(_html_table(definitions_table()))


def show_phases(ctx: ReportContext) -> None:
    _display_fig(phases_figure(ctx))


def show_ram(ctx: ReportContext) -> None:
    _display_fig(ram_figure(ctx))


def show_summary(ctx: ReportContext) -> None:
    _display_html(_html_table(summary_table(ctx)))


def show_per_boot(ctx: ReportContext) -> None:
    _display_html(_html_table(per_boot_table(ctx.results).reset_index()))


def show_environment(ctx: ReportContext) -> None:
    if not ctx.environment:
        _display_md(f"_No {ENVIRONMENT_FILE} in the run directory: the environment is unknown._")
        return
    _display_html(_html_table(environment_table(ctx)))


def show_threats(ctx: ReportContext) -> None:
    _display_md("\n".join(f"- {t}" for t in threats(ctx)))


# -- rendering --------------------------------------------------------------------------------------
def notebook_path() -> Path:
    """The report notebook in the repository's notebooks/ (labkit is used from a checkout)."""
    path = Path(__file__).resolve().parent.parent / "notebooks" / REPORT_NOTEBOOK
    if not path.is_file():
        raise ReportError(
            f"report notebook not found at {path}",
            "install labkit from its repository checkout (pip install -e .): the notebooks live in notebooks/",
        )
    return path


def _kernel_name() -> str:
    """``python3``, after checking it runs this interpreter (so the kernel can import labkit)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        raise ReportError(
            "no 'python3' Jupyter kernel", f"{sys.executable} -m ipykernel install --sys-prefix"
        ) from None
    exe = spec.argv[0] if spec.argv else ""
    if exe not in {"python", "python3", f"python3.{sys.version_info.minor}"} and Path(exe).resolve() != Path(
        sys.executable
    ).resolve():
        raise ReportError(
            f"the 'python3' Jupyter kernel runs {exe}, not this interpreter ({sys.executable}): it may not see labkit",
            f"remove the other kernelspec ({spec.resource_dir}) or run {sys.executable} -m ipykernel install "
            "--sys-prefix",
        )
    return "python3"


@contextlib.contextmanager
def _maybe_step(runner: Runner | None, name: str) -> Iterator[None]:
    if runner is None:
        yield
    else:
        with runner.step(name):
            yield


def render_report(run_dir: Path, *, runner: Runner | None = None, timeout_s: float = 600.0) -> Path:
    """Execute the report notebook on ``run_dir`` and write ``report.ipynb`` + ``report.html`` there.

    Returns the HTML path. Both files are written atomically.
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    run_dir = validate_run_dir(run_dir).resolve()
    nb_in = notebook_path()
    kernel = _kernel_name()
    out_nb = run_dir / "report.ipynb"
    tmp_nb = run_dir / f".report.tmp-{os.getpid()}.ipynb"
    html_path = run_dir / "report.html"
    argv = ["papermill", str(nb_in), str(out_nb), "-p", "run_dir", str(run_dir), "-k", kernel]
    with _maybe_step(runner, "render report"):
        start = time.monotonic()
        try:
            nb = papermill.execute_notebook(
                str(nb_in),
                str(tmp_nb),
                parameters={"run_dir": str(run_dir)},
                kernel_name=kernel,
                progress_bar=False,
                log_output=False,
                cwd=str(run_dir),
                execution_timeout=int(timeout_s),
            )
        except papermill.PapermillExecutionError as exc:
            failed = run_dir / "report-failed.ipynb"
            if tmp_nb.exists():
                os.replace(tmp_nb, failed)
            if runner is not None:
                runner.record_external(argv, rc=1, duration_s=time.monotonic() - start, error=exc.ename)
            raise ReportError(
                f"the report notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}",
                f"open {failed} to see the traceback; fix the run directory or the notebook",
            ) from None
        finally:
            tmp_nb.unlink(missing_ok=True)
        executed = time.monotonic() - start
        atomic_write_text(out_nb, nbformat.writes(nb) + "\n")
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": f"labkit report {run_dir.name}"}})
        if "data:image/png;base64" not in body:
            raise ReportError(
                "the rendered report has no embedded figures", f"open {out_nb} and check the figure cells' outputs"
            )
        atomic_write_text(html_path, body)
        total = time.monotonic() - start
        if runner is not None:
            runner.record_external(argv, rc=0, duration_s=total, executed_s=round(executed, 3), html=str(html_path))
            runner.note(f"report: {html_path} ({total:.1f} s)")
    return html_path

