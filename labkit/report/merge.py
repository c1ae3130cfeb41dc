"""Merge run folders (from this machine or copied from others) into one folder and one report.

``labkit merge RUN_DIR... --out DIR`` and the matrix (:mod:`labkit.lab.matrix`) call :func:`merge_runs`.
A merged folder holds::

    merge.json                 inputs, runs (folder, host, cell, factors), factors, hosts, duplicates, notes
    runs.csv                   one row per run: run id, host, cell, factor values, folder, versions, boots
    results.csv                every run's rows (de-duplicated by run id) + columns host, cell and one per factor
    boots.csv                  every run's boots + run_id, host, cell (serial logs relative to DIR)
    environments/<run>.json    each run's environment.json, unchanged
    environment_differences.csv  the host / tool / version items that differ between the runs
    stats_per_run.csv          per run × os × metric: n, median, 95 % bootstrap CI (each run: one host, one cell)
    stats_per_cell.csv         per host × cell × os × metric, boots of the same host and cell pooled
    ci_overlap.csv             per pair of runs of the same cell (or the two runs merged): do the CIs overlap?
    runs/<run>/                a copy of each run folder given (a matrix's cells stay in cells/<cell-id>/)

Statistics are computed per host and cell first (a run is one host and one cell); runs on different hosts
are only ever compared through those per-host numbers, never pooled. ``notebooks/06_report.ipynb`` renders a
merged folder like a single run, with one group per os × cell (× host when there are several hosts).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labkit.core.errors import LabkitError
from labkit.core.runfolder import prepare_run_dir
from labkit.core.runner import atomic_write_bytes, atomic_write_text
from labkit.measure.environment import (
    ENVIRONMENT_FILE,
    environment_differences,
    flatten,
    host_name,
    labkit_version,
    load_environment,
    recorded_params,
)
from labkit.measure.loadcost import LOADCOST_FILE
from labkit.measure.metrics import METRICS, applies, os_family
from labkit.measure.results import COLUMNS, load_results, summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MERGE_FILE = "merge.json"
MATRIX_FILE = "matrix.json"  # written by labkit.lab.matrix: the grid and every cell's attempts
RUNS_FILE = "runs.csv"
RESULTS_FILE = "results.csv"
BOOTS_FILE = "boots.csv"
ENVIRONMENTS_DIR = "environments"
ENV_DIFF_FILE = "environment_differences.csv"
STATS_RUN_FILE = "stats_per_run.csv"
STATS_CELL_FILE = "stats_per_cell.csv"
OVERLAP_FILE = "ci_overlap.csv"
RUNS_DIR = "runs"
DECOMPRESSION_FILE = "decompression.json"
#: The cell of runs that share every parameter (no factor varies).
NO_FACTORS = "all"
#: Parameters that say where a run went or what it wrote, never what it measured: not factors.
NOT_FACTORS = ("out", "cache_dir", "report", "keep_image", "target", "run_dir", "interactive", "grid", "scheduler")
#: Files never copied with a run folder (the disk image and the work tree are large and rebuilt by a run).
COPY_IGNORE = ("work", "*.img", ".report.tmp-*")
#: The columns of runs.csv besides the factors.
META_COLUMNS = ("run_id", "host", "cell", "folder", "matrix_cell", "like", "labkit_version", "accel", "guest_kind",
                "boots_ok", "boots_failed", "captured_at")
#: What the report's factor figure draws (when measured).
FACTOR_METRICS = ("total_to_probe_s", "kernel_s", "initramfs_s", "alpine_package_load_s", "ram_used_mib")
OVERLAP_YES, OVERLAP_NO = "yes", "no"
_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


class MergeError(LabkitError):
    """Run folders cannot be merged (none given, not run folders, an output that holds a run)."""


# -- reading the inputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSource:
    run_id: str
    folder: Path
    environment: dict[str, Any]
    results: pd.DataFrame
    boots: pd.DataFrame | None
    loadcost: pd.DataFrame | None

    @property
    def host(self) -> str:
        return host_name(self.environment)

    @property
    def params(self) -> dict[str, Any]:
        return recorded_params(self.environment)

    @property
    def matrix(self) -> dict[str, Any]:
        m = (self.environment.get("extra") or {}).get("matrix")
        return dict(m) if isinstance(m, Mapping) else {}


def run_folders(inputs: Iterable[str | Path]) -> list[Path]:
    """Each input as run folders: a run folder as is, a merged folder (merge.json) as the runs it holds."""
    out: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise MergeError(f"{path} is not a directory", "give run folders (they hold results.csv)")
        if (path / MERGE_FILE).is_file():
            info = json.loads((path / MERGE_FILE).read_text(encoding="utf-8"))
            out += [path / r["folder"] for r in info.get("runs", [])]
        elif (path / RESULTS_FILE).is_file():
            out.append(path)
        else:
            raise MergeError(f"{path} holds no {RESULTS_FILE} and no {MERGE_FILE}: it is not a run folder",
                             "give the folders `labkit lab` or `labkit matrix` wrote (runs/<run-id>/)")
    if not out:
        raise MergeError("no run folder to merge", "give at least one run folder")
    return out


def read_run(folder: Path) -> RunSource:
    results = load_results(folder / RESULTS_FILE)
    ids = sorted(set(results["run_id"]))
    env = load_environment(folder) if (folder / ENVIRONMENT_FILE).is_file() else {}
    recorded = (env.get("extra") or {}).get("run_id")
    if len(ids) > 1:
        raise MergeError(f"{folder / RESULTS_FILE} holds several run ids ({', '.join(ids)})",
                         "give each run's own folder")
    run_id = ids[0] if ids else str(recorded or folder.name)
    boots = pd.read_csv(folder / BOOTS_FILE) if (folder / BOOTS_FILE).is_file() else None
    lc = pd.read_csv(folder / LOADCOST_FILE, dtype={"run_id": str}) if (folder / LOADCOST_FILE).is_file() else None
    return RunSource(run_id, folder, env, results, boots, lc)


# -- factors and cells -----------------------------------------------------------------------------
def _value_text(v: Any) -> str:
    if isinstance(v, list | tuple):
        return "+".join(str(x) for x in v)
    return "—" if v is None else str(v)


def find_factors(runs: Sequence[RunSource]) -> list[str]:
    """The matrix's declared factors, then every other parameter whose value differs between the runs."""
    declared: list[str] = []
    for r in runs:
        for k in r.matrix.get("factors", {}) or {}:
            if k not in declared:
                declared.append(k)
    keys = sorted({k for r in runs for k in r.params} - set(NOT_FACTORS) - set(declared))
    varying = [k for k in keys if len({json.dumps(r.params.get(k), sort_keys=True, default=str) for r in runs}) > 1]
    factors = declared + varying
    clash = [f for f in factors if f in COLUMNS or f in META_COLUMNS]
    if clash:
        raise MergeError(f"factor(s) {clash} have the name of a results column", "rename the parameter")
    return factors


