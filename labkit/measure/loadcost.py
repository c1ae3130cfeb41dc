"""Alpine's in-RAM package load cost: fit load time and RAM against installed size, predict the
seed's Firefox case, and compare the measured rate with the guest's own decompression limit.

The data are boots of the Alpine-style guest with package sets of growing size, all booted alike:

- ``loadcost.csv``: one row per boot and metric (the results table's columns), plus the ``package_set``
  the image was built with and the host load of that boot (``host_contended``, ``host_other_cpu``);
- ``loadcost_packages.csv``: one row per package per boot: its installed size and the seconds between
  its ``(i/n) Installing NAME (VER)`` line and the next (:mod:`labkit.measure.parsers.apk_timing`).

The model. A package ``p`` takes ``a + b · size_p`` seconds (``a``: fixed cost per package, ``b``: cost per
MiB installed); a boot's whole load takes ``c + Σ_p (a + b · size_p)`` (``c``: fixed cost per boot, the time
outside the package lines). ``b`` and ``a`` come from the per-package points by a rank-based robust fit
(:func:`weighted_theil_sen`), ``c`` from the per-boot totals minus their package lines (median over boots).
``b`` comes from the largest set's boots, one estimate per boot (they hold every package size, up to the
largest), with a Student-t interval over those boots (:func:`fit_packages`): it says how well the lab
measured these payloads' cost, not how another payload's content (file count, compressibility) would
change it — :meth:`LoadCost.content_rates` and the per-package points show that.
Boots taken while the host was busy (:mod:`labkit.measure.hostload`) are left out of the fit when their
set has a boot on a quiet host, and kept (flagged) otherwise. The per-boot totals are also
fitted on their own (least squares, as a cross-check): that slope mixes ``b`` with the per-package cost.
"""

from __future__ import annotations

import gzip
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from labkit.core.console import SerialLine
from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_text
from labkit.measure.bundle import Bundle, parse_dmesg
from labkit.measure.parsers.apk import parse_apk_installed
from labkit.measure.parsers.apk_timing import GuestGunzip, PackageStep, package_steps, parse_apk_gunzip

LOADCOST_FILE = "loadcost.csv"
PACKAGES_FILE = "loadcost_packages.csv"
#: Bootstrap resamples and seed (fixed: the same data give the same intervals on every machine).
RESAMPLES = 2000
SEED = 20240611
#: The seed's claim: Firefox adds 200-400 MB to decompress at every boot (MB = 10^6 bytes).
FIREFOX_MB: tuple[float, float] = (200.0, 400.0)
X_METRIC = "installed_size_mib"
TIME_METRIC = "alpine_package_load_s"
RAM_METRIC = "root_tmpfs_used_mib"
GUNZIP_METRIC = "guest_gunzip_mib_s"
#: a boot whose install dropped world packages (apk's APK_FORCE_BROKEN_WORLD at a diskless boot) loaded less
#: than its set: an incomplete install, never a point of the fit (labkit.measure.metrics, packages_missing)
INCOMPLETE_METRICS = ("packages_missing", "apk_install_errors")
POINT_METRICS = (X_METRIC, "compressed_size_mib", "package_count", TIME_METRIC, RAM_METRIC, "ram_used_mib",
                 "shmem_mib", GUNZIP_METRIC, *INCOMPLETE_METRICS)
#: Packages at least this large show how the per-MiB cost varies with content (LoadCost.content_rates).
LARGE_PACKAGE_MIB = 10.0
#: Columns loadcost.csv carries per row besides the results table's: the set and the boot's host load.
HOST_COLUMNS = ("host_contended", "host_other_cpu", "host_qemu_wait")


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


