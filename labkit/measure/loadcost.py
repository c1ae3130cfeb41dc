"""Alpine's in-RAM package load cost: fit load time and RAM against installed size, predict the
seed's Firefox case, and compare the measured rate with the host's decompression limit.

The data are boots of the Alpine-style guest with package sets of growing size (one row per boot
and metric, plus the ``package_set`` the image was built with): ``loadcost.csv`` in a run.
"""

from __future__ import annotations

import gzip
import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_text

LOADCOST_FILE = "loadcost.csv"
#: The seed's claim: Firefox adds 200-400 MB to decompress at every boot (MB = 10^6 bytes).
FIREFOX_MB: tuple[float, float] = (200.0, 400.0)
X_METRIC = "installed_size_mib"
TIME_METRIC = "alpine_package_load_s"
RAM_METRIC = "root_tmpfs_used_mib"
POINT_METRICS = (X_METRIC, "compressed_size_mib", "package_count", TIME_METRIC, RAM_METRIC, "ram_used_mib",
                 "shmem_mib")


class LoadCostError(LabkitError):
    """Not enough data for the load-cost fit."""


@dataclass(frozen=True)
class LinearFit:
    """y = intercept + slope · x by ordinary least squares."""

    x_name: str
    y_name: str
    n: int
    slope: float
    intercept: float
    se_slope: float
    se_intercept: float
    cov: float  # covariance of (intercept, slope)
    r2: float
    sigma: float  # residual standard deviation
    t95: float  # two-sided 95 % t quantile with n − 2 degrees of freedom (NaN for n < 3)

    @property
    def slope_ci(self) -> tuple[float, float]:
        return (self.slope - self.t95 * self.se_slope, self.slope + self.t95 * self.se_slope)

    def predict(self, x: float) -> tuple[float, float, float]:
        """(ŷ, low, high): the fitted mean at ``x`` with its 95 % confidence interval."""
        y = self.intercept + self.slope * x
        var = self.se_intercept**2 + x * x * self.se_slope**2 + 2 * x * self.cov
        half = self.t95 * math.sqrt(max(var, 0.0))
        return (y, y - half, y + half)