def factor_values(run: RunSource, factors: Sequence[str]) -> dict[str, str]:
    declared = run.matrix.get("factors", {}) or {}
    return {f: _value_text(declared[f] if f in declared else run.params.get(f)) for f in factors}


def cell_label(values: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or NO_FACTORS


def group_label(os_id: str, cell: str, host: str, *, with_host: bool) -> str:
    """The report's group: the os, then the cell (if factors vary), then the host (if several).
    It starts with the os id, so :func:`labkit.measure.metrics.os_family` still applies."""
    label = os_id if cell == NO_FACTORS else f"{os_id} | {cell}"
    return f"{label} @ {host}" if with_host else label


# -- statistics --------------------------------------------------------------------------------------
def _stats(results: pd.DataFrame) -> pd.DataFrame:
    s = summarize(results)
    return s[[applies(m, o) for m, o in zip(s["metric"], s["os"], strict=True)]].reset_index(drop=True)


def stats_per_run(runs: Sequence[RunSource], meta: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """Per run × os × metric (each run is one host and one cell)."""
    frames = []
    for r in runs:
        m = meta.loc[meta["run_id"] == r.run_id].iloc[0]
        s = _stats(r.results)
        front = {"run_id": r.run_id, "host": m["host"], "cell": m["cell"], **{f: m[f] for f in factors}}
        for i, (k, v) in enumerate(front.items()):
            s.insert(i, k, v)
        frames.append(s)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _value_key(v: object) -> tuple[float, str]:
    try:
        return (float(str(v)), "")
    except ValueError:
        return (float("inf"), str(v))


def cell_order(df: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """The cells of ``df`` (columns cell + factors) in the order of their factor values, numbers as numbers."""
    first = df.drop_duplicates("cell")
    rows = first.to_dict("records")
    rows.sort(key=lambda r: tuple(_value_key(r[f]) for f in factors))
    return [str(r["cell"]) for r in rows]


def stats_per_cell(results: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """Boots of the same host and cell pooled; never across hosts."""
    frames = []
    order = {c: i for i, c in enumerate(cell_order(results, factors))}
    keys = sorted(results.groupby(["host", "cell"]).groups, key=lambda hc: (order[hc[1]], hc[0]))
    for host, cell in keys:
        g = results[(results["host"] == host) & (results["cell"] == cell)]
        s = _stats(g[list(COLUMNS)])
        s.insert(0, "host", host)
        s.insert(1, "cell", cell)
        for i, f in enumerate(factors):
            s.insert(2 + i, f, g[f].iloc[0])
        s.insert(2 + len(factors), "runs", g["run_id"].nunique())
        frames.append(s)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def per_cell_wide(per_cell: pd.DataFrame, *, with_host: bool) -> pd.DataFrame:
    """One row per os × metric, one column per cell (and host): ``median [CI low, high] n=N``; the grid's
    factors as columns. Metrics never measured anywhere are left out."""
    if per_cell.empty:
        return pd.DataFrame()
    s = per_cell[per_cell["n"] > 0].copy()
    s["column"] = [f"{c} @ {h}" if with_host else c for c, h in zip(s["cell"], s["host"], strict=True)]
    s["text"] = [f"{m:.4g}" + ("" if np.isnan(lo) else f" [{lo:.4g}, {hi:.4g}]") + f" n={n}"
                 for m, lo, hi, n in zip(s["median"], s["ci_low"], s["ci_high"], s["n"], strict=True)]
    order = {m.name: i for i, m in enumerate(METRICS)}
    wide = s.pivot_table(index=["os", "metric", "unit"], columns="column", values="text", aggfunc="first")
    wide = wide.reindex(columns=list(dict.fromkeys(s["column"])))
    wide = wide.reset_index()
    wide["_o"] = [order.get(m, len(order)) for m in wide["metric"]]
    wide = wide.sort_values(["os", "_o"]).drop(columns="_o").reset_index(drop=True)
    wide.columns.name = None
    return wide


def overlap_view(overlap: pd.DataFrame) -> pd.DataFrame:
    """The overlap table for reading: per pair of runs and metric, each run's ``median [CI] n=`` and the verdict."""
    def text(r: Mapping[str, Any], side: str) -> str:
        lo, hi = float(r[f"ci_low_{side}"]), float(r[f"ci_high_{side}"])
        ci = " [no CI]" if np.isnan(lo) else f" [{lo:.4g}, {hi:.4g}]"
        return f"{float(r[f'median_{side}']):.4g}{ci} n={int(r[f'n_{side}'])}"

    rows = [{"run A": r["run_a"], "run B": r["run_b"], "os": r["os"], "metric": r["metric"], "unit": r["unit"],
             "A: median [95 % CI]": text(r, "a"), "B: median [95 % CI]": text(r, "b"), "overlap": r["overlap"]}
            for r in overlap.to_dict("records")]
    return pd.DataFrame(rows, columns=["run A", "run B", "os", "metric", "unit", "A: median [95 % CI]",
                                       "B: median [95 % CI]", "overlap"])


def overlap_word(a_lo: float, a_hi: float, b_lo: float, b_hi: float) -> str:
    """Whether two 95 % CIs overlap; 'unknown' when either is missing (fewer than 2 boots)."""
    if any(np.isnan(x) for x in (a_lo, a_hi, b_lo, b_hi)):
        return "unknown (a CI needs >= 2 boots)"
    return OVERLAP_YES if a_lo <= b_hi and b_lo <= a_hi else OVERLAP_NO


def run_pairs(meta: pd.DataFrame, *, matrix: bool = False) -> list[tuple[str, str]]:
    """Runs to compare: every pair within a cell (replicates, the same cell on other hosts), and the two
    runs when exactly two runs (not a matrix's cells, which differ by design) are merged."""
    ids = list(meta["run_id"])
    pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
             if meta.loc[meta["run_id"] == a, "cell"].iloc[0] == meta.loc[meta["run_id"] == b, "cell"].iloc[0]]
    if len(ids) == 2 and not pairs and not matrix:
        pairs = [(ids[0], ids[1])]
    return pairs


def ci_overlap_table(per_run: pd.DataFrame, meta: pd.DataFrame, *, matrix: bool = False) -> pd.DataFrame:
    cols = ["metric", "os", "unit", "run_a", "host_a", "cell_a", "n_a", "median_a", "ci_low_a", "ci_high_a",
            "run_b", "host_b", "cell_b", "n_b", "median_b", "ci_low_b", "ci_high_b", "overlap"]
    rows = []
    for a, b in run_pairs(meta, matrix=matrix):
        sa = per_run[per_run["run_id"] == a].set_index(["os", "metric"])
        sb = per_run[per_run["run_id"] == b].set_index(["os", "metric"])
        for key in [k for k in sa.index if k in sb.index]:
            x, y = sa.loc[key], sb.loc[key]
            if int(x["n"]) == 0 and int(y["n"]) == 0:
                continue
            rows.append({
                "metric": key[1], "os": key[0], "unit": x["unit"],
                "run_a": a, "host_a": x["host"], "cell_a": x["cell"], "n_a": int(x["n"]), "median_a": x["median"],
                "ci_low_a": x["ci_low"], "ci_high_a": x["ci_high"],
                "run_b": b, "host_b": y["host"], "cell_b": y["cell"], "n_b": int(y["n"]), "median_b": y["median"],
                "ci_low_b": y["ci_low"], "ci_high_b": y["ci_high"],
                "overlap": overlap_word(x["ci_low"], x["ci_high"], y["ci_low"], y["ci_high"]),
            })
    order = {m.name: i for i, m in enumerate(METRICS)}
    df = pd.DataFrame(rows, columns=cols)
    if len(df):
        df["_order"] = [order.get(m, len(order)) for m in df["metric"]]
        df = df.sort_values(["run_a", "run_b", "os", "_order"], kind="stable").drop(columns="_order")
    return df.reset_index(drop=True)


def environment_differences_table(runs: Sequence[RunSource]) -> pd.DataFrame:
    """Host / tool / version items that are not the same in every run: one column per run."""
    if len(runs) < 2:
        return pd.DataFrame(columns=["item"])
    keys: list[str] = []
    for r in runs[1:]:
        keys += [k for k, _, _ in environment_differences(runs[0].environment, r.environment) if k not in keys]
    flat = {r.run_id: flatten(r.environment) for r in runs}
    rows = [{"item": k, **{rid: f.get(k, "—") for rid, f in flat.items()}} for k in sorted(keys)]
    return pd.DataFrame(rows, columns=["item", *flat])


def common_environment(runs: Sequence[RunSource]) -> dict[str, str]:
    """The flattened environment items every run shares (the merged report's environment table)."""
    flats = [flatten(r.environment) for r in runs if r.environment]
    if not flats:
        return {}
    return {k: v for k, v in flats[0].items() if all(f.get(k) == v for f in flats[1:])
            and not k.startswith(("extra.run_id", "captured_at", "params.out", "extra.matrix."))}


# -- writing ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergeResult:
    out: Path
    runs: pd.DataFrame
    factors: list[str]
    hosts: list[str]
    overlap: pd.DataFrame
    rows: int = 0  # result rows merged
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MergeError(f"--out {out} exists and is not a directory", "choose a new directory for the merge")
    held = [n for n in (MERGE_FILE, RESULTS_FILE, ENVIRONMENT_FILE, "report.html") if (out / n).exists()]
    if held:
        raise MergeError(f"--out {out} already holds a run or a merge ({', '.join(held)}); labkit never "
                         "overwrites one", "choose a new directory for the merged folder")


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def merge_runs(inputs: Sequence[str | Path], out: Path | None = None, *, runs_root: Path = Path("runs"),
               matrix: Mapping[str, Any] | None = None) -> MergeResult:
    """Merge the run folders ``inputs`` into ``out`` (see the module docstring): a new or empty folder, or a new
    ``runs/<run-id>`` (:func:`labkit.core.runfolder.prepare_run_dir`); for a matrix (``matrix``: its record,
    kept in merge.json) the matrix's own folder, which holds the cells. Run folders outside ``out`` are copied
    into ``out/runs/<run-id>/`` (without their work tree), so the merged folder stands alone and can itself be
    merged again."""
    if matrix is not None:
        if out is None:
            raise MergeError("a matrix is merged into its own folder", "pass the matrix folder as out")
        _check_out(Path(out))
    folders = run_folders(inputs)
    runs: list[RunSource] = []
    duplicates: list[dict[str, Any]] = []
    notes: list[str] = []
    seen: dict[str, RunSource] = {}
    for folder in folders:
        r = read_run(folder)
        if r.run_id in seen:
            first = seen[r.run_id]
            same = first.results.reset_index(drop=True).equals(r.results.reset_index(drop=True))
            duplicates.append({"run_id": r.run_id, "kept": str(first.folder), "dropped": str(folder),
                               "identical_rows": same})
            notes.append(f"run {r.run_id} given twice ({first.folder} and {folder}): kept the first"
                         + ("" if same else "; their rows DIFFER"))
            continue
        if not r.environment:
            notes.append(f"run {r.run_id} ({folder}) has no {ENVIRONMENT_FILE}: its host and parameters are unknown")
        seen[r.run_id] = r
        runs.append(r)
    if matrix is None:
        out = prepare_run_dir(Path(out) if out is not None else None, runs_root)[1]
    assert out is not None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / ENVIRONMENTS_DIR).mkdir(exist_ok=True)
    factors = find_factors(runs)
    hosts = sorted({r.host for r in runs})

    rel: dict[str, str] = {}
    for r in runs:
        if _inside(r.folder, out):
            rel[r.run_id] = str(r.folder.resolve().relative_to(out.resolve()))
        else:
            dest = out / RUNS_DIR / r.run_id
            shutil.copytree(r.folder, dest, ignore=shutil.ignore_patterns(*COPY_IGNORE), symlinks=True)
            rel[r.run_id] = f"{RUNS_DIR}/{r.run_id}"
        if (r.folder / ENVIRONMENT_FILE).is_file():
            atomic_write_bytes(out / ENVIRONMENTS_DIR / f"{r.run_id}.json", (r.folder / ENVIRONMENT_FILE).read_bytes())

    meta_rows = []
    for r in runs:
        fv = factor_values(r, factors)
        extra = r.environment.get("extra") or {}
        b = r.boots
        meta_rows.append({
            "run_id": r.run_id, "host": r.host, "cell": cell_label(fv), **fv,
            "folder": rel[r.run_id], "matrix_cell": r.matrix.get("cell", ""),
            "like": (extra.get("like") or {}).get("run_id", "") if isinstance(extra.get("like"), Mapping) else "",
            "labkit_version": r.environment.get("labkit_version", ""), "accel": extra.get("accel", ""),
            "guest_kind": extra.get("guest_kind", ""),
            "boots_ok": int(b["ok"].astype(str).str.lower().eq("true").sum()) if b is not None else "",
            "boots_failed": int((~b["ok"].astype(str).str.lower().eq("true")).sum()) if b is not None else "",
            "captured_at": r.environment.get("captured_at", ""),
        })
    meta = pd.DataFrame(meta_rows)

    frames = []
    for r in runs:
        m = meta.loc[meta["run_id"] == r.run_id].iloc[0]
        df = r.results.copy()
        df["host"] = m["host"]
        df["cell"] = m["cell"]
        for f in factors:
            df[f] = m[f]
        frames.append(df)
    results = pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)
    atomic_write_text(out / RESULTS_FILE, results.to_csv(index=False))

    boot_frames = []
    for r in runs:
        if r.boots is None:
            continue
        m = meta.loc[meta["run_id"] == r.run_id].iloc[0]
        b = r.boots.copy()
        b.insert(0, "run_id", r.run_id)
        b.insert(1, "host", m["host"])
        b.insert(2, "cell", m["cell"])
        if "serial_log" in b.columns:
            b["serial_log"] = [f"{rel[r.run_id]}/{s}" if isinstance(s, str) and s else s for s in b["serial_log"]]
        boot_frames.append(b)
    if boot_frames:
        atomic_write_text(out / BOOTS_FILE, pd.concat(boot_frames, ignore_index=True).to_csv(index=False))

    per_run = stats_per_run(runs, meta, factors)
    per_cell = stats_per_cell(results, factors)
    overlap = ci_overlap_table(per_run, meta, matrix=bool(matrix) or any(r.matrix for r in runs))
    atomic_write_text(out / STATS_RUN_FILE, per_run.to_csv(index=False))
    atomic_write_text(out / STATS_CELL_FILE, per_cell.to_csv(index=False))
    atomic_write_text(out / OVERLAP_FILE, overlap.to_csv(index=False))
    atomic_write_text(out / ENV_DIFF_FILE, environment_differences_table(runs).to_csv(index=False))
    atomic_write_text(out / RUNS_FILE, meta.to_csv(index=False))

    with_lc = [r for r in runs if r.loadcost is not None and len(r.loadcost)]
    groups = {(r.host, meta.loc[meta["run_id"] == r.run_id, "cell"].iloc[0]) for r in with_lc}
    if len(groups) == 1:
        atomic_write_text(out / LOADCOST_FILE, pd.concat([r.loadcost for r in with_lc if r.loadcost is not None],
                                                         ignore_index=True).to_csv(index=False))
        dec = with_lc[0].folder / DECOMPRESSION_FILE
        if dec.is_file():
            atomic_write_bytes(out / DECOMPRESSION_FILE, dec.read_bytes())
    elif len(groups) > 1:
        notes.append("load cost measured in several cells or hosts: no pooled fit (each run folder keeps its "
                     "loadcost.csv)")

    info = {
        "merged_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "labkit_version": labkit_version(),
        "inputs": [str(Path(p)) for p in inputs],
        "factors": factors,
        "hosts": hosts,
        "runs": [{"run_id": r.run_id, "folder": rel[r.run_id], "host": r.host,
                  "cell": meta.loc[meta["run_id"] == r.run_id, "cell"].iloc[0],
                  "factors": factor_values(r, factors)} for r in runs],
        "duplicates": duplicates,
        "notes": notes,
        "matrix": dict(matrix) if matrix else None,
    }
    atomic_write_text(out / MERGE_FILE, json.dumps(info, indent=2, default=str) + "\n")
    return MergeResult(out, meta, factors, hosts, overlap, len(results), duplicates, notes)


# -- reading a merged folder (the report) ----------------------------------------------------------
@dataclass(frozen=True)
class MergedFolder:
    path: Path
    info: dict[str, Any]
    results: pd.DataFrame  # merged results.csv: COLUMNS + host, cell, factors
    runs: pd.DataFrame
    per_run: pd.DataFrame
    per_cell: pd.DataFrame
    overlap: pd.DataFrame
    env_differences: pd.DataFrame
    environment: dict[str, str]  # items every run shares
    boots: pd.DataFrame | None

    @property
    def factors(self) -> list[str]:
        return list(self.info.get("factors", []))

    @property
    def hosts(self) -> list[str]:
        return list(self.info.get("hosts", []))

    @property
    def matrix(self) -> dict[str, Any] | None:
        m = self.info.get("matrix")
        return dict(m) if isinstance(m, Mapping) else None

    def matrix_cells(self) -> pd.DataFrame:
        """The matrix's cells (matrix.json): status, attempts and the reason of each failed attempt."""
        path = self.path / MATRIX_FILE
        if not path.is_file():
            return pd.DataFrame()
        info = json.loads(path.read_text(encoding="utf-8"))
        rows = []
        for c in info.get("cells", []):
            tries = c.get("attempts", [])
            rows.append({"cell": c["cell_id"], "status": c["status"], "attempts": len(tries),
                         "hosts": ", ".join(dict.fromkeys(str(t.get("host")) for t in tries)),
                         "wall_s": sum(float(t.get("wall_s") or 0) for t in tries),
                         "reasons": "; ".join(f"#{t['attempt']} {t['status']}: {t['reason']}" for t in tries
                                              if t.get("status") != "ok"),
                         "folder": c.get("folder") or ""})
        return pd.DataFrame(rows)

    def labelled(self, df: pd.DataFrame) -> pd.Series:
        with_host = len(self.hosts) > 1
        return pd.Series([group_label(o, c, h, with_host=with_host) for o, c, h in
                          zip(df["os"], df["cell"], df["host"], strict=True)], index=df.index, dtype=str)

    def grouped_results(self) -> pd.DataFrame:
        """The results with ``os`` replaced by the group label (os | cell @ host), in COLUMNS."""
        df = self.results.copy()
        df["os"] = self.labelled(df)
        return df[list(COLUMNS)]

    def grouped_boots(self) -> pd.DataFrame | None:
        if self.boots is None:
            return None
        b = self.boots.copy()
        # boots.csv names the system (alpine), results the os id (alpine-rehearsal): label both alike
        os_ids = {(r, os_family(o)): o for r, o in zip(self.results["run_id"], self.results["os"], strict=True)}
        b["os"] = [os_ids.get((r, os_family(str(o))), o) for r, o in zip(b["run_id"], b["os"], strict=True)]
        b["os"] = self.labelled(b)
        return b


def is_merged(path: str | Path) -> bool:
    return (Path(path) / MERGE_FILE).is_file()


def _csv(path: Path) -> pd.DataFrame:
    if not path.is_file() or not path.read_text(encoding="utf-8").strip():
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"run_id": str, "run_a": str, "run_b": str, "host": str, "cell": str})


