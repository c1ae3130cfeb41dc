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
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.core.data import NOTEBOOKS_DIR
from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_text
from labkit.measure.environment import ENVIRONMENT_FILE, flatten, labkit_version, load_environment
from labkit.measure.hostload import STEAL_LIMIT
from labkit.measure.loadcost import (
    FIREFOX_MB,
    LOADCOST_FILE,
    PACKAGES_FILE,
    LoadCost,
    LoadCostError,
    analyse,
    incomplete,
    load_loadcost,
    load_packages,
)
from labkit.measure.metrics import PHASES, applies, metric_definitions, os_family
from labkit.measure.results import load_results, per_boot_table, summarize
from labkit.measure.stats import compare_systems, outliers_table, relative_spread
from labkit.report.merge import (
    STATS_CELL_FILE,
    MergedFolder,
    factor_figure,
    is_merged,
    load_merged,
    overlap_view,
    per_cell_wide,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_NOTEBOOK = "06_report.ipynb"
RESULTS_FILE = "results.csv"
MISSING = "missing"
RAM_METRICS = ("ram_used_mib", "shmem_mib", "root_tmpfs_used_mib")
SIZE_METRICS = ("installed_size_mib", "compressed_size_mib", "closure_size_mib")
NOT_APPLICABLE = "n/a"
TABLES_DIR = "tables"
DECOMPRESSION_FILE = "decompression.json"
_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


BOOTS_FILE = "boots.csv"


class ReportError(LabkitError):
    """The report cannot be built (inputs missing, notebook failed)."""


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportContext:
    run_dir: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    environment: dict[str, Any]
    loadcost: pd.DataFrame | None = None
    decompression: dict[str, Any] | None = None
    boots: pd.DataFrame | None = None  # boots.csv: every boot with its outcome (failed ones too)
    #: A merged folder (labkit merge / labkit matrix): ``results`` then has one "os" per group (os | cell @ host)
    merged: MergedFolder | None = None
    loadcost_packages: pd.DataFrame | None = None  # loadcost_packages.csv: per-package points
    #: measured boots left out of the statistics: taken under host load while the same system had enough
    #: boots on a quiet host (os, boot, host_other_cpu, host_reason)
    excluded: pd.DataFrame | None = None
    #: measured boots left out because their install was incomplete (world packages missing): (os, boot, missing)
    incomplete: pd.DataFrame | None = None

    @property
    def systems(self) -> list[str]:
        return sorted(self.results["os"].unique())

    @cached_property
    def loadcost_fit(self) -> LoadCost | None:
        """The load-cost analysis, computed once (its bootstrap takes a second or two; several cells use it)."""
        if self.loadcost is None or self.loadcost.empty:
            return None
        try:
            return analyse(self.loadcost, self.loadcost_packages)
        except LoadCostError:
            return None

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
    """Validate ``run_dir`` and read results.csv + environment.json (a merged folder: its merged tables, one
    group per os × cell × host, see :mod:`labkit.report.merge`)."""
    path = validate_run_dir(run_dir)
    if is_merged(path):
        return _merged_context(path)
    results = load_results(path / RESULTS_FILE)
    if results.empty:
        raise ReportError(f"{path / RESULTS_FILE} has no rows", "the benchmark recorded no metric; check its log")
    env = load_environment(path) if (path / ENVIRONMENT_FILE).is_file() else {}
    lc = load_loadcost(path / LOADCOST_FILE) if (path / LOADCOST_FILE).is_file() else None
    dec = None
    if (path / DECOMPRESSION_FILE).is_file():
        import json

        dec = json.loads((path / DECOMPRESSION_FILE).read_text(encoding="utf-8"))
    boots = pd.read_csv(path / BOOTS_FILE) if (path / BOOTS_FILE).is_file() else None
    pk = load_packages(path / PACKAGES_FILE) if (path / PACKAGES_FILE).is_file() else None
    results, excluded = drop_contended(results, boots)
    results, broken = drop_incomplete(results)
    return ReportContext(path, results, summarize(results), env, lc, dec, boots, loadcost_packages=pk,
                         excluded=excluded, incomplete=broken)


def drop_incomplete(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, left out): a boot whose install dropped world packages (``packages_missing`` > 0) loaded
    less than it was asked to; its times would read as a fast boot, so none of its metrics enter the
    statistics. The left-out table has one row per such boot (os, boot, missing)."""
    if "metric" not in results.columns:
        return results, pd.DataFrame(columns=["os", "boot", "missing"])
    lost = results[(results["metric"] == "packages_missing") & (results["value"] > 0)]
    bad = set(zip(lost["os"], lost["boot"], strict=True))
    if not bad:
        return results, pd.DataFrame(columns=["os", "boot", "missing"])
    keep = [(o, b) not in bad for o, b in zip(results["os"], results["boot"], strict=True)]
    out = lost[["os", "boot", "value"]].rename(columns={"value": "missing"}).reset_index(drop=True)
    return results[keep].reset_index(drop=True), out


#: A system keeps at least this many measured boots on a quiet host before its contended boots are left out.
MIN_QUIET_BOOTS = 2


def contended_boots(boots: pd.DataFrame | None) -> pd.DataFrame:
    """The boots of boots.csv taken while the host was busy (``host_contended``), or an empty table."""
    cols = ["os", "boot", "warmup", "host_other_cpu", "host_qemu_wait", "host_steal", "host_reason"]
    if boots is None or "host_contended" not in boots.columns:
        return pd.DataFrame(columns=cols)
    flag = boots["host_contended"].astype(str).str.lower() == "true"
    sub = boots[flag]
    return sub[[c for c in cols if c in sub.columns]].reset_index(drop=True)


def drop_contended(results: pd.DataFrame, boots: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, left out): a system's measured boots taken under host load are left out of the statistics
    when it keeps at least MIN_QUIET_BOOTS measured boots on a quiet host; otherwise they stay (flagged)."""
    busy = contended_boots(boots)
    left = []
    keep = pd.Series(True, index=results.index)
    for os_id in results["os"].unique():
        system = os_id.split("-", 1)[0]
        mine = busy[(busy["os"] == system) & ~busy["warmup"].astype(str).str.lower().eq("true")]
        if mine.empty:
            continue
        rows = (results["os"] == os_id) & ~results["warmup"]
        measured = set(results.loc[rows, "boot"])
        bad = measured & set(mine["boot"].astype(int))
        if len(measured - bad) >= MIN_QUIET_BOOTS and bad:
            keep &= ~(rows & results["boot"].isin(bad))
            left.append(mine[mine["boot"].astype(int).isin(bad)])
    out = pd.concat(left).reset_index(drop=True) if left else busy.iloc[0:0]
    return results[keep].reset_index(drop=True), out


def _merged_context(path: Path) -> ReportContext:
    m = load_merged(path)
    results = m.grouped_results()
    if results.empty:
        raise ReportError(f"{path / RESULTS_FILE} has no rows", "the merged runs recorded no metric")
    lc = load_loadcost(path / LOADCOST_FILE) if (path / LOADCOST_FILE).is_file() else None
    dec = None
    if (path / DECOMPRESSION_FILE).is_file():
        import json

        dec = json.loads((path / DECOMPRESSION_FILE).read_text(encoding="utf-8"))
    return ReportContext(path, results, summarize(results), dict(m.environment), lc, dec, m.grouped_boots(), m)


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
    install = {"apk-tools": "; Alpine-style packages installed by Alpine's apk-tools (minirootfs)",
               "labkit-tarballs": "; Alpine-style packages installed by labkit's own tarball install (no Alpine "
                                  "minirootfs: not apk-tools)"}
    alpine = ((environment.get("extra") or {}).get("guests") or {}).get("alpine") or {}
    return f"{guests}, {where}, accelerator: {', '.join(accels) or 'unknown'}" \
        f"{install.get(str(alpine.get('package_install')), '')}"


# -- tables ---------------------------------------------------------------------------------------
def _html_table(df: pd.DataFrame, *, index: bool = False) -> str:
    return df.to_html(index=index, na_rep=MISSING, float_format=lambda x: f"{x:.3f}", border=0, escape=True)


def definitions_table() -> pd.DataFrame:
    return pd.DataFrame(metric_definitions())


def missing_reasons(ctx: ReportContext) -> dict[tuple[str, str], str]:
    """(os family, metric) → why the metric is missing, from boots.csv's ``missing`` column (JSON per boot);
    several different reasons over the boots are joined with ' | '."""
    import json

    out: dict[tuple[str, str], list[str]] = {}
    if ctx.boots is None or "missing" not in ctx.boots.columns:
        return {}
    for os_name, text in zip(ctx.boots["os"], ctx.boots["missing"], strict=True):
        if not isinstance(text, str) or not text.strip():
            continue
        for metric, reason in json.loads(text).items():
            reasons = out.setdefault((os_family(str(os_name)), metric), [])
            if reason not in reasons:
                reasons.append(reason)
    return {k: " | ".join(v) for k, v in out.items()}


#: summary_table's status of a metric measured on a single boot (a median, no interval).
ONE_BOOT = "one boot"


def summary_table(ctx: ReportContext) -> pd.DataFrame:
    """Per system × metric (median, 95 % CI, relative spread); metrics that do not apply to a system
    are left out, metrics that apply but were not measured stay in as 'missing', with the reason the
    boots recorded (``why``)."""
    s = ctx.summary.copy()
    s = s[[applies(m, o) for m, o in zip(s["metric"], s["os"], strict=True)]].reset_index(drop=True)
    data = ctx.results[~ctx.results["warmup"]]
    s["mad_rel"] = [relative_spread(data.loc[(data["os"] == o) & (data["metric"] == m), "value"].to_numpy())
                    for o, m in zip(s["os"], s["metric"], strict=True)]
    s["status"] = np.where(s["n"] > 1, "measured", np.where(s["n"] == 1, ONE_BOOT, MISSING))
    reasons = missing_reasons(ctx)

    def why(os_id: str, metric: str, n: int) -> str:
        other = reasons.get((os_family(os_id), metric), "")
        if n == 1:  # e.g. the guest's gzip rate, measured once per run (labkit.lab.run.GunzipOnce)
            return "measured on one boot only: no interval" + (f"; the other boots: {other}" if other else "")
        return "" if n > 0 else other

    s["why"] = [why(o, m, int(n)) for o, m, n in zip(s["os"], s["metric"], s["n"], strict=True)]
    return s


def wide_summary_table(ctx: ReportContext) -> pd.DataFrame:
    """One row per metric, one 'median [CI]' column per system; 'n/a' where a metric does not apply."""
    s = ctx.summary
    rows = []
    for metric in dict.fromkeys(s["metric"]):
        row: dict[str, str] = {"metric": metric}
        for os_id in ctx.systems:
            r = s[(s["os"] == os_id) & (s["metric"] == metric)]
            if not applies(metric, os_id):
                row[os_id] = NOT_APPLICABLE
            elif r.empty or int(r.iloc[0]["n"]) == 0:
                row[os_id] = MISSING
            else:
                x = r.iloc[0]
                ci = "" if np.isnan(x["ci_low"]) else f" [{x['ci_low']:.3g}, {x['ci_high']:.3g}]"
                row[os_id] = f"{x['median']:.4g}{ci}"
        row["unit"] = str(s.loc[s["metric"] == metric, "unit"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows, columns=["metric", *ctx.systems, "unit"])


def comparison_table(ctx: ReportContext) -> pd.DataFrame:
    """Mann–Whitney U and Cliff's delta between the first two systems (empty with one system)."""
    systems = ctx.systems
    if len(systems) < 2:
        return pd.DataFrame()
    return compare_systems(ctx.results, systems[0], systems[1])


def warmup_table(ctx: ReportContext) -> pd.DataFrame:
    """The warm-up boots (discarded from the statistics, reported here)."""
    w = ctx.results[ctx.results["warmup"]]
    if w.empty:
        return pd.DataFrame(columns=["run_id", "os", "boot", "metric", "value", "unit"])
    return w[["run_id", "os", "boot", "metric", "value", "unit"]].reset_index(drop=True)


def loadcost_analysis(ctx: ReportContext) -> LoadCost | None:
    if ctx.loadcost is None or ctx.loadcost.empty:
        return None
    return ctx.loadcost_fit


def _num(d: dict[str, Any], key: str) -> float:
    v = d.get(key)
    try:
        return float(v) if v is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _ratio(a: float, b: float) -> float:
    return a / b if b == b and b else float("nan")


#: decompression_table's ratio column: the package load's rate over the row's rate (above 1: the load ran faster).
LOAD_RATIO = "load rate / this rate"


def decompression_table(ctx: ReportContext) -> pd.DataFrame:
    """The load rate against the guest's own gzip rate on the same .apk files, in the same boot (both on the
    guest's clock), the model's marginal rate, and the host's gzip/zstd rates as context. The ratio is not a
    fraction of a limit: apk-tools inflates with zlib, the guest's ``gzip -dc`` is busybox's own inflate, so the
    load may run faster than it (ratio above 1)."""
    lc = loadcost_analysis(ctx)
    d = ctx.decompression or {}
    boots = d.get("guest_boots") or []
    where = (f"{d.get('guest_files', '?')} .apk files of the {d.get('package_set', '?')} set, main-run boot "
             f"{', '.join(f'#{b}' for b in boots) or '?'}")
    guest_inst = _num(d, "guest_gzip_installed_mib_s")
    frac = _num(d, "load_fraction_of_guest_gzip")
    load_same_boot = guest_inst * frac if frac == frac else float("nan")
    busy = " (host load during that boot)" if d.get("guest_contended") else ""
    rows = [{"rate": f"package load, whole install, same boot as the gzip run{busy}", "where": "guest (initramfs)",
             "MiB/s": load_same_boot, "unit": "installed MiB/s", LOAD_RATIO: float("nan")},
            {"rate": f"busybox gzip -dc in the guest after the probe ({where}){busy}", "where": "guest",
             "MiB/s": guest_inst, "unit": "installed MiB/s", LOAD_RATIO: frac},
            {"rate": f"busybox gzip -dc in the guest ({where})", "where": "guest",
             "MiB/s": _num(d, "guest_gzip_mib_s"), "unit": "uncompressed MiB/s", LOAD_RATIO: float("nan")}]
    if lc is not None:
        basis = lc.model.basis_text if lc.model is not None else "boot totals"
        rows.append({"rate": f"package load, marginal (1 / b; {basis})", "where": "guest (initramfs)",
                     "MiB/s": lc.rate_mib_s, "unit": "installed MiB/s", LOAD_RATIO: float("nan")})
    for tool in ("gzip", "zstd"):
        host = _num(d, f"{tool}_mib_s")
        rows.append({"rate": f"{tool} -t on the host, same files (context: the host's CPU, not the emulated guest's)",
                     "where": "host", "MiB/s": host, "unit": "uncompressed MiB/s",
                     LOAD_RATIO: _ratio(load_same_boot, host)})
    return pd.DataFrame(rows)


def package_mapping_table() -> pd.DataFrame:
    from labkit.core.pkgsets import mapping_table

    return pd.DataFrame(mapping_table())


def boots_table(ctx: ReportContext) -> pd.DataFrame:
    """Every boot the run attempted, failed ones included (boots.csv), or an empty table."""
    if ctx.boots is None:
        return pd.DataFrame(columns=["os", "boot", "warmup", "ok", "reason", "wall_s", "timed_out", "serial_log"])
    cols = [c for c in ("run_id", "os", "boot", "warmup", "ok", "reason", "wall_s", "accel", "timed_out",
                        "memory_mib", "host_other_cpu", "host_qemu_wait", "host_steal", "host_contended", "serial_log",
                        "missing") if c in ctx.boots.columns]
    return ctx.boots[cols]


#: Written by the reboot loop (labkit.lab.rebootloop.method_check): per boot, the host's serial-timed figures
#: beside the guest's own (FPDT firmware and loader times, uptime at the probe).
METHOD_CHECK_FILE = "method_check.csv"


def method_check_table(ctx: ReportContext) -> pd.DataFrame:
    """The reboot loop's host-vs-guest timings with their differences (guest - host, s), or an empty table."""
    path = ctx.run_dir / METHOD_CHECK_FILE
    if not path.is_file():
        return pd.DataFrame()
    t = pd.read_csv(path)
    for a, b, name in (("guest_firmware_plus_loader_s", "host_firmware_loaders_s", "firmware_loader_diff_s"),
                       ("guest_uptime_at_probe_s", "host_total_to_probe_s", "to_probe_diff_s")):
        if a in t.columns and b in t.columns:
            t[name] = pd.to_numeric(t[a], errors="coerce") - pd.to_numeric(t[b], errors="coerce")
    return t


def failed_boots(ctx: ReportContext) -> pd.DataFrame:
    t = boots_table(ctx)
    return t[~t["ok"].astype(bool)] if len(t) else t


def report_tables(ctx: ReportContext) -> dict[str, pd.DataFrame]:
    """Every table of the report, by file stem."""
    tables = {
        "metric_definitions": definitions_table(),
        "summary": summary_table(ctx),
        "summary_wide": wide_summary_table(ctx),
        "comparison_mann_whitney": comparison_table(ctx),
        "outliers": outliers_table(ctx.results),
        "warmup_boots": warmup_table(ctx),
        "per_boot": per_boot_table(ctx.results).reset_index(),
        "boots": boots_table(ctx),
        "package_sets": package_mapping_table(),
        "environment": environment_table(ctx),
    }
    lc = loadcost_analysis(ctx)
    if lc is not None:
        tables["loadcost_points"] = lc.points
        tables["loadcost_packages"] = lc.packages
        tables["loadcost_fits"] = lc.fits_table()
        tables["loadcost_firefox"] = lc.firefox()
        tables["decompression"] = decompression_table(ctx)
    tables["host_load"] = contended_boots(ctx.boots)
    mc = method_check_table(ctx)
    if not mc.empty:
        tables["method_check"] = mc
    return tables


def write_tables(ctx: ReportContext, out_dir: Path | None = None) -> list[Path]:
    """Write every report table as CSV (``<run_dir>/tables/<name>.csv``); missing values stay empty."""
    out = out_dir or ctx.run_dir / TABLES_DIR
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, df in report_tables(ctx).items():
        path = out / f"{name}.csv"
        atomic_write_text(path, df.to_csv(index=False))
        paths.append(path)
    return paths


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
    n_by_os = _boot_counts(measured)
    n_text = ", ".join(f"{k}: n={v}" for k, v in sorted(n_by_os.items())) or "no measured boots"
    small = any(v < 10 for v in n_by_os.values()) or not n_by_os
    out.append(
        f"**Sample size** ({n_text}{', warm-up boots excluded' if ctx.results['warmup'].any() else ''}): "
        + ("small — the bootstrap intervals are rough and the medians can move between runs." if small
           else "intervals are percentile bootstrap of the median (fixed seed).")
    )
    lc = loadcost_analysis(ctx)
    if lc is not None:
        out.append(loadcost_threat(lc))
    elif ctx.loadcost is not None:
        out.append("**Load cost**: too few load-cost boots for a fit (needs >= 3 boots at >= 2 sizes).")
    load = host_load_text(ctx)
    if load:
        out.append(load)
    if ctx.incomplete is not None and len(ctx.incomplete):
        which = ", ".join(f"{o} #{b}" for o, b in zip(ctx.incomplete["os"], ctx.incomplete["boot"], strict=True))
        out.append(f"**Incomplete installs**: {len(ctx.incomplete)} boot(s) ({which}) came up without some of "
                   "their world packages (apk drops what the media lacks at a diskless boot): left out of every "
                   "statistic; boots.csv names the packages.")
    if ctx.merged is not None and len(ctx.merged.hosts) > 1:
        out.append(
            f"**Several hosts** ({', '.join(ctx.merged.hosts)}): every statistic is per host and cell; a difference "
            "between hosts mixes their CPUs, load and tool versions (see the environment differences)."
        )
    if ctx.merged is not None and len(ctx.merged.overlap):
        n_no = int((ctx.merged.overlap["overlap"] == "no").sum())
        if n_no:
            out.append(f"**Replicates disagree**: {n_no} metric(s) of runs of the same cell have CIs that do not "
                       "overlap; the setup or the host's load changed between them.")
    out.append(
        "**RAM**: read once at probe start, right after the boot (no settle delay); page cache and lazily freed "
        "memory can still move afterwards."
    )
    out.append(
        "**Timing sources**: firmware/loader and total use host serial timestamps (when a line arrives); the "
        "other phases use the guest clock (dmesg, /proc/uptime). A missing metric is shown as "
        f"'{MISSING}', never as 0."
    )
    return out


def loadcost_threat(lc: LoadCost) -> str:
    lo, hi = lc.measured_range_mib
    ff = lc.firefox()
    extra = [f"{r['case']} ({r['installed_mib']:.0f} MiB) "
             + ("extrapolates beyond" if r["extrapolated"] else "lies inside") for _, r in ff.iterrows()]
    model = (f"per-package points ({lc.model.n_packages} packages in {lc.model.n_boots} boots, {lc.model.basis_text}; "
             f"robust weighted Theil-Sen; b from the {lc.model.b_from}) and per-boot totals" if lc.model is not None
             else "per-boot totals only (no per-package lines in these boots)")
    broken = int(incomplete(lc.left_out).sum()) if len(lc.left_out) else 0
    busy = len(lc.left_out) - broken
    left = f"; {busy} boot(s) under host load left out (their set has a quiet boot)" if busy else ""
    if broken:
        left += (f"; {broken} boot(s) with an incomplete install left out (world packages missing or apk's "
                 "'completed with errors' warning: they loaded less than their set)")
    if lc.model is not None and lc.model.basis == "cpu_seconds" and "cpu_over_wall" in lc.points.columns:
        p = lc.points.dropna(subset=["cpu_over_wall"])
        if len(p):
            q = p.loc[pd.to_numeric(p["host_qemu_wait"], errors="coerce").fillna(1.0).idxmin()]
            left += (f"; QEMU's CPU time over the packages' wall time: {p['cpu_over_wall'].min():.0%}-"
                     f"{p['cpu_over_wall'].max():.0%} across boots, {q['cpu_over_wall']:.0%} on the quietest "
                     f"(QEMU waited for a CPU {float(q['host_qemu_wait']):.0%} of its time)")
    stages = lc.points["probe_stage"].astype(str) if "probe_stage" in lc.points.columns else pd.Series(dtype=str)
    early = int((stages == "initramfs").sum())
    if early:
        left += (f"; {early} of {len(stages)} load-cost boots ran their probe in the initramfs right after the "
                 "install (labkit.probe=initramfs) and powered off: they time the load, and their RAM figure is the "
                 "root tmpfs as the install left it, before any service started")
    return (f"**Load-cost range**: the fit uses {model} over {lo:.0f}-{hi:.0f} MiB installed{left}; "
            + "; ".join(extra) + " that range. The rehearsal payloads are Debian packages repacked as gzip .apk "
            "files (not Alpine's packages). The interval is how much the per-MiB cost moved from boot to boot; the "
            "cost also differs between packages (binaries, data, many small files), which the interval does not "
            "include: extra_load_s_content_low/high give the Firefox case at the cheapest and dearest large "
            "package's cost.")


def host_load_text(ctx: ReportContext) -> str:
    """The report's statement on host load (empty when no boot ran under contention)."""
    busy = contended_boots(ctx.boots)
    if busy.empty:
        return ""
    total = len(ctx.boots) if ctx.boots is not None else len(busy)
    other = pd.to_numeric(busy["host_other_cpu"], errors="coerce")
    wait = pd.to_numeric(busy.get("host_qemu_wait", pd.Series(dtype=float)), errors="coerce")
    steal = pd.to_numeric(busy.get("host_steal", pd.Series(dtype=float)), errors="coerce")
    lc_busy = busy[busy["boot"].astype(int) >= 100]
    parts = [f"**Host load**: {len(busy)} of {total} boots ran under host load: other processes used "
             f"{other.mean():.2f} CPUs on average (up to {other.max():.2f})"
             + (f", QEMU waited for a CPU {wait.mean():.0%} of the time on average" if wait.notna().any() else "")
             + (f", the hypervisor stole {steal.mean():.2f} CPUs on average (up to {steal.max():.2f}: this machine "
                "is a virtual machine whose host ran other work)" if steal.notna().any() and steal.max() > STEAL_LIMIT
                else "")
             + ". Those boots are slower than on a quiet host"]
    if ctx.excluded is not None and len(ctx.excluded):
        parts.append(f"{len(ctx.excluded)} of them left out of the boot statistics (their system had enough boots "
                     "on a quiet host)")
    else:
        parts.append("the boot statistics include them (flagged in the boots table)")
    if len(lc_busy):
        lc = loadcost_analysis(ctx)
        used = len(lc.contended_used) if lc is not None else len(lc_busy)
        cpu = lc is not None and lc.model is not None and lc.model.basis == "cpu_seconds"
        parts.append(f"{len(lc_busy)} of them are load-cost boots, {used} of which are in the load-cost fit ("
                     + ("fitted on QEMU's CPU time, which leaves out the time QEMU waited for a CPU but not a "
                        "shared CPU's slower execution; the wall-time figures are beside it" if cpu else
                        "its figures include the host's load") + ")")
    return "; ".join(parts) + "."


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
            _, plo, phi = _stat(ctx.summary, os_id, phase)
            if not np.isnan(plo):  # the phase's own 95 % CI, drawn at the end of its segment
                ax.errorbar(left + med, y + 0.25, xerr=[[med - plo], [phi - med]], fmt="none",
                            ecolor=_COLORS[i % len(_COLORS)], capsize=2, elinewidth=1)
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
    ax.set_title(f"RAM (used: after the probe's settle; Shmem, root tmpfs: at probe start)\n{ctx.origin}",
                 fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def packages_figure(ctx: ReportContext) -> Figure:
    """Package count and sizes per system; 'missing' / 'n/a' written where there is no value."""
    import matplotlib.pyplot as plt

    systems = ctx.systems
    fig, ax = plt.subplots(figsize=(9, 1.2 + 1.1 * len(systems)))
    height = 0.8 / len(SIZE_METRICS)
    for y, os_id in enumerate(systems):
        count, _, _ = _stat(ctx.summary, os_id, "package_count")
        for j, metric in enumerate(SIZE_METRICS):
            pos = y - 0.4 + height * (j + 0.5)
            med = _stat(ctx.summary, os_id, metric)[0]
            if np.isnan(med):
                label = NOT_APPLICABLE if not applies(metric, os_id) else MISSING
                ax.text(0.5, pos, f"{metric}: {label}", va="center", fontsize=8, color="gray")
                continue
            ax.barh(pos, med, height=height * 0.9, color=_COLORS[j], label=metric if metric not in
                    ax.get_legend_handles_labels()[1] else None)
            ax.text(med, pos, f" {med:.1f}", va="center", fontsize=8)
        ax.text(0, y - 0.45, f"{'?' if np.isnan(count) else int(count)} packages", fontsize=8, va="bottom")
    ax.set_yticks(range(len(systems)), systems)
    ax.invert_yaxis()
    ax.set_xlabel("MiB")
    ax.set_title(f"Packages installed\n{ctx.origin}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def loadcost_figure(ctx: ReportContext) -> Figure | None:
    """Per-package seconds against MiB with the robust fit and its bootstrap band; boot totals with their
    least-squares fit; tmpfs RAM. The Firefox range is shaded; boots under host load are drawn hollow."""
    import matplotlib.pyplot as plt

    lc = loadcost_analysis(ctx)
    if lc is None:
        return None
    ff = [mb * 1e6 / 1024**2 for mb in FIREFOX_MB]
    panels = (["packages"] if lc.model is not None and len(lc.packages) else []) + \
        ["totals"] + (["ram"] if lc.ram_fit is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2))
    axes_list = list(np.atleast_1d(axes))
    xs = np.linspace(0, ff[1] * 1.05, 100)
    for ax, panel in zip(axes_list, panels, strict=True):
        if panel == "packages":
            m = lc.model
            assert m is not None
            pk = lc.packages
            for k, (name, g) in enumerate(pk.groupby("package_set", sort=False)):
                ax.scatter(g["mib"], g[m.basis], s=12, color=_COLORS[k % len(_COLORS)], label=f"set {name}",
                           zorder=3)
            lo, hi = m.b_ci
            ax.plot(xs, m.a + m.b * xs, color="black", lw=1,
                    label=f"{m.a:.3f} s + {m.b:.4f} s/MiB [{m.b_ci[0]:.4f}, {m.b_ci[1]:.4f}]")
            ax.fill_between(xs, m.a + lo * xs, m.a + hi * xs, color="gray", alpha=0.25, label="95 % interval of b")
            for x in ff:
                e, elo, ehi = m.extra(x)
                ax.errorbar(x, m.a + e, yerr=[[e - elo], [ehi - e]], fmt="s", color="#c44e52", capsize=3)
            ax.set_ylabel("QEMU CPU seconds per package" if m.basis == "cpu_seconds" else "seconds per package")
            ax.set_title("per package: (i/n) Installing lines", fontsize=9)
        else:
            fit = lc.time_fit if panel == "totals" else lc.ram_fit
            assert fit is not None
            pts = lc.points
            for k, (name, g) in enumerate(pts.groupby("package_set", sort=False)):
                c = _COLORS[k % len(_COLORS)]
                busy = g["host_contended"].astype(bool)
                if (~busy).any():
                    ax.scatter(g.loc[~busy, fit.x_name], g.loc[~busy, fit.y_name], color=c, label=f"set {name}",
                               zorder=3)
                if busy.any():
                    ax.scatter(g.loc[busy, fit.x_name], g.loc[busy, fit.y_name], facecolors="none", edgecolors=c,
                               zorder=3, label=f"set {name} (host load)")
            pred = np.array([fit.predict(x) for x in xs])
            ax.plot(xs, pred[:, 0], color="black", lw=1,
                    label=f"least squares: {fit.slope:.4f} ± {fit.t95 * fit.se_slope:.4f} per MiB")
            ax.fill_between(xs, pred[:, 1], pred[:, 2], color="gray", alpha=0.25, label="95 % CI of the fit")
            ax.set_ylabel(fit.y_name)
            ax.set_title("per boot" if panel == "totals" else "RAM held by the tmpfs root", fontsize=9)
        ax.axvspan(ff[0], ff[1], color="#c44e52", alpha=0.12, label="seed's Firefox: 200-400 MB")
        ax.axvline(lc.measured_range_mib[1], color="gray", ls=":", lw=1, label="largest measured set")
        ax.set_xlabel("installed size (MiB)")
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"Alpine-style in-RAM package load cost\n{ctx.origin}", fontsize=10)
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


def _boot_counts(results: pd.DataFrame) -> dict[str, int]:
    """Boots per os (a boot is a run id and a boot number: merged runs number their boots alike)."""
    counts = results[["os", "run_id", "boot"]].drop_duplicates().groupby("os").size()
    return {str(k): int(v) for k, v in counts.items()}


def _boots_text(ctx: ReportContext) -> str:
    r = ctx.results
    parts = []
    warm_n, meas_n = _boot_counts(r[r["warmup"]]), _boot_counts(r[~r["warmup"]])
    for os_id in ctx.systems:
        warm, meas = warm_n.get(os_id, 0), meas_n.get(os_id, 0)
        parts.append(f"{os_id}: {meas} measured boot(s)" + (f" + {warm} warm-up" if warm else ""))
    return ", ".join(parts)


def show_title(ctx: ReportContext) -> None:
    _display_md(
        f"# Boot time and RAM: {' vs '.join(ctx.systems)}\n\n"
        f"**Figures from: {ctx.origin}.**\n\n"
        f"Run {', '.join(ctx.run_ids)}: {_boots_text(ctx)}; "
        f"labkit {ctx.environment.get('labkit_version', labkit_version())}."
    )


def show_boots(ctx: ReportContext) -> None:
    """Every boot attempted: a failed or timed-out boot is listed with its reason and serial log."""
    table = boots_table(ctx)
    if not len(table):
        _display_md("_No boots.csv in the run directory: boot outcomes are unknown._")
        return
    bad = failed_boots(ctx)
    if len(bad):
        _display_md(f"**{len(bad)} of {len(table)} boots failed** and contribute no metric; "
                    "their partial serial logs are kept in the run directory.")
    else:
        _display_md(f"All {len(table)} boots completed with a verified bundle.")
    _display_html(_html_table(table))


def show_definitions() -> None:
    _display_html(_html_table(definitions_table()))


def show_phases(ctx: ReportContext) -> None:
    _display_fig(phases_figure(ctx))


def show_ram(ctx: ReportContext) -> None:
    _display_fig(ram_figure(ctx))


def show_summary(ctx: ReportContext) -> None:
    _display_html(_html_table(wide_summary_table(ctx)))
    _display_html(_html_table(summary_table(ctx)))


def show_per_boot(ctx: ReportContext) -> None:
    _display_html(_html_table(per_boot_table(ctx.results).reset_index()))


def show_environment(ctx: ReportContext) -> None:
    if not ctx.environment:
        _display_md(f"_No {ENVIRONMENT_FILE} in the run directory: the environment is unknown._")
        return
    _display_html(_html_table(environment_table(ctx)))


def show_packages(ctx: ReportContext) -> None:
    _display_fig(packages_figure(ctx))
    _display_html(_html_table(package_mapping_table()))


def show_comparison(ctx: ReportContext) -> None:
    t = comparison_table(ctx)
    if t.empty:
        _display_md("_One system only: nothing to compare._")
        return
    _display_html(_html_table(t))


def show_outliers(ctx: ReportContext) -> None:
    t = outliers_table(ctx.results)
    _display_md("_No outliers (robust z > 3.5 by MAD)._" if t.empty else "Outliers (robust z > 3.5 by MAD):")
    if not t.empty:
        _display_html(_html_table(t))


def show_warmup(ctx: ReportContext) -> None:
    t = warmup_table(ctx)
    if t.empty:
        _display_md("_No warm-up boots in this run._")
        return
    index = ["run_id", "os", "boot"] if t["run_id"].nunique() > 1 else ["os", "boot"]
    _display_html(_html_table(t.pivot_table(index=index, columns="metric", values="value").reset_index()))


def show_method_check(ctx: ReportContext) -> None:
    """The reboot loop's cross-check: the host's serial-timed phases beside the guest's own clocks."""
    t = method_check_table(ctx)
    if t.empty:
        _display_md("_No method check in this run (`labkit lab --reboot-loop` writes one)._")
        return
    lines = []
    for col, what in (("firmware_loader_diff_s", "firmware + loaders (the guest's FPDT vs the host's serial stamps)"),
                      ("to_probe_diff_s", "kernel start to probe (the guest's uptime vs the host's stamps)")):
        vals = pd.to_numeric(t[col], errors="coerce").dropna() if col in t.columns else pd.Series(dtype=float)
        if vals.empty:
            lines.append(f"- {what}: {MISSING} (the guest published no such clock: e.g. no FPDT under OVMF)")
        else:
            lines.append(f"- {what}: guest - host median {vals.median():+.3f} s over {len(vals)} boots "
                         f"(range {vals.min():+.3f} .. {vals.max():+.3f} s)")
    _display_md("\n".join(lines))
    _display_html(_html_table(t))


def show_loadcost(ctx: ReportContext) -> None:
    lc = loadcost_analysis(ctx)
    if lc is None:
        _display_md(f"_Load cost: {MISSING} (no load-cost boots, or too few for a fit)._")
        return
    fig = loadcost_figure(ctx)
    if fig is not None:
        _display_fig(fig)
    _display_html(_html_table(lc.fits_table()))
    _display_md("**The seed's Firefox case** (extra load time = b · MiB, 95 % bootstrap interval; each package "
                "Firefox adds costs a more; `extrapolated`: the size lies beyond the largest set measured):")
    _display_html(_html_table(lc.firefox()))
    _display_md("**The load rate against the guest's own decompression rate**: busybox's `gzip -dc` over the .apk "
                "files the boot installed, in the same guest, after its probe (in one boot of the main run). "
                "It is not a ceiling: apk-tools inflates with zlib, busybox with its own code, so the load can run "
                "faster (a ratio above 1). The host's rates are context only:")
    _display_html(_html_table(decompression_table(ctx)))
    load = host_load_text(ctx)
    if load:
        _display_md(load)


def show_tables_written(ctx: ReportContext) -> None:
    paths = write_tables(ctx)
    _display_md("Every table is also a CSV file: " + ", ".join(f"`{TABLES_DIR}/{p.name}`" for p in paths))


def show_merge(ctx: ReportContext) -> None:
    """A merged folder: its runs and hosts, what differs between them, statistics per host and cell with the
    factors as columns, the factors' figure, and whether replicate runs' CIs overlap."""
    m = ctx.merged
    if m is None:
        _display_md("_A single run: nothing merged (`labkit merge` and `labkit matrix` write merged folders)._")
        return
    _display_md(f"**{len(m.runs)} run(s) from {len(m.hosts)} host(s)** ({', '.join(m.hosts)}); factors: "
                f"{', '.join(f'`{f}`' for f in m.factors) or 'none (every run has the same parameters)'}. "
                "Statistics are computed per host and cell first; hosts are never pooled."
                + "".join(f"\n\n- {n}" for n in m.info.get("notes", [])))
    cells = m.matrix_cells()
    if len(cells):
        _display_md("**Matrix cells** (an infrastructure failure is retried, a guest failure is kept):")
        _display_html(_html_table(cells))
    _display_html(_html_table(m.runs.fillna("")))
    if m.env_differences.empty:
        _display_md("Host, tools and versions are the same in every run.")
    else:
        _display_md("**Host, tool and version items that differ between the runs:**")
        _display_html(_html_table(m.env_differences))
    fig = factor_figure(m, ctx.origin)
    if fig is not None:
        _display_fig(fig)
    wide = per_cell_wide(m.per_cell, with_host=len(m.hosts) > 1)
    if len(wide):
        _display_md("**Per host and cell**: median, 95 % bootstrap CI and number of boots of that host and cell "
                    f"(tidy, with one column per factor: `{STATS_CELL_FILE}`):")
        _display_html(_html_table(wide))
    if len(m.overlap):
        _display_md("**Do the runs' 95 % CIs overlap?** (runs of the same cell, or the two runs merged; "
                    "'no' means the difference is larger than the runs' own spread)")
        _display_html(_html_table(overlap_view(m.overlap)))


def show_threats(ctx: ReportContext) -> None:
    _display_md("\n".join(f"- {t}" for t in threats(ctx)))


# -- rendering --------------------------------------------------------------------------------------
def notebook_path() -> Path:
    """The report notebook in the repository's notebooks/ (labkit is used from a checkout)."""
    path = NOTEBOOKS_DIR / REPORT_NOTEBOOK
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

