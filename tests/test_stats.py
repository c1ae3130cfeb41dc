"""Statistics (labkit.measure.stats), the load-cost fit (labkit.measure.loadcost) and the package-set mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from labkit.core import pkgsets
from labkit.core.runner import Mode, Runner
from labkit.measure.loadcost import LoadCostError, analyse, decompression_throughput, fit_line
from labkit.measure.stats import (
    compare_systems,
    mann_whitney,
    needs_more_boots,
    outlier_mask,
    outliers_table,
    relative_spread,
)
from labkit.systems.alpine import apkindex


def test_outliers_by_mad() -> None:
    v = [10.0, 10.2, 9.9, 10.1, 10.0, 14.0]
    assert outlier_mask(v).tolist() == [False] * 5 + [True]
    assert not outlier_mask([1.0, 2.0]).any()  # too few to judge
    assert outlier_mask([5.0, 5.0, 5.0, 6.0]).tolist() == [False, False, False, True]  # MAD = 0


def test_adaptive_repetition_rule() -> None:
    tight = {"a": [10.0, 10.1, 9.95], "b": [12.0, 12.1, 12.05]}
    wide = {"a": [10.0, 13.0, 8.0], "b": [12.0, 12.1, 12.05]}
    assert relative_spread(wide["a"]) > 0.05
    assert not needs_more_boots(tight, done=3, cap=5)
    assert needs_more_boots(wide, done=3, cap=5)
    assert not needs_more_boots(wide, done=5, cap=5)  # the cap wins
    assert needs_more_boots({"a": [10.0]}, done=1, cap=3)  # fewer than 3 values


def test_mann_whitney_and_cliffs_delta() -> None:
    c = mann_whitney([1, 2, 3, 4], [5, 6, 7, 8], names=("x", "y"))
    assert c.cliffs_delta == -1.0 and c.magnitude == "large" and c.p_value == pytest.approx(0.0286, abs=1e-3)
    same = mann_whitney([1, 2, 3], [1, 2, 3])
    assert same.cliffs_delta == 0.0 and same.magnitude == "negligible"
    empty = mann_whitney([], [1.0])
    assert np.isnan(empty.p_value) and empty.magnitude == "n/a"


def _results(rows: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": "r", "os": o, "guest": "rehearsal", "boot": b, "warmup": b == 0, "accel": "tcg",
                          "metric": m, "value": v, "unit": "s", "source": "t"} for o, b, m, v in rows])


def test_compare_systems_skips_metrics_that_do_not_apply_and_excludes_warmup() -> None:
    rows = [(o, b, "kernel_s", base + b * 0.01) for o, base in (("alpine-rehearsal", 3.0), ("nixos-rehearsal", 2.0))
            for b in range(4)]
    rows += [("alpine-rehearsal", b, "alpine_package_load_s", 2.5) for b in range(4)]
    rows += [("alpine-rehearsal", 0, "total_to_probe_s", 99.0)]  # warm-up only: n = 0 when measured
    t = compare_systems(_results(rows), "alpine-rehearsal", "nixos-rehearsal")
    assert "alpine_package_load_s" not in set(t["metric"])
    k = t[t["metric"] == "kernel_s"].iloc[0]
    assert k["n_a"] == 3 and k["cliffs_delta"] == 1.0
    tot = t[t["metric"] == "total_to_probe_s"].iloc[0]
    assert tot["n_a"] == 0 and np.isnan(tot["p_value"])  # missing, never 0
    assert outliers_table(_results(rows)).empty


def test_fit_line_recovers_slope_with_ci() -> None:
    x = np.array([6.0, 6.0, 29.0, 29.0, 66.0, 66.0])
    y = 0.3 + 0.05 * x + np.array([0.01, -0.01, 0.02, -0.02, 0.01, -0.01])
    f = fit_line(x, y, x_name="installed_size_mib", y_name="alpine_package_load_s")
    lo, hi = f.slope_ci
    assert lo < 0.05 < hi and f.r2 > 0.99 and f.n == 6
    yhat, plo, phi = f.predict(300.0)
    assert plo < yhat < phi and yhat == pytest.approx(0.3 + 15.0, rel=0.01)
    with pytest.raises(LoadCostError, match=">= 3 points"):
        fit_line([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(LoadCostError, match=">= 2 sizes"):
        fit_line([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])


def test_analyse_and_firefox_prediction() -> None:
    rows = []
    for k, (name, size) in enumerate((("small", 6.0), ("medium", 29.0), ("large", 66.0))):
        for b in range(2):
            for metric, value in (("installed_size_mib", size), ("alpine_package_load_s", 0.2 + 0.08 * size + 0.01 * b),
                                  ("root_tmpfs_used_mib", 1.0 + 1.02 * size)):
                rows.append({"run_id": "r", "os": "alpine-rehearsal", "boot": 10 * k + b, "warmup": False,
                             "metric": metric, "value": value, "package_set": name})
    lc = analyse(pd.DataFrame(rows))
    assert lc.time_fit.slope == pytest.approx(0.08, rel=0.01) and lc.ram_fit is not None
    ff = lc.firefox()
    assert list(ff["case"]) == ["Firefox 200 MB", "Firefox 400 MB"]
    assert ff["extra_load_s"].iloc[0] == pytest.approx(0.08 * 200e6 / 2**20, rel=0.01)
    assert ff["extra_ram_mib"].iloc[1] == pytest.approx(1.02 * 400e6 / 2**20, rel=0.01)
    assert lc.rate_mib_s == pytest.approx(12.5, rel=0.01)


def test_decompression_throughput_on_real_gzip(tmp_path: Path) -> None:
    import gzip

    apk = tmp_path / "a.apk"
    apk.write_bytes(gzip.compress(b"labkit " * 200000))
    t = decompression_throughput(Runner(Mode.APPLY, None, progress=None), [apk], tmp_path / "w", repeats=1)
    assert t.uncompressed_bytes == 1400000 and t.gzip_mib_s > 0
    assert t.zstd_mib_s is None or t.zstd_mib_s > 0


def test_package_sets_declared_once_and_mapped() -> None:
    desktop = pkgsets.package_set("desktop")
    assert set(desktop.nixpkgs) == {"icewm", "pcmanfm", "sylpheed", "dillo"}
    assert desktop.alpine[0] == "alpine-base" and "sylpheed" in desktop.alpine
    # the Alpine predictor reads the same table
    assert apkindex.package_set("desktop") == desktop.alpine
    assert "firefox" in pkgsets.package_set("firefox").nixos_snippet()
    # every name the settings accept is a set of the table, and every set has a rehearsal payload
    from labkit.core.settings import meta

    assert set(meta("package_set").choices) == set(pkgsets.PACKAGE_SET_NAMES)
    assert all(isinstance(s.rehearsal, tuple) for s in pkgsets.SETS.values())