def fit_line(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, x_name: str = "x",
             y_name: str = "y") -> LinearFit:
    """OLS fit with standard errors; needs at least 3 points at 2 or more distinct x."""
    from scipy.stats import t as student_t

    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    xs, ys = xs[ok], ys[ok]
    n = int(xs.size)
    if n < 3 or np.unique(xs).size < 2:
        raise LoadCostError(
            f"the fit of {y_name} against {x_name} needs >= 3 points at >= 2 sizes (have {n} points at "
            f"{np.unique(xs).size} sizes)",
            "boot the Alpine-style guest with more package sets (--load-sets small,medium,large)",
        )
    xm = xs.mean()
    sxx = float(((xs - xm) ** 2).sum())
    slope = float(((xs - xm) * (ys - ys.mean())).sum() / sxx)
    intercept = float(ys.mean() - slope * xm)
    resid = ys - (intercept + slope * xs)
    dof = n - 2
    s2 = float((resid**2).sum() / dof) if dof > 0 else float("nan")
    se_slope = math.sqrt(s2 / sxx)
    se_int = math.sqrt(s2 * (1.0 / n + xm * xm / sxx))
    cov = -xm * s2 / sxx
    sst = float(((ys - ys.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / sst if sst > 0 else float("nan")
    t95 = float(student_t.ppf(0.975, dof)) if dof > 0 else float("nan")
    return LinearFit(x_name, y_name, n, slope, intercept, se_slope, se_int, cov, r2, math.sqrt(s2), t95)


def points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table of load-cost boots: one row per (package_set, boot), one column per metric."""
    if df.empty:
        return pd.DataFrame(columns=["package_set", "boot", *POINT_METRICS])
    sub = df[df["metric"].isin(POINT_METRICS) & ~df["warmup"].astype(bool)]
    wide = sub.pivot_table(index=["package_set", "boot"], columns="metric", values="value", aggfunc="first")
    wide = wide.reindex(columns=list(POINT_METRICS)).reset_index()
    wide.columns.name = None
    return wide.sort_values([X_METRIC, "boot"]).reset_index(drop=True)


@dataclass(frozen=True)
class LoadCost:
    points: pd.DataFrame
    time_fit: LinearFit
    ram_fit: LinearFit | None

    def firefox(self) -> pd.DataFrame:
        """Predicted load time and RAM for the seed's 200-400 MB of Firefox (added to the fitted set)."""
        rows = []
        for mb in FIREFOX_MB:
            mib = mb * 1e6 / 1024**2
            t, tlo, thi = self.time_fit.predict(mib)
            row: dict[str, float | str] = {
                "case": f"Firefox {mb:.0f} MB", "installed_mib": mib,
                "extra_load_s": self.time_fit.slope * mib,
                "extra_load_s_low": self.time_fit.slope_ci[0] * mib,
                "extra_load_s_high": self.time_fit.slope_ci[1] * mib,
                "load_s": t, "load_s_low": tlo, "load_s_high": thi,
            }
            if self.ram_fit is not None:
                r = self.ram_fit.predict(mib)[0]
                row.update({"extra_ram_mib": self.ram_fit.slope * mib,
                            "extra_ram_mib_low": self.ram_fit.slope_ci[0] * mib,
                            "extra_ram_mib_high": self.ram_fit.slope_ci[1] * mib, "ram_mib": r})
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def rate_mib_s(self) -> float:
        """Marginal load rate: installed MiB per second of package load (1 / slope)."""
        return 1.0 / self.time_fit.slope if self.time_fit.slope > 0 else float("nan")

    def fits_table(self) -> pd.DataFrame:
        rows = []
        for f in (self.time_fit, self.ram_fit):
            if f is None:
                continue
            lo, hi = f.slope_ci
            rows.append({"y": f.y_name, "x": f.x_name, "n": f.n, "slope": f.slope, "slope_se": f.se_slope,
                         "slope_ci_low": lo, "slope_ci_high": hi, "intercept": f.intercept, "r2": f.r2})
        return pd.DataFrame(rows)


def analyse(df: pd.DataFrame) -> LoadCost:
    """Fit load time (and RAM) against installed size from the load-cost rows."""
    pts = points_table(df)
    if pts.empty:
        raise LoadCostError("no load-cost boots", "run the lab with --load-cost")
    tf = fit_line(pts[X_METRIC], pts[TIME_METRIC], x_name=X_METRIC, y_name=TIME_METRIC)
    try:
        rf: LinearFit | None = fit_line(pts[X_METRIC], pts[RAM_METRIC], x_name=X_METRIC, y_name=RAM_METRIC)
    except LoadCostError:
        rf = None
    return LoadCost(pts, tf, rf)


def load_loadcost(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"package_set": str, "os": str, "metric": str})
    df["warmup"] = df["warmup"].astype(str).str.lower() == "true"
    return df


def write_loadcost_csv(rows: Iterable[dict[str, object]], path: Path) -> Path:
    df = pd.DataFrame(list(rows))
    atomic_write_text(path, df.to_csv(index=False))
    return path


# -- the host's decompression limit -----------------------------------------------------------------
@dataclass(frozen=True)
class Throughput:
    files: int
    compressed_bytes: int
    uncompressed_bytes: int
    gzip_s: float
    zstd_s: float | None

    @property
    def gzip_mib_s(self) -> float:
        return self.uncompressed_bytes / 1024**2 / self.gzip_s

    @property
    def zstd_mib_s(self) -> float | None:
        return None if not self.zstd_s else self.uncompressed_bytes / 1024**2 / self.zstd_s

    def record(self) -> dict[str, object]:
        d: dict[str, object] = asdict(self)
        d.update(gzip_mib_s=self.gzip_mib_s, zstd_mib_s=self.zstd_mib_s)
        return d


def decompression_throughput(runner: Runner, apks: Sequence[Path], work: Path, *, repeats: int = 3) -> Throughput:
    """Decompress the same .apk payloads on the host: ``gzip -t`` (the .apk's own gzip stream) and
    ``zstd -t`` of the same tar data recompressed with zstd's default level; best of ``repeats``
    (the limit, not the typical). Both test modes decompress fully and discard the output."""
    if not apks:
        raise LoadCostError("no .apk files to measure decompression on", "build the Alpine-style guest first")
    work.mkdir(parents=True, exist_ok=True)
    raw_total = 0
    tars: list[Path] = []
    for i, apk in enumerate(apks):
        data = gzip.decompress(apk.read_bytes())
        raw_total += len(data)
        tar = work / f"{i:03d}.tar"
        tar.write_bytes(data)
        tars.append(tar)
    with runner.step("host decompression limit (gzip -t, zstd -t)"):
        gz = min(runner.run(["gzip", "-t", *map(str, apks)]).duration_s for _ in range(repeats))
        zs: float | None = None
        if shutil.which("zstd"):
            runner.run(["zstd", "-q", "-f", *map(str, tars)])
            zst = [t.with_name(t.name + ".zst") for t in tars]
            zs = min(runner.run(["zstd", "-t", "-q", *map(str, zst)]).duration_s for _ in range(repeats))
    shutil.rmtree(work, ignore_errors=True)
    compressed = sum(a.stat().st_size for a in apks)
    return Throughput(len(apks), compressed, raw_total, gz, zs)