# -- robust fit -------------------------------------------------------------------------------------
def weighted_theil_sen(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept): the median of the pairwise slopes weighted by ``|x_j − x_i|`` (Sievers 1978;
    the slope of rank regression with Wilcoxon scores), intercept = median of ``y − slope · x``.

    Robust to outlying ``y`` (a package slowed by a burst of host load moves it little); unlike plain
    Theil–Sen it does not let the many pairs of tiny packages, whose slopes are mostly noise, outvote the
    few large ones. NaN when fewer than two distinct ``x``."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xs.size < 2:
        return (float("nan"), float("nan"))
    i, j = np.triu_indices(xs.size, 1)
    dx = xs[j] - xs[i]
    ok = dx != 0
    if not ok.any():
        return (float("nan"), float("nan"))
    slopes = (ys[j] - ys[i])[ok] / dx[ok]
    w = np.abs(dx[ok])
    order = np.argsort(slopes, kind="stable")
    cw = np.cumsum(w[order])
    k = int(np.searchsorted(cw, 0.5 * cw[-1]))
    slope = float(slopes[order][k])
    return (slope, float(np.median(ys - slope * xs)))


@dataclass(frozen=True)
class PackageModel:
    """``seconds = c + Σ_p (a + b · MiB_p)`` with 95 % intervals (see :func:`fit_packages`)."""

    n_packages: int  # per-package points used
    n_boots: int
    b: float  # s per MiB installed
    b_ci: tuple[float, float]
    a: float  # s per package
    a_ci: tuple[float, float]
    c: float  # s per boot outside the package lines
    c_ci: tuple[float, float]
    b_from: str  # which boots b and its interval come from, and how
    b_per_boot: tuple[float, ...] = ()  # b of each boot of the largest set
    basis: str = "seconds"  # seconds (wall, guest clock) | cpu_seconds (QEMU's CPU time per package)

    @property
    def basis_text(self) -> str:
        return ("QEMU's CPU time per package (equal to the wall time on a quiet host; on a busy one the time QEMU "
                "waited for a CPU is left out, a shared CPU's slower execution is not)" if self.basis == "cpu_seconds"
                else "wall time per package (guest clock, host load included)")

    def extra(self, mib: float, packages: int = 0) -> tuple[float, float, float]:
        """(estimate, low, high) of the time ``mib`` MiB more (in ``packages`` more packages) adds."""
        fixed = self.a * packages
        return (self.b * mib + fixed, self.b_ci[0] * mib + fixed, self.b_ci[1] * mib + fixed)

    @property
    def rate_mib_s(self) -> float:
        return 1.0 / self.b if self.b > 0 else float("nan")