def load_merged(path: str | Path) -> MergedFolder:
    path = Path(path)
    info = json.loads((path / MERGE_FILE).read_text(encoding="utf-8"))
    factors = list(info.get("factors", []))
    results = pd.read_csv(path / RESULTS_FILE, dtype={"run_id": str, "os": str, "guest": str, "accel": str,
                                                      "metric": str, "host": str, "cell": str,
                                                      **dict.fromkeys(factors, str)})
    base = load_results(path / RESULTS_FILE)  # validates and types the COLUMNS
    for c in COLUMNS:
        results[c] = base[c]
    runs = [RunSource(r["run_id"], path / r["folder"],
                      load_environment(path / r["folder"]) if (path / r["folder"] / ENVIRONMENT_FILE).is_file()
                      else {}, pd.DataFrame(), None, None) for r in info.get("runs", [])]
    boots = pd.read_csv(path / BOOTS_FILE, dtype={"run_id": str}) if (path / BOOTS_FILE).is_file() else None
    return MergedFolder(path, info, results, _csv(path / RUNS_FILE), _csv(path / STATS_RUN_FILE),
                        _csv(path / STATS_CELL_FILE), _csv(path / OVERLAP_FILE), _csv(path / ENV_DIFF_FILE),
                        common_environment(runs), boots)


