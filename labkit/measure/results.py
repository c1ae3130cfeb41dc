"""The tidy results table (one row per boot × metric) and its summary statistics."""

from __future__ import annotations

import csv
import io
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labkit.core.errors import LabkitError
from labkit.core.runner import atomic_write_text
from labkit.measure.bundle import Bundle
from labkit.measure.metrics import METRICS, metrics_from_bundle

COLUMNS: tuple[str, ...] = (
    "run_id", "os", "guest", "boot", "warmup", "accel", "metric", "value", "unit", "source",
)
#: Fixed seed: the same results give the same confidence intervals on every machine.
BOOTSTRAP_SEED = 20240611
BOOTSTRAP_RESAMPLES = 4000


class ResultsError(LabkitError):
    """The results table is missing or malformed."""


@dataclass(frozen=True)
class ResultRow:
    run_id: str
    os: str
    guest: str  # rehearsal | real
    boot: int
    warmup: bool
    accel: str  # tcg | kvm | hardware
    metric: str
    value: float
    unit: str
    source: str


def rows_from_bundle(
    bundle: Bundle, *, run_id: str, boot: int, warmup: bool, accel: str, qemu_t0: float = 0.0
) -> list[ResultRow]:
    """One boot's bundle → its result rows (absent metrics give no row)."""
    return [
        ResultRow(run_id, bundle.os, bundle.guest, boot, warmup, accel, m.name, m.value, m.unit, m.source)
        for m in metrics_from_bundle(bundle, qemu_t0=qemu_t0)
    ]


def write_results_csv(rows: Iterable[ResultRow], path: Path) -> Path:
    """Write the table as CSV (temp file + rename), rows in a stable order."""
    ordered = sorted(rows, key=lambda r: (r.run_id, r.os, r.boot, r.metric))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in ordered:
        d = asdict(r)
        d["value"] = repr(float(r.value))  # full precision, round-trips exactly
        writer.writerow(d)
    atomic_write_text(Path(path), buf.getvalue())
    return Path(path)


def load_results(path: Path) -> pd.DataFrame:
    """Read results.csv into a DataFrame with typed columns."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"no results table at {path}", "run the benchmark first (it writes results.csv)")
    df = pd.read_csv(path, dtype={"run_id": str, "os": str, "guest": str, "accel": str, "metric": str})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ResultsError(f"{path}: columns missing: {', '.join(missing)}", "write it with write_results_csv()")
    df["boot"] = df["boot"].astype(int)
    df["warmup"] = df["warmup"].astype(str).str.lower().map({"true": True, "false": False})
    if df["warmup"].isna().any():
        raise ResultsError(f"{path}: column 'warmup' must be True/False")
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    return df[list(COLUMNS)]


def bootstrap_median_ci(
    values: np.ndarray, *, seed: int = BOOTSTRAP_SEED, resamples: int = BOOTSTRAP_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the median; NaN for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(resamples, v.size))
    meds = np.median(v[idx], axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(meds, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def _group_seed(os_id: str, metric: str) -> int:
    # independent of the order of groups, so adding a system does not move the others' CIs
    return BOOTSTRAP_SEED ^ zlib.crc32(f"{os_id}\0{metric}".encode())


def summarize(df: pd.DataFrame, *, include_warmup: bool = False) -> pd.DataFrame:
    """Per os × metric: n, median, min, max, 95 % bootstrap CI of the median.

    Every os × known metric pair appears; a metric never measured on a system has n = 0 and NaN
    statistics (missing — never 0).
    """
    data = df if include_warmup else df[~df["warmup"].astype(bool)]
    units = {m.name: m.unit for m in METRICS}
    units.update(dict(zip(df["metric"], df["unit"], strict=False)))
    known = [m.name for m in METRICS]
    metrics = known + sorted(set(df["metric"]) - set(known))
    out: list[dict[str, object]] = []
    for os_id in sorted(df["os"].unique()):
        sub = data[data["os"] == os_id]
        for metric in metrics:
            v = sub.loc[sub["metric"] == metric, "value"].to_numpy(dtype=float)
            v = v[~np.isnan(v)]
            lo, hi = bootstrap_median_ci(v, seed=_group_seed(os_id, metric))
            nan = float("nan")
            out.append(
                {
                    "os": os_id,
                    "metric": metric,
                    "unit": units.get(metric, ""),
                    "n": int(v.size),
                    "median": float(np.median(v)) if v.size else nan,
                    "min": float(v.min()) if v.size else nan,
                    "max": float(v.max()) if v.size else nan,
                    "ci_low": lo,
                    "ci_high": hi,
                }
            )
    cols = ["os", "metric", "unit", "n", "median", "min", "max", "ci_low", "ci_high"]
    return pd.DataFrame(out, columns=cols)


def per_boot_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table: one row per (os, boot), one column per metric; absent metrics are NaN. Rows of several
    runs (a merged folder) are told apart by their run id."""
    index = ["run_id", "os", "boot", "warmup"] if df["run_id"].nunique() > 1 else ["os", "boot", "warmup"]
    wide = df.pivot_table(index=index, columns="metric", values="value", aggfunc="first")
    known = [m.name for m in METRICS]
    extra = sorted(c for c in wide.columns if c not in known)
    wide = wide.reindex(columns=known + extra)
    wide.columns.name = None
    return wide
