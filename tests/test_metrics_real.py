"""Metrics on bundles shaped like real NixOS and real Alpine (tests/realshape.py says where each line's shape
comes from): every metric that applies is computed, or reported missing with its reason."""

from __future__ import annotations

import pytest
import realshape

from labkit.measure.metrics import (
    METRICS,
    PHASES,
    applies,
    measure_bundle,
    metrics_from_bundle,
)

GRUB_SCRIPTED = "Startup finished in 5.001s (kernel) + 8.100s (userspace) = 13.101s\n" \
                "multi-user.target reached after 8.050s in userspace."
GRUB_SYSTEMD_INITRD = "Startup finished in 1.512s (kernel) + 2.388s (initrd) + 8.100s (userspace) = 12.000s\n" \
                      "multi-user.target reached after 8.050s in userspace."


def _check_complete(result, os_id: str) -> None:  # type: ignore[no-untyped-def]
    """Each applicable metric exactly once: a value or a reason."""
    have = {m.name for m in result.metrics}
    why = result.reasons()
    want = {m.name for m in METRICS if applies(m.name, os_id)}
    assert have | set(why) == want and not have & set(why)
    assert all(r and r != "no source for it in this bundle" for r in why.values()), why


def test_real_nixos_scripted_stage1() -> None:
    b = realshape.bundle("nixos", realshape.nixos_sections(systemd_time=GRUB_SCRIPTED))
    res = measure_bundle(b)
    _check_complete(res, "nixos")
    v = {m.name: m for m in res.metrics}
    assert v["kernel_s"].value == pytest.approx(1.20)
    # stage 2's first kmsg line ends the initramfs, not systemd's (which follows the activation script)
    assert v["initramfs_s"].value == pytest.approx(3.60 - 1.20)
    assert "booting system configuration" in v["initramfs_s"].source
    assert v["userspace_to_probe_s"].value == pytest.approx(14.20 - 3.60)
    assert sum(v[p].value for p in PHASES) == pytest.approx(v["total_to_probe_s"].value)
    # systemd-analyze: kernel + userspace only (GRUB sets no LoaderTime*, scripted stage 1 has no initrd part)
    assert v["systemd_kernel_s"].value == pytest.approx(5.001) and v["systemd_userspace_s"].value == 8.1
    why = res.reasons()
    assert "GRUB" in why["systemd_firmware_s"] and "LoaderTimeExecUSec" in why["systemd_loader_s"]
    assert "scripted stage 1" in why["systemd_initrd_s"]
    # the closure of /run/current-system from nix path-info, never a store-wide figure
    assert v["closure_size_mib"].value == pytest.approx(1394868224 / 1024**2)
    assert v["package_count"].value == 3 and "alpine_package_load_s" not in v


def test_real_nixos_old_stage2_falls_back_to_systemds_first_line() -> None:
    b = realshape.bundle("nixos", realshape.nixos_sections(systemd_time=GRUB_SCRIPTED, stage2=None))
    v = {m.name: m for m in metrics_from_bundle(b)}
    assert v["initramfs_s"].value == pytest.approx(5.00 - 1.20)
    assert "running in system mode" in v["initramfs_s"].source and "activation" in v["initramfs_s"].source


def test_real_nixos_systemd_stage1() -> None:
    sections = realshape.nixos_sections(systemd_time=GRUB_SYSTEMD_INITRD, stage2=None, systemd_initrd=1.25,
                                        systemd=3.90)
    res = measure_bundle(realshape.bundle("nixos", sections))
    _check_complete(res, "nixos")
    v = {m.name: m for m in res.metrics}
    # the initrd ends when the system's systemd starts: systemd-analyze's kernel + initrd
    assert v["initramfs_s"].value == pytest.approx(1.512 + 2.388 - 1.20)
    assert v["initramfs_s"].source.startswith("systemd-analyze time")
    assert v["systemd_initrd_s"].value == pytest.approx(2.388)
    # without systemd-analyze: the second 'running in system mode', after 'Running in initrd.'
    del sections["systemd_time"]
    res = measure_bundle(realshape.bundle("nixos", sections))
    _check_complete(res, "nixos")
    v = {m.name: m for m in res.metrics}
    assert v["initramfs_s"].value == pytest.approx(3.90 - 1.20)
    assert "systemd-analyze was not on the probe's PATH" in res.reasons()["systemd_kernel_s"]


def test_real_nixos_boot_not_finished_is_missing_not_an_error() -> None:
    sections = realshape.nixos_sections(systemd_time="Bootup is not yet finished "
                                        "(org.freedesktop.systemd1.Manager.FinishTimestampMonotonic=0).\n"
                                        "Please try again later.")
    res = measure_bundle(realshape.bundle("nixos", sections))
    _check_complete(res, "nixos")
    assert "not yet finished" in res.reasons()["systemd_userspace_s"]
    assert {m.name for m in res.metrics} >= set(PHASES)