def _percentile_ci(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(v, [0.025, 0.975])
    return (float(lo), float(hi))


def fit_packages(packages: pd.DataFrame, boots: pd.DataFrame, *, resamples: int = RESAMPLES,
                 seed: int = SEED, y: str = "seconds") -> PackageModel:
    """Fit the package model on ``packages`` (columns package_set, boot, mib and ``y``: ``seconds``, the wall
    time, or ``cpu_seconds``, QEMU's CPU time) and ``boots`` (columns package_set, boot, alpine_package_load_s).

    - ``b`` (s/MiB) is what the largest set's boots say — they hold every size, up to the largest packages:
      :func:`weighted_theil_sen` on each boot's packages, then the mean over those boots with a Student-t
      95 % interval (n − 1 degrees of freedom): with a handful of boots, a percentile bootstrap over boots
      would under-cover (the range of 3 draws is a 75 % interval). With a single such boot, its packages
      are bootstrapped instead (percentile interval), which also takes in how the cost varies with content.
    - ``a`` (s/package) = the median over every package of ``seconds − b · MiB``; interval: bootstrap of the
      packages.
    - ``c`` (s/boot) = the median over boots of the total load minus its package lines; interval: bootstrap
      of the boots.
    """
    from scipy.stats import t as student_t

    pk = packages.dropna(subset=["mib", y]).copy()
    pk["seconds"] = pk[y]
    if len(pk) < 3 or pk["mib"].nunique() < 2:
        raise LoadCostError(
            f"the per-package fit needs >= 3 timed packages of >= 2 sizes (have {len(pk)})",
            "boot the Alpine-style guest with package sets that hold several packages (--load-sets)",
        )
    rng = np.random.default_rng(seed)
    sums = pk.groupby("package_set")["mib"].sum() / pk.groupby("package_set")["boot"].nunique()
    top = str(sums.idxmax())
    per_boot = [(float(k), g["mib"].to_numpy(float), g["seconds"].to_numpy(float))
                for k, g in pk[pk["package_set"] == top].groupby("boot")]
    bj = np.array([weighted_theil_sen(bx, by)[0] for _, bx, by in per_boot])
    bj = bj[np.isfinite(bj)]
    if bj.size >= 2:
        b = float(bj.mean())
        half = float(student_t.ppf(0.975, bj.size - 1) * bj.std(ddof=1) / math.sqrt(bj.size))
        b_ci = (b - half, b + half)
        how = f"set {top}: mean of {bj.size} boots, Student-t interval"
    else:
        _, bx, by = per_boot[0]
        b = weighted_theil_sen(bx, by)[0]
        samples = np.empty(resamples)
        for r in range(resamples):
            idx = rng.integers(0, bx.size, bx.size)
            samples[r] = weighted_theil_sen(bx[idx], by[idx])[0]
        b_ci = _percentile_ci(samples)
        how = f"set {top}: 1 boot, its packages bootstrapped"
    rest = pk["seconds"].to_numpy(float) - b * pk["mib"].to_numpy(float)
    a = float(np.median(rest))
    a_ci = _percentile_ci(np.array([np.median(rest[rng.integers(0, rest.size, rest.size)])
                                    for _ in range(resamples)]))
    lines = pk.groupby(["package_set", "boot"])["seconds"].sum()
    totals = boots.set_index(["package_set", "boot"])[TIME_METRIC] if len(boots) and y == "seconds" \
        else pd.Series(dtype=float)  # the boot totals are wall time (kmsg): c only on that basis
    outside = np.array([float(totals.get(k, np.nan)) - float(v) for k, v in lines.items()])
    outside = outside[np.isfinite(outside)]
    c = float(np.median(outside)) if outside.size else float("nan")
    c_ci = _percentile_ci(np.array([np.median(outside[rng.integers(0, outside.size, outside.size)])
                                    for _ in range(resamples)])) if outside.size else (float("nan"), float("nan"))
    return PackageModel(len(pk), int(lines.size), b, b_ci, a, a_ci, c, c_ci, how, tuple(float(v) for v in bj), y)


# -- data -------------------------------------------------------------------------------------------
def package_rows(bundle: Bundle, serial: Sequence[SerialLine] = (),
                 cpu_marks: Sequence[tuple[float, float]] = ()) -> list[dict[str, object]]:
    """One boot's per-package points: the kernel log's ``(i/n) Installing`` lines (guest clock) when the
    bundle's dmesg has them, else the serial console's (host clock, lines before the bundle); sizes from
    the bundle's apk_installed (I:, S:). With ``cpu_marks`` (QEMU's CPU seconds as the serial lines came,
    :meth:`labkit.measure.hostload.HostLoadSampler.mark`), each package also gets ``cpu_seconds``: QEMU's CPU
    time between its console line and the next. Packages without a size or an end time are left out."""
    console: list[PackageStep] = []
    if serial:
        before: list[tuple[float, str]] = []
        for line in serial:
            if "@@LABKIT-BUNDLE-BEGIN" in line.text:
                break
            before.append((line.t, line.text))
        console = package_steps(before)
    source = "kmsg"
    steps = package_steps(parse_dmesg(bundle.sections["dmesg"])) if "dmesg" in bundle.sections else []
    if not steps:
        source, steps = "serial", console
    if not steps or "apk_installed" not in bundle.sections:
        return []
    cpu = _cpu_seconds(console, cpu_marks)
    sizes = {p.name: p for p in parse_apk_installed(bundle.sections["apk_installed"])}
    out: list[dict[str, object]] = []
    for s in steps:
        p = sizes.get(s.name)
        if p is None or p.installed_size is None or not math.isfinite(s.seconds):
            continue
        out.append({"index": s.index, "total": s.total, "name": s.name, "version": s.version,
                    "installed_bytes": p.installed_size, "compressed_bytes": p.size, "mib": p.installed_size / 1024**2,
                    "seconds": s.seconds, "source": source, "cpu_seconds": cpu.get(s.index, float("nan"))})
    return out


def _cpu_seconds(console: Sequence[PackageStep], marks: Sequence[tuple[float, float]]) -> dict[int, float]:
    """{package index: QEMU CPU seconds between its console line and the next}, from marks taken as the
    lines arrived (the mark at or just before each line's time)."""
    if not console or not marks:
        return {}
    ts = np.array([t for t, _ in marks])
    cs = np.array([c for _, c in marks])

    def at(t: float) -> float:
        i = int(np.searchsorted(ts, t + 1e-6, side="right")) - 1
        return float(cs[i]) if i >= 0 else float("nan")

    return {s.index: at(s.end) - at(s.start) for s in console if math.isfinite(s.end)}


def guest_gunzip(bundle: Bundle) -> GuestGunzip | None:
    """The probe's ``apk_gunzip`` section of a bundle (None when absent)."""
    return parse_apk_gunzip(bundle.sections["apk_gunzip"]) if "apk_gunzip" in bundle.sections else None


def points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Wide table of load-cost boots: one row per (package_set, boot), one column per metric, and the
    boot's host load (``host_contended``: bool, ``host_other_cpu``: cores) when recorded, and where its probe
    ran (``probe_stage``) when recorded."""
    stage = ["probe_stage"] if "probe_stage" in df.columns else []
    cols = ["package_set", "boot", *POINT_METRICS, *HOST_COLUMNS, *stage]
    if df.empty:
        return pd.DataFrame(columns=cols)
    sub = df[df["metric"].isin(POINT_METRICS) & ~df["warmup"].astype(bool)]
    wide = sub.pivot_table(index=["package_set", "boot"], columns="metric", values="value", aggfunc="first")
    wide = wide.reindex(columns=list(POINT_METRICS)).reset_index()
    wide.columns.name = None
    host = [c for c in (*HOST_COLUMNS, *stage) if c in df.columns]
    if host:
        per_boot = df.drop_duplicates(["package_set", "boot"]).set_index(["package_set", "boot"])[host]
        wide = wide.join(per_boot, on=["package_set", "boot"])
    for c in HOST_COLUMNS:
        if c not in wide.columns:
            wide[c] = False if c == "host_contended" else np.nan
    wide["host_contended"] = wide["host_contended"].map(_truthy)
    return wide.sort_values([X_METRIC, "boot"]).reset_index(drop=True)[cols]


def _truthy(v: object) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes")


def incomplete(points: pd.DataFrame) -> pd.Series:
    """True for the boots whose install was incomplete (world packages missing, or apk's errors warning)."""
    flags = pd.Series(False, index=points.index)
    for c in INCOMPLETE_METRICS:
        if c in points.columns:
            flags |= points[c].fillna(0) > 0
    return flags


def select_boots(points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(used, left out): a boot with an incomplete install is always left out (it loaded less than its set);
    a set's boots taken under host contention are left out when the same set has a boot on a quiet host; a
    set booted only under contention keeps its boots (the report says so)."""
    keep = []
    for _, g in points[~incomplete(points)].groupby("package_set", sort=False):
        quiet = g[~g["host_contended"]]
        keep.append(quiet if len(quiet) else g)
    used = pd.concat(keep) if keep else points.iloc[0:0]
    left = points.drop(used.index)
    return used.sort_values([X_METRIC, "boot"]), left


@dataclass(frozen=True)
class LoadCost:
    points: pd.DataFrame  # every load-cost boot (used and left out)
    time_fit: LinearFit  # boot totals, least squares (cross-check; the fallback without package lines)
    ram_fit: LinearFit | None
    packages: pd.DataFrame = field(default_factory=pd.DataFrame)  # the per-package points used
    #: the headline: on QEMU's CPU time per package when every package has it (on a quiet host it equals the
    #: wall time; on a busy one it leaves out the time QEMU waited for a CPU), else on wall time
    model: PackageModel | None = None
    left_out: pd.DataFrame = field(default_factory=pd.DataFrame)  # contended boots left out of the fits
    wall_model: PackageModel | None = None  # the same fit on wall time (the guest's clock, host load included)

    @property
    def used(self) -> pd.DataFrame:
        return self.points.drop(self.left_out.index) if len(self.left_out) else self.points

    def content_rates(self) -> tuple[float, float]:
        """(lowest, highest) per-MiB cost of the large packages measured (>= LARGE_PACKAGE_MIB, fixed cost
        ``a`` taken off; median over boots per package): how much the content alone moves the cost."""
        if self.model is None or self.packages.empty:
            return (float("nan"), float("nan"))
        big = self.packages[self.packages["mib"] >= LARGE_PACKAGE_MIB]
        if big.empty:
            return (float("nan"), float("nan"))
        rates = ((big[self.model.basis] - self.model.a) / big["mib"]).groupby(big["name"]).median()
        return (float(rates.min()), float(rates.max()))

    @property
    def measured_range_mib(self) -> tuple[float, float]:
        x = self.used[X_METRIC]
        return (float(x.min()), float(x.max()))

    @property
    def contended_used(self) -> pd.DataFrame:
        """Boots in the fits that ran while the host was busy."""
        return self.used[self.used["host_contended"]]

    def firefox(self) -> pd.DataFrame:
        """Predicted extra load time and RAM for the seed's 200-400 MB of Firefox.

        ``extra_load_s`` = b · MiB from the package model (the per-MiB cost; each package Firefox adds costs
        ``a`` more), with its 95 % interval, on QEMU's CPU time when it was marked (``basis`` says which;
        ``extra_load_wall_s`` is the same on the guest's wall clock); without per-package points, the slope of
        the boot totals (as before). ``extra_load_s_content_low/high``: the same MiB at the lowest and highest per-MiB
        cost of the large packages measured (content, not measurement, uncertainty). ``load_s`` is the
        boot-total fit at that installed size. ``extrapolated``: the size lies beyond the largest measured set."""
        hi_mib = self.measured_range_mib[1]
        rows = []
        for mb in FIREFOX_MB:
            mib = mb * 1e6 / 1024**2
            t, tlo, thi = self.time_fit.predict(mib)
            if self.model is not None:
                e, elo, ehi = self.model.extra(mib)
                how = "package model (b · MiB)"
            else:
                e = self.time_fit.slope * mib
                elo, ehi = (self.time_fit.slope_ci[0] * mib, self.time_fit.slope_ci[1] * mib)
                how = "boot totals (slope · MiB)"
            rlo, rhi = self.content_rates()
            row: dict[str, float | str | bool] = {
                "case": f"Firefox {mb:.0f} MB", "installed_mib": mib,
                "extra_load_s": e, "extra_load_s_low": elo, "extra_load_s_high": ehi,
                "ci_half_width_pct": 100.0 * (ehi - elo) / 2.0 / e if e > 0 else float("nan"),
                "extra_load_s_content_low": rlo * mib, "extra_load_s_content_high": rhi * mib,
                "basis": self.model.basis_text if self.model is not None else "wall time (boot totals)",
                "extra_load_s_boot_totals": self.time_fit.slope * mib,
                "load_s": t, "load_s_low": tlo, "load_s_high": thi,
                "from": how, "measured_max_mib": hi_mib, "extrapolated": bool(mib > hi_mib),
            }
            if self.wall_model is not None and self.wall_model is not self.model:
                w, wlo, whi = self.wall_model.extra(mib)
                row.update({"extra_load_wall_s": w, "extra_load_wall_s_low": wlo, "extra_load_wall_s_high": whi})
            if self.ram_fit is not None:
                r = self.ram_fit.predict(mib)[0]
                row.update({"extra_ram_mib": self.ram_fit.slope * mib,
                            "extra_ram_mib_low": self.ram_fit.slope_ci[0] * mib,
                            "extra_ram_mib_high": self.ram_fit.slope_ci[1] * mib, "ram_mib": r})
            rows.append(row)
        return pd.DataFrame(rows)

    @property
    def rate_mib_s(self) -> float:
        """Marginal load rate: installed MiB per second of package load (1 / b, else 1 / the boot slope)."""
        if self.model is not None:
            return self.model.rate_mib_s
        return 1.0 / self.time_fit.slope if self.time_fit.slope > 0 else float("nan")

    def fits_table(self) -> pd.DataFrame:
        rows = []
        models = [m for m in (self.model, self.wall_model) if m is not None]
        for m in dict.fromkeys(models):
            basis = "QEMU CPU s" if m.basis == "cpu_seconds" else "wall s"
            for name, est, (lo, hi), unit, how in (
                    ("b: per MiB installed", m.b, m.b_ci, "s/MiB", f"weighted Theil-Sen per boot; {m.b_from}"),
                    ("a: per package", m.a, m.a_ci, "s", "median of seconds - b x MiB; bootstrap of the packages"),
                    ("c: per boot, outside the package lines", m.c, m.c_ci, "s",
                     "median over boots of the total minus its package lines; bootstrap of the boots")):
                rows.append({"fit": f"package model, {basis} ({how})", "term": name,
                             "estimate": est, "ci_low": lo, "ci_high": hi, "unit": unit, "n": m.n_packages,
                             "boots": m.n_boots, "r2": float("nan")})
        for f in (self.time_fit, self.ram_fit):
            if f is None:
                continue
            lo, hi = f.slope_ci
            rows.append({"fit": f"{f.y_name} vs {f.x_name} (least squares, boot totals)", "term": "slope",
                         "estimate": f.slope, "ci_low": lo, "ci_high": hi,
                         "unit": "s/MiB" if f.y_name == TIME_METRIC else "MiB/MiB", "n": f.n, "boots": f.n,
                         "r2": f.r2})
            rows.append({"fit": f"{f.y_name} vs {f.x_name} (least squares, boot totals)", "term": "intercept",
                         "estimate": f.intercept, "ci_low": f.intercept - f.t95 * f.se_intercept,
                         "ci_high": f.intercept + f.t95 * f.se_intercept,
                         "unit": "s" if f.y_name == TIME_METRIC else "MiB", "n": f.n, "boots": f.n, "r2": f.r2})
        return pd.DataFrame(rows, columns=["fit", "term", "estimate", "ci_low", "ci_high", "unit", "n", "boots",
                                           "r2"])


def analyse(df: pd.DataFrame, packages: pd.DataFrame | None = None, *, resamples: int = RESAMPLES) -> LoadCost:
    """Fit the load cost from the load-cost rows (and, when given, their per-package points)."""
    pts = points_table(df)
    if pts.empty:
        raise LoadCostError("no load-cost boots", "run the lab with --load-cost")
    used, left = select_boots(pts)
    tf = fit_line(used[X_METRIC], used[TIME_METRIC], x_name=X_METRIC, y_name=TIME_METRIC)
    try:
        rf: LinearFit | None = fit_line(used[X_METRIC], used[RAM_METRIC], x_name=X_METRIC, y_name=RAM_METRIC)
    except LoadCostError:
        rf = None
    model = wall = None
    pk = pd.DataFrame()
    if packages is not None and len(packages):
        keys = set(zip(used["package_set"], used["boot"], strict=True))
        pk = packages[[k in keys for k in zip(packages["package_set"], packages["boot"], strict=True)]]
        if len(pk):
            try:
                model = wall = fit_packages(pk, used, resamples=resamples)
                if "cpu_seconds" in pk.columns and pk["cpu_seconds"].notna().all():
                    model = fit_packages(pk, used, resamples=resamples, y="cpu_seconds")
            except LoadCostError:
                model = wall = None
    if packages is not None and len(packages) and "cpu_seconds" in packages.columns:
        sums = packages.groupby(["package_set", "boot"])[["cpu_seconds", "seconds"]].sum(min_count=1)
        share = (sums["cpu_seconds"] / sums["seconds"]).rename("cpu_over_wall")
        pts = pts.join(share, on=["package_set", "boot"])
    return LoadCost(pts, tf, rf, pk.reset_index(drop=True), model, left, wall)


def load_loadcost(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype={"package_set": str, "os": str, "metric": str})
    df["warmup"] = df["warmup"].astype(str).str.lower() == "true"
    if "host_contended" in df.columns:
        df["host_contended"] = df["host_contended"].map(_truthy)
    return df


def load_packages(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"package_set": str, "name": str, "version": str, "source": str})


def write_loadcost_csv(rows: Iterable[Mapping[str, object]], path: Path) -> Path:
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
    zstd_files: int = 0  # zstd is timed on the files that fit in ZSTD_SAMPLE_BYTES of data (recompressing
    zstd_uncompressed_bytes: int = 0  # all of a 400 MiB set costs more than the measurement is worth)

    @property
    def gzip_mib_s(self) -> float:
        return self.uncompressed_bytes / 1024**2 / self.gzip_s

    @property
    def zstd_mib_s(self) -> float | None:
        return None if not self.zstd_s else self.zstd_uncompressed_bytes / 1024**2 / self.zstd_s

    def record(self) -> dict[str, object]:
        d: dict[str, object] = asdict(self)
        d.update(gzip_mib_s=self.gzip_mib_s, zstd_mib_s=self.zstd_mib_s)
        return d


#: Uncompressed bytes the host's zstd figure is measured on (the first files of the set, in order).
ZSTD_SAMPLE_BYTES = 64 * 1024**2


def gzip_isize(path: Path) -> int:
    """The uncompressed size a gzip file's trailer records (RFC 1952 ISIZE, of its last member, mod 2^32)."""
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        return int.from_bytes(fh.read(4), "little")


def decompression_throughput(runner: Runner, apks: Sequence[Path], work: Path, *, repeats: int = 2) -> Throughput:
    """Decompress the same .apk payloads on the host, as context for the guest's own rate: ``gzip -t`` of
    every file (its own gzip stream; sizes from the trailers) and ``zstd -t`` of the tar data of the files
    that fit in ZSTD_SAMPLE_BYTES, recompressed at zstd's default level; best of ``repeats`` (the limit, not the
    typical). Both test modes decompress fully and discard the output."""
    if not apks:
        raise LoadCostError("no .apk files to measure decompression on", "build the Alpine-style guest first")
    work.mkdir(parents=True, exist_ok=True)
    raw_total = sum(gzip_isize(a) for a in apks)
    tars: list[Path] = []
    sample = 0
    for i, apk in enumerate(apks):
        if sample + gzip_isize(apk) > ZSTD_SAMPLE_BYTES:
            continue  # the sample: the files, in order, that fit under the cap (chromium alone is ~300 MB)
        data = gzip.decompress(apk.read_bytes())
        sample += len(data)
        tar = work / f"{i:03d}.tar"
        tar.write_bytes(data)
        tars.append(tar)
    with runner.step("host decompression (gzip -t, zstd -t): context for the guest's own rate"):
        gz = min(runner.run(["gzip", "-t", *map(str, apks)]).duration_s for _ in range(repeats))
        zs: float | None = None
        if shutil.which("zstd"):
            runner.run(["zstd", "-q", "-f", *map(str, tars)])
            zst = [t.with_name(t.name + ".zst") for t in tars]
            zs = min(runner.run(["zstd", "-t", "-q", *map(str, zst)]).duration_s for _ in range(repeats))
    shutil.rmtree(work, ignore_errors=True)
    compressed = sum(a.stat().st_size for a in apks)
    return Throughput(len(apks), compressed, raw_total, gz, zs, len(tars), sample)
