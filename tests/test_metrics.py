"""Metrics from bundles, the tidy results table, its summary, and the environment capture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import synth

from labkit.measure.bundle import BundleError, SerialLine, extract_bundles, format_bundle, parse_bundle_text
from labkit.measure.environment import (
    PACKAGES,
    capture_environment,
    flatten,
    guest_kernels,
    load_environment,
    write_environment,
)
from labkit.measure.metrics import METRICS, PHASES, metrics_from_bundle
from labkit.measure.results import (
    COLUMNS,
    ResultRow,
    bootstrap_median_ci,
    load_results,
    per_boot_table,
    rows_from_bundle,
    summarize,
    write_results_csv,
)


def _bundle(os_id: str, sections: dict[str, str], t_begin: float = 11.9):
    guest = "rehearsal" if os_id.endswith("-rehearsal") else "real"
    (b,) = extract_bundles(synth.serial_log(synth.bundle_lines(os_id, guest, sections), t_begin=t_begin))
    return b


def _values(metrics) -> dict[str, float]:
    return {m.name: m.value for m in metrics}


def test_metric_table_defined_once() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for required in ("firmware_loaders_s", "kernel_s", "initramfs_s", "alpine_package_load_s",
                     "userspace_to_probe_s", "total_to_probe_s", "ram_used_mib", "shmem_mib",
                     "root_tmpfs_used_mib", "mem_total_mib"):
        assert required in names
    assert PHASES == ("firmware_loaders_s", "kernel_s", "initramfs_s", "userspace_to_probe_s")
    assert all(m.definition and m.unit and m.source for m in METRICS)


def test_alpine_rehearsal_metrics() -> None:
    v = _values(metrics_from_bundle(_bundle("alpine-rehearsal", synth.alpine_sections(7.12)), qemu_t0=0.0))
    assert v["total_to_probe_s"] == pytest.approx(11.9)
    assert v["firmware_loaders_s"] == pytest.approx(11.9 - 7.12)
    assert v["kernel_s"] == pytest.approx(2.356789)
    assert v["initramfs_s"] == pytest.approx(5.3 - 2.356789)
    assert v["userspace_to_probe_s"] == pytest.approx(7.12 - 5.3)
    assert v["alpine_package_load_s"] == pytest.approx(1.75)
    assert v["mem_total_mib"] == pytest.approx(492304 / 1024)
    assert v["ram_used_mib"] == pytest.approx((492304 - 431120) / 1024)
    assert v["shmem_mib"] == pytest.approx(18234 / 1024)
    assert v["root_tmpfs_used_mib"] == pytest.approx(18234 / 1024)
    # the phases add up to the host total (same clock anchor: kernel start)
    assert sum(v[p] for p in PHASES) == pytest.approx(v["total_to_probe_s"])


def test_qemu_t0_offset() -> None:
    v = _values(metrics_from_bundle(_bundle("alpine-rehearsal", synth.alpine_sections(7.12)), qemu_t0=0.9))
    assert v["total_to_probe_s"] == pytest.approx(11.0)
    assert v["firmware_loaders_s"] == pytest.approx(11.0 - 7.12)


def test_nixos_has_no_package_load_metric_not_zero() -> None:
    v = _values(metrics_from_bundle(_bundle("nixos-rehearsal", synth.nixos_sections())))
    assert "alpine_package_load_s" not in v
    assert v["root_tmpfs_used_mib"] == pytest.approx(30210 / 1024)  # wrapped df line did not confuse /


def test_without_host_time_host_metrics_are_absent() -> None:
    b = parse_bundle_text(format_bundle("alpine-rehearsal", "rehearsal", synth.alpine_sections()))
    v = _values(metrics_from_bundle(b))
    assert "total_to_probe_s" not in v and "firmware_loaders_s" not in v
    assert v["kernel_s"] == pytest.approx(2.356789)


def test_real_alpine_ends_the_initramfs_at_its_last_kmsg_line() -> None:
    """Real Alpine has no rehearsal marker: its initramfs ends at 'Installing packages ...: ok.'."""
    sections = synth.alpine_sections()
    sections["dmesg"] = "\n".join(ln for ln in sections["dmesg"].split("\n") if "labkit-rehearsal" not in ln)
    v = _values(metrics_from_bundle(_bundle("alpine", sections)))
    assert v["initramfs_s"] == pytest.approx(3.5 + 1.75 - 2.356789)
    assert v["userspace_to_probe_s"] == pytest.approx(7.12 - 3.5 - 1.75)
    assert v["alpine_package_load_s"] == pytest.approx(1.75) and "kernel_s" in v
    # a rehearsal guest without its own marker stays missing (its rule is its marker, nothing else)
    v = _values(metrics_from_bundle(_bundle("alpine-rehearsal", sections)))
    assert "initramfs_s" not in v and "userspace_to_probe_s" not in v


def test_incomplete_bundle_is_refused() -> None:
    lines = synth.serial_log(synth.bundle_lines("nixos-rehearsal", "rehearsal", synth.nixos_sections()), t_begin=5)
    (b,) = extract_bundles([ln for ln in lines if "BUNDLE-END" not in ln.text], strict=False)
    with pytest.raises(BundleError, match="not complete"):
        metrics_from_bundle(b)


def test_malformed_section_propagates() -> None:
    sections = synth.nixos_sections()
    sections["meminfo"] = sections["meminfo"].replace("Shmem:", "Shmem")
    with pytest.raises(BundleError, match="section 'meminfo', line 9"):
        metrics_from_bundle(_bundle("nixos-rehearsal", sections))


# -- results table -----------------------------------------------------------------------------------
def _rows(boots: int = 4) -> list[ResultRow]:
    rows: list[ResultRow] = []
    for boot in range(boots):
        rows += rows_from_bundle(_bundle("alpine-rehearsal", synth.alpine_sections(7.0 + 0.1 * boot), 11.9 + boot),
                                 run_id="r1", boot=boot, warmup=boot == 0, accel="tcg")
        rows += rows_from_bundle(_bundle("nixos-rehearsal", synth.nixos_sections(6.0 + 0.1 * boot), 12.0 + boot),
                                 run_id="r1", boot=boot, warmup=boot == 0, accel="tcg")
    return rows


def test_results_csv_round_trip(tmp_path: Path) -> None:
    rows = _rows()
    path = write_results_csv(rows, tmp_path / "results.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]  # no temp file left
    df = load_results(path)
    assert tuple(df.columns) == COLUMNS
    assert len(df) == len(rows)
    assert df["warmup"].dtype == bool and df["boot"].dtype.kind == "i"
    got = df[(df.os == "alpine-rehearsal") & (df.boot == 2) & (df.metric == "kernel_s")]["value"].item()
    assert got == 2.356789  # exact round trip
    assert not ((df.metric == "alpine_package_load_s") & (df.os == "nixos-rehearsal")).any()


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no results table"):
        load_results(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("run_id,os\nx,y\n")
    with pytest.raises(Exception, match="columns missing"):
        load_results(tmp_path / "bad.csv")


def test_summarize_missing_is_nan_never_zero(tmp_path: Path) -> None:
    df = load_results(write_results_csv(_rows(), tmp_path / "results.csv"))
    s = summarize(df)
    assert set(s["os"]) == {"alpine-rehearsal", "nixos-rehearsal"}
    assert len(s) == 2 * len(METRICS)
    nix_pkg = s[(s.os == "nixos-rehearsal") & (s.metric == "alpine_package_load_s")].iloc[0]
    assert nix_pkg["n"] == 0
    for col in ("median", "min", "max", "ci_low", "ci_high"):
        assert math.isnan(nix_pkg[col]), col
    alp = s[(s.os == "alpine-rehearsal") & (s.metric == "userspace_to_probe_s")].iloc[0]
    assert alp["n"] == 3  # warm-up boot 0 excluded
    assert alp["median"] == pytest.approx(7.2 - 5.3)
    assert alp["ci_low"] <= alp["median"] <= alp["ci_high"]
    assert summarize(df, include_warmup=True).set_index(["os", "metric"]).loc[
        ("alpine-rehearsal", "kernel_s"), "n"] == 4
    wide = per_boot_table(df)
    assert math.isnan(wide.loc[("nixos-rehearsal", 1, False), "alpine_package_load_s"])


def test_summarize_is_reproducible(tmp_path: Path) -> None:
    df = load_results(write_results_csv(_rows(6), tmp_path / "results.csv"))
    a, b = summarize(df), summarize(df.sample(frac=1.0, random_state=3))
    pd.testing.assert_frame_equal(a, b)


def test_bootstrap_ci() -> None:
    v = np.array([10.0, 10.5, 11.0, 11.2, 12.0, 30.0])
    lo, hi = bootstrap_median_ci(v)
    assert lo <= float(np.median(v)) <= hi
    assert (lo, hi) == bootstrap_median_ci(v)
    assert all(math.isnan(x) for x in bootstrap_median_ci(np.array([1.0])))


# -- environment --------------------------------------------------------------------------------------
def test_capture_environment(tmp_path: Path) -> None:
    b = _bundle("nixos-rehearsal", synth.nixos_sections())
    env = capture_environment({"target": "lab", "boots": 3}, {"accel": "tcg", "guest_kernel": guest_kernels([b])})
    assert env["params"] == {"target": "lab", "boots": 3}
    assert env["extra"] == {"accel": "tcg"}
    assert env["guest_kernel"] == {"nixos-rehearsal": synth.KERNEL}
    assert set(env["packages"]) == set(PACKAGES)
    assert env["host"]["nproc"] >= 1 and env["python"].startswith("3.")
    assert env["labkit_version"]
    path = write_environment(env, tmp_path)
    assert json.loads(path.read_text()) == load_environment(tmp_path)
    flat = flatten(env)
    assert flat["params.target"] == "lab" and "host.cpu_model" in flat


def test_capture_environment_from_a_root(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU @ 1GHz\n")
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:  2097152 kB\n")
    (tmp_path / "etc" / "debian_version").write_text("12.11\n")
    host = capture_environment({}, {}, root=tmp_path)["host"]
    assert (host["cpu_model"], host["ram_mib"], host["debian_version"]) == ("Test CPU @ 1GHz", 2048, "12.11")


def test_serial_line_is_the_contract_type() -> None:
    from labkit.core import console as serial

    assert SerialLine is serial.SerialLine


def test_ram_is_read_after_the_settle_when_the_probe_waited() -> None:
    """ram_used_mib comes from meminfo_settled when the bundle has it; otherwise from probe start, and the
    row's source says which."""
    from labkit.measure.bundle import format_bundle, parse_bundle_text
    from labkit.measure.metrics import metrics_from_bundle

    base = {"uptime": "5.00 1.00\n", "meminfo": "MemTotal: 1000 kB\nMemAvailable: 800 kB\nShmem: 10 kB\n"}
    early = parse_bundle_text(format_bundle("alpine-rehearsal", "rehearsal", base))
    settled = parse_bundle_text(format_bundle("alpine-rehearsal", "rehearsal", {
        **base, "meminfo_settled": "MemTotal: 1000 kB\nMemAvailable: 700 kB\nShmem: 10 kB\n",
        "uptime_settled": "7.00 2.00\n"}))
    m_early = {m.name: m for m in metrics_from_bundle(early)}
    m_settled = {m.name: m for m in metrics_from_bundle(settled)}
    assert m_early["ram_used_mib"].value == pytest.approx(200 / 1024)
    assert "no settle" in m_early["ram_used_mib"].source
    assert m_settled["ram_used_mib"].value == pytest.approx(300 / 1024)
    assert m_settled["ram_used_mib"].source == "/proc/meminfo after the settle"
    assert m_settled["shmem_mib"].value == pytest.approx(10 / 1024)