@pytest.mark.parametrize(("section", "text", "reason"), [
    (None, None, "neither nix nor nix-store"),
    ("nix_path_info", "error: experimental Nix feature 'nix-command' is disabled", "nix path-info failed"),
    ("nix_store_du", "1204\t/nix/store/abc-busybox\n", "whole\n/nix/store".replace("\n", " ")),
])
def test_real_nixos_closure_missing_says_why(section: str | None, text: str | None, reason: str) -> None:
    sections = realshape.nixos_sections(systemd_time=GRUB_SCRIPTED)
    del sections["nix_path_info"]
    if section:
        sections[section] = text  # type: ignore[assignment]
    res = measure_bundle(realshape.bundle("nixos", sections))
    _check_complete(res, "nixos")
    assert reason in res.reasons()["closure_size_mib"]
    assert "closure_size_mib" not in {m.name for m in res.metrics}


def test_nix_warning_lines_do_not_break_the_closure() -> None:
    sections = realshape.nixos_sections(systemd_time=GRUB_SCRIPTED)
    sections["nix_path_info"] = ("warning: the group 'nixbld' specified in 'build-users-group' does not exist\n"
                                 + sections["nix_path_info"])
    v = {m.name: m.value for m in metrics_from_bundle(realshape.bundle("nixos", sections))}
    assert v["package_count"] == 3


def test_real_alpine_diskless() -> None:
    res = measure_bundle(realshape.bundle("alpine", realshape.alpine_sections()))
    _check_complete(res, "alpine")
    v = {m.name: m for m in res.metrics}
    assert v["kernel_s"].value == pytest.approx(1.10)
    # the fixture's messages from 2.0 s, 0.01 s apart; 'Installing packages ...: ok.' 1.5 s after its start line
    end = 2.0 + 7 * 0.01 + 1.5  # the eighth line of the fixture starts the install
    assert v["initramfs_s"].value == pytest.approx(end - 1.10)
    assert "Installing packages to root filesystem: ok." in v["initramfs_s"].source
    assert v["userspace_to_probe_s"].value == pytest.approx(9.40 - end)
    assert v["alpine_package_load_s"].value == pytest.approx(1.5)
    assert v["openrc_boot_s"].value == 3.0  # rc.log: 10:00:04 → 10:00:07
    assert v["package_count"].value == 14 and v["installed_size_mib"].value == pytest.approx(8440 / 1024)
    assert not any(m.name.startswith("systemd_") for m in res.metrics)
    # the minirootfs's world, all installed (the probe keeps p: lines, so a world naming cmd:apk counts too)
    assert v["packages_missing"].value == 0 and v["apk_install_errors"].value == 0
    sections = {**realshape.alpine_sections(), "apk_world": "apk-tools\ncmd:apk\nso:libapk.so.2.14.0\nfirefox\n"}
    lost = {m.name: m for m in measure_bundle(realshape.bundle("alpine", sections)).metrics}["packages_missing"]
    assert lost.value == 1 and lost.source.endswith(": firefox")


def test_real_alpine_missing_reasons() -> None:
    sections = realshape.alpine_sections(rc_log=None)
    sections["dmesg"] = "\n".join(ln for ln in sections["dmesg"].split("\n") if "Installing packages" not in ln)
    res = measure_bundle(realshape.bundle("alpine", sections))
    _check_complete(res, "alpine")
    why = res.reasons()
    assert "did not finish its package install" in why["initramfs_s"]
    assert why["userspace_to_probe_s"] == why["initramfs_s"]
    assert "rc_logger" in why["openrc_boot_s"]
    assert "alpine_package_load_s" in why["alpine_load_cost_s_per_mib"]
    sections["dmesg"] = "\n".join(ln for ln in sections["dmesg"].split("\n") if "Alpine Init" not in ln)
    assert "Alpine's initramfs did not run" in measure_bundle(realshape.bundle("alpine", sections)).reasons()[
        "initramfs_s"]


def test_rc_log_status_on_its_own_line() -> None:
    from labkit.measure.parsers import parse_rc_log

    rc = parse_rc_log(realshape.RC_LOG)
    assert rc.duration_s("boot") == 3.0 and rc.duration_s("default") is None  # default still running
    status = {msg: ok for _, msg, ok in rc.services}
    assert status["Starting hwclock"] is True
    assert status["eth0"] is False  # " [ !! ]" alone on the next line belongs to the service above
