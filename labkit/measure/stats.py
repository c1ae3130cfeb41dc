"""Statistics for repeated boots: median + bootstrap CI, MAD outliers, adaptive repetition,
Mann–Whitney U with effect sizes (Cliff's delta = rank-biserial correlation)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labkit.measure.metrics import METRICS, applies

#: |x − median| / (1.4826 · MAD) above this is an outlier (Iglewicz & Hoaglin's 3.5 on the modified z).
OUTLIER_Z = 3.5
#: Keep booting while MAD/median of the total boot time is above this (and the cap is not reached).
SPREAD_THRESHOLD = 0.05
ADAPTIVE_METRIC = "total_to_probe_s"


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    return v[~np.isnan(v)]


def mad(values: Sequence[float] | np.ndarray) -> float:
    """Median absolute deviation (unscaled); NaN when empty."""
    v = _clean(values)
    return float(np.median(np.abs(v - np.median(v)))) if v.size else float("nan")


def relative_spread(values: Sequence[float] | np.ndarray) -> float:
    """MAD / |median| (NaN for fewer than 2 values or a zero median)."""
    v = _clean(values)
    if v.size < 2:
        return float("nan")
    med = float(np.median(v))
    return float("nan") if med == 0 else mad(v) / abs(med)


def outlier_mask(values: Sequence[float] | np.ndarray, z: float = OUTLIER_Z) -> np.ndarray:
    """True where a value's robust z-score (MAD scaled by 1.4826) exceeds ``z``.

    With MAD = 0 (more than half the values equal) only values different from the median count.
    """
    v = np.asarray(values, dtype=float)
    out = np.zeros(v.shape, dtype=bool)
    ok = ~np.isnan(v)
    if ok.sum() < 3:
        return out
    med = float(np.median(v[ok]))
    m = mad(v[ok]) * 1.4826
    if m == 0:
        out[ok] = v[ok] != med
    else:
        out[ok] = np.abs(v[ok] - med) / m > z
    return out


def more_boots_reason(samples: Mapping[str, Sequence[float]], *, done: int, cap: int,
                      threshold: float = SPREAD_THRESHOLD, minimum: int = 3,
                      contended: Mapping[str, Sequence[bool]] | None = None, patience: int = 2) -> str | None:
    """Why another round of boots is needed, or None: while ``done`` < ``cap``, a system with fewer than
    ``minimum`` values, or whose relative spread is above ``threshold``.

    ``contended[system][k]`` flags ``samples[system][k]`` as taken while the host was busy
    (:mod:`labkit.measure.hostload`). Such values are left out — the round is redone — while the load looks
    transient; when a system's last ``patience`` boots were all contended the load is persistent (more boots
    would not find a quiet host) and every value counts."""
    if done >= cap:
        return None
    for system, values in samples.items():
        flags = list((contended or {}).get(system, ()))
        vals = np.asarray(values, dtype=float)
        if len(flags) == len(vals) and any(flags):
            quiet = vals[~np.asarray(flags, dtype=bool)]
            persistent = len(flags) >= patience and all(flags[-patience:])
            if not persistent and _clean(quiet).size < minimum:
                return f"{system}: {sum(flags)} boot(s) under host load, {_clean(quiet).size} on a quiet host"
            if not persistent:
                vals = quiet
        v = _clean(vals)
        if v.size < minimum:
            return f"{system}: {v.size} value(s), {minimum} wanted"
        spread = relative_spread(v)
        if not np.isnan(spread) and spread > threshold:
            return f"{system}: relative spread {spread:.1%} above {threshold:.0%}"
    return None


def needs_more_boots(samples: Mapping[str, Sequence[float]], *, done: int, cap: int,
                     threshold: float = SPREAD_THRESHOLD, minimum: int = 3,
                     contended: Mapping[str, Sequence[bool]] | None = None) -> bool:
    """Adaptive repetition: another round while :func:`more_boots_reason` gives a reason."""
    return more_boots_reason(samples, done=done, cap=cap, threshold=threshold, minimum=minimum,
                             contended=contended) is not None


@dataclass(frozen=True)
class Comparison:
    metric: str
    a: str
    b: str
    n_a: int
    n_b: int
    median_a: float
    median_b: float
    u: float
    p_value: float
    cliffs_delta: float  # P(a > b) − P(a < b) ∈ [−1, 1]; = rank-biserial correlation
    magnitude: str


def _magnitude(d: float) -> str:
    a = abs(d)
    if np.isnan(a):
        return "n/a"
    # Romano et al. (2006) thresholds for Cliff's delta
    return "negligible" if a < 0.147 else "small" if a < 0.33 else "medium" if a < 0.474 else "large"


def mann_whitney(a: Sequence[float], b: Sequence[float], *, metric: str = "", names: tuple[str, str] = ("a", "b")
                 ) -> Comparison:
    """Two-sided Mann–Whitney U (exact for small samples without ties) and Cliff's delta."""
    from scipy.stats import mannwhitneyu

    x, y = _clean(a), _clean(b)
    nan = float("nan")
    if x.size == 0 or y.size == 0:
        return Comparison(metric, names[0], names[1], int(x.size), int(y.size),
                          float(np.median(x)) if x.size else nan, float(np.median(y)) if y.size else nan,
                          nan, nan, nan, "n/a")
    res = mannwhitneyu(x, y, alternative="two-sided")
    u = float(res.statistic)
    delta = 2.0 * u / (x.size * y.size) - 1.0
    return Comparison(metric, names[0], names[1], int(x.size), int(y.size), float(np.median(x)),
                      float(np.median(y)), u, float(res.pvalue), delta, _magnitude(delta))


def compare_systems(df: pd.DataFrame, a: str, b: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mann–Whitney table between two systems over the metrics both have (warm-up boots excluded)."""
    data = df[~df["warmup"].astype(bool)]
    names = list(metrics) if metrics is not None else [m.name for m in METRICS]
    rows = []
    for metric in names:
        if not (applies(metric, a) and applies(metric, b)):
            continue
        va = data.loc[(data["os"] == a) & (data["metric"] == metric), "value"].to_numpy(dtype=float)
        vb = data.loc[(data["os"] == b) & (data["metric"] == metric), "value"].to_numpy(dtype=float)
        c = mann_whitney(va, vb, metric=metric, names=(a, b))
        rows.append({
            "metric": metric, "a": a, "b": b, "n_a": c.n_a, "n_b": c.n_b, "median_a": c.median_a,
            "median_b": c.median_b, "U": c.u, "p_value": c.p_value, "cliffs_delta": c.cliffs_delta,
            "effect": c.magnitude,
        })
    cols = ["metric", "a", "b", "n_a", "n_b", "median_a", "median_b", "U", "p_value", "cliffs_delta", "effect"]
    return pd.DataFrame(rows, columns=cols)


def outliers_table(df: pd.DataFrame, z: float = OUTLIER_Z) -> pd.DataFrame:
    """Measured boots flagged as outliers per (os, metric) by the MAD rule."""
    data = df[~df["warmup"].astype(bool)]
    rows = []
    for (os_id, metric), g in data.groupby(["os", "metric"]):
        mask = outlier_mask(g["value"].to_numpy(dtype=float), z)
        for (_, r), flag in zip(g.iterrows(), mask, strict=True):
            if flag:
                rows.append({"os": os_id, "metric": metric, "boot": int(r["boot"]), "value": float(r["value"]),
                             "median": float(g["value"].median())})
    return pd.DataFrame(rows, columns=["os", "metric", "boot", "value", "median"])