def test_probe_in_the_initramfs_has_no_userspace_metrics() -> None:
    """A load-cost boot's probe ran right after the package install (labkit.probe=initramfs): the package load,
    kernel and RAM are measured; the phases after the initramfs, and the total to a booted system, are absent
    with that reason, never computed from the probe's own start."""
    from labkit.measure.metrics import measure_bundle

    sections = {"probe_stage": "initramfs", **synth.alpine_sections(7.12)}
    m = measure_bundle(_bundle("alpine-rehearsal", sections))
    v, why = _values(m.metrics), m.reasons()
    assert v["alpine_package_load_s"] == pytest.approx(1.75) and v["kernel_s"] == pytest.approx(2.356789)
    assert "root_tmpfs_used_mib" in v and "firmware_loaders_s" in v
    for name in ("total_to_probe_s", "initramfs_s", "userspace_to_probe_s", "openrc_boot_s"):
        assert name not in v and "labkit.probe=initramfs" in why[name], name


@pytest.mark.parametrize("text", ["", "userspace", "initramfs\ninitramfs", "initramfs extra"])
def test_probe_stage_is_one_known_word(text: str) -> None:
    from labkit.measure.metrics import measure_bundle

    with pytest.raises(BundleError, match="probe_stage"):
        measure_bundle(_bundle("alpine-rehearsal", {"probe_stage": text, **synth.alpine_sections(7.12)}))