def factor_figure(m: MergedFolder, origin: str) -> Figure | None:
    """Median and 95 % CI per cell for the main metrics, one line per os (and host): the factors' effect."""
    import matplotlib.pyplot as plt

    s = m.per_cell
    if s.empty or not m.factors:
        return None
    metrics = [x for x in FACTOR_METRICS if (s.loc[s["metric"] == x, "n"] > 0).any()]
    if not metrics:
        return None
    cells = list(dict.fromkeys(s["cell"]))
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    series = list(dict.fromkeys(zip(s["os"], s["host"], strict=True)))
    for ax, metric in zip(axes.flat, metrics, strict=False):
        sub = s[s["metric"] == metric]
        for k, (os_id, host) in enumerate(series):
            g = sub[(sub["os"] == os_id) & (sub["host"] == host) & (sub["n"] > 0)]
            if g.empty:
                continue
            xs = [cells.index(c) + 0.08 * (k - (len(series) - 1) / 2) for c in g["cell"]]
            med = g["median"].to_numpy(dtype=float)
            lo = np.where(np.isnan(g["ci_low"].to_numpy(dtype=float)), med, g["ci_low"].to_numpy(dtype=float))
            hi = np.where(np.isnan(g["ci_high"].to_numpy(dtype=float)), med, g["ci_high"].to_numpy(dtype=float))
            label = os_id if len(m.hosts) < 2 else f"{os_id} @ {host}"
            ax.errorbar(xs, med, yerr=[med - lo, hi - med], fmt="o-", capsize=4, color=_COLORS[k % len(_COLORS)],
                        label=label)
        ax.set_xticks(range(len(cells)), [c.replace(", ", "\n") for c in cells], fontsize=7)
        ax.set_title(f"{metric} ({sub['unit'].iloc[0] if len(sub) else ''})", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Median per cell (error bar: 95 % CI; none with 1 boot)\n{origin}", fontsize=10)
    fig.tight_layout()
    return fig
