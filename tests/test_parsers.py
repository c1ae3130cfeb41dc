"""Parsers on every fixture format (labkit.measure.parsers), bad input naming section and line, and `labkit parse`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import synth
from paths import ALPINE_FIXTURES, NIXOS_FIXTURES

from labkit.cli import main as cli
from labkit.measure.bundle import BundleError, SectionError, extract_bundles
from labkit.measure.metrics import applies, metrics_from_bundle
from labkit.measure.parsers import (
    FormatError,
    detect_format,
    parse_apk_console,
    parse_apk_info_sizes,
    parse_apk_installed,
    parse_apk_world,
    parse_du_k,
    parse_duration,
    parse_free,
    parse_ls_sizes,
    parse_nix_path_info,
    parse_os_release,
    parse_rc_log,
    parse_systemd_blame,
    parse_systemd_critical_chain,
    parse_systemd_time,
    parse_text,
)

ALPINE = ALPINE_FIXTURES
NIXOS = NIXOS_FIXTURES


def _blocks(path: Path) -> list[tuple[str, str]]:
    """``$ command`` blocks of a fixture file: [(command, output), ...]."""
    text = path.read_text(encoding="utf-8")
    out = []
    for block in re.split(r"^\$ ", text, flags=re.M)[1:]:
        cmd, _, body = block.partition("\n")
        out.append((cmd.strip(), re.sub(r"\[rc=\d+\]\s*$", "", body.strip())))
    return out


def test_apk_db_installed_fixture() -> None:
    pkgs = parse_apk_installed((ALPINE / "lib-apk-db-installed").read_text())
    assert len(pkgs) == 14 and pkgs[0].name == "alpine-baselayout" and pkgs[0].version == "3.6.5-r0"
    assert pkgs[0].size == 8515 and pkgs[0].installed_size == 315392
    # the sum of I: is what apk 3 prints as "OK: 8440 KiB in 15 packages" (alpine-base is 0 B)
    assert sum(p.installed_size or 0 for p in pkgs) == 8440 * 1024


def test_apk_console_with_ansi_progress_fixture() -> None:
    text = (ALPINE / "apk-diskless-install-console.txt").read_text(encoding="utf-8")
    first = text.split("Installing packages to root filesystem: ok.")[0]
    assert detect_format(first) == "apk_console"
    r = parse_apk_console(first)
    assert len(r.installs) == 15 and r.installs[0] == (1, 15, "alpine-baselayout-data", "3.6.5-r0")
    assert r.installs[-1][2] == "alpine-base"
    assert r.ok_bytes == 8 * 1024**2 and r.ok_packages == 15
    assert "busybox-1.36.1-r29.post-install" in r.executed and len(r.warnings) == 2
    # apk 3 prints KiB
    assert parse_apk_console("OK: 8440 KiB in 15 packages\n").ok_bytes == 8440 * 1024
    with pytest.raises(SectionError, match=r"line 2"):
        parse_apk_console("(1/2) Installing a (1-r0)\n(2/2) Removing b\n")


def test_apk_info_outputs_fixture() -> None:
    blocks = dict(_blocks(ALPINE / "apk-2.14-outputs.txt"))
    assert parse_apk_info_sizes(blocks["apk info -s busybox"]) == {"busybox-1.36.1-r29": 908 * 1024}
    assert parse_apk_info_sizes(blocks["apk info -s"]) == {}  # no names: no sizes (KNOWLEDGE.md)
    assert parse_apk_info_sizes(blocks["apk info -a busybox"]) == {"busybox-1.36.1-r29": 908 * 1024}
    with pytest.raises(SectionError, match="line 2"):
        parse_apk_info_sizes("busybox-1.36.1-r29 installed size:\nlots\n")


def test_apk_world_and_cache_listing() -> None:
    assert parse_apk_world((ALPINE / "etc-apk-world").read_text())[:2] == ["alpine-baselayout", "alpine-keys"]
    ls = ("/media/vda4/apks/x86_64:\n-rw-r--r--    1 0        0           426809 Jan  1  1970 cpio-2.13.apk\n"
          "-rw-r--r--    1 0        0              312 Jan  1  1970 LABKIT-INDEX\n")
    assert [(f.name, f.size) for f in parse_ls_sizes(ls)] == [("cpio-2.13.apk", 426809)]
    with pytest.raises(SectionError, match="section 'apk_cache', line 1"):
        parse_ls_sizes("garbage here\n")


def test_busybox_free_fixture() -> None:
    blocks = dict(_blocks(ALPINE / "busybox-free-df-meminfo.txt"))
    f = parse_free(blocks["free"])
    assert f.mem["total"] == 24684084 and f.mem["available"] == 24275512 and f.swap["total"] == 0
    assert parse_free(blocks["free -m"]).mem["total"] == 24106
    with pytest.raises(SectionError, match="section 'free', line 2"):
        parse_free("              total        used\nMem:  lots  few\n")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("296ms", 0.296), ("2.584s", 2.584), ("1min 9.608s", 69.608), ("1h 2min 3s", 3723.0), ("45us", 45e-6)],
)
def test_systemd_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_systemd_analyze_fixture_every_block() -> None:
    blocks = _blocks(NIXOS / "systemd-analyze-samples.txt")
    times = [parse_systemd_time(body) for cmd, body in blocks if cmd.startswith("systemd-analyze time")]
    assert [len(t.phases) for t in times] == [1, 3, 4, 5]  # 1 to 5 terms
    assert times[1].total_s == pytest.approx(69.608)  # "= 1min 9.608s"
    assert times[3].phases["loader"] == pytest.approx(0.484) and times[3].target == "extras.target"
    body = dict(blocks)
    blame = parse_systemd_blame(body["systemd-analyze blame"])
    assert blame[0] == ("pmlogger.service", 32.875) and blame[-1][1] == pytest.approx(0.045)
    chain = parse_systemd_critical_chain(body["systemd-analyze critical-chain"])
    assert chain[0].unit == "multi-user.target" and chain[0].active_at_s == 47.82
    assert chain[-1].depth == 5 and chain[-1].took_s == pytest.approx(0.036)
    for cmd, text in blocks:  # detection names each block's format
        assert detect_format(text) == ("nix_path_info" if "path-info" in cmd else
                                       "systemd_" + cmd.split()[1].replace("-", "_")), cmd
    with pytest.raises(SectionError, match="section 'systemd_time', line 1"):
        parse_systemd_time("Startup finished in 2.5 parsecs (kernel) = 2s\n")


def test_nix_path_info_fixture_every_shape() -> None:
    blocks = [(c, b) for c, b in _blocks(NIXOS / "systemd-analyze-samples.txt") if "path-info" in c]
    parsed = [parse_nix_path_info(b) for _, b in blocks]
    assert parsed[0][2].nar_size == pytest.approx(49.4 * 1024, rel=1e-3)  # -rsSh, human sizes, tabs
    assert parsed[1][2].closure_size == 471568 and parsed[1][2].nar_size is None  # -rS, bytes
    assert max(p.closure_size or 0 for p in parsed[2]) == 5887562256  # spaces, not tabs
    assert parsed[3][0].nar_size == 50576 and parsed[3][0].closure_size == 471568  # --json
    with pytest.raises(SectionError, match="line 1"):
        parse_nix_path_info("not-a-path 12\n")
    assert parse_du_k("1204\t/nix/store/abc-busybox\n8\t/nix/store/def-probe\n")[0] == ("/nix/store/abc-busybox", 1204)


def test_os_release_and_rc_log() -> None:
    osr = parse_os_release('NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.20.3\n# c\nPRETTY_NAME="Alpine Linux v3.20"\n')
    assert osr["ID"] == "alpine" and osr["PRETTY_NAME"] == "Alpine Linux v3.20"
    with pytest.raises(SectionError, match="section 'os_release', line 1"):
        parse_os_release("this is not os-release\n")
    log = ("\nrc sysinit logging started at Thu Jan  4 10:00:05 2024\n\n * Starting devfs ... [ ok ]\n"
           " * Starting networking ... [ !! ]\n\nrc sysinit logging stopped at Thu Jan  4 10:00:07 2024\n\n"
           "rc default logging started at Thu Jan  4 10:00:07 2024\n")
    rc = parse_rc_log(log)
    assert rc.duration_s("sysinit") == 2.0 and rc.duration_s("default") is None
    assert rc.services[1] == ("sysinit", "Starting networking", False)
    with pytest.raises(SectionError, match="section 'rc_log', line 1"):
        parse_rc_log("rc default logging stopped at Thu Jan  4 10:00:07 2024\n")


def test_unknown_format_is_named() -> None:
    with pytest.raises(FormatError, match="--format"):
        detect_format("nothing recognisable\n")


def test_bundle_with_inventory_sections_gives_package_metrics() -> None:
    secs = synth.alpine_sections()
    secs["apk_installed"] = "P:busybox\nV:1.36\nS:524288\nI:1048576\n\nP:cpio\nV:2.13\nS:524288\nI:2097152\n"
    (b,) = extract_bundles(synth.serial_log(synth.bundle_lines("alpine-rehearsal", "rehearsal", secs), t_begin=11.9))
    v = {m.name: m.value for m in metrics_from_bundle(b)}
    assert v["package_count"] == 2 and v["installed_size_mib"] == 3.0 and v["compressed_size_mib"] == 1.0
    assert v["alpine_load_cost_s_per_mib"] == pytest.approx(1.75 / 3.0)
    assert "closure_size_mib" not in v and not applies("closure_size_mib", "alpine-rehearsal")
    nsecs = synth.nixos_sections()
    nsecs["nix_store_du"] = "1024\t/nix/store/a-busybox\n2048\t/nix/store/b-system\n"
    (n,) = extract_bundles(synth.serial_log(synth.bundle_lines("nixos-rehearsal", "rehearsal", nsecs), t_begin=9.0))
    nv = {m.name: m.value for m in metrics_from_bundle(n)}
    assert nv["closure_size_mib"] == 3.0 and nv["package_count"] == 2 and "compressed_size_mib" not in nv
    # a malformed inventory section names its section and line
    secs["apk_installed"] = "P:busybox\nbroken\n"
    (bad,) = extract_bundles(synth.serial_log(synth.bundle_lines("alpine-rehearsal", "rehearsal", secs), t_begin=11.9))
    with pytest.raises(SectionError, match="section 'apk_installed', line 2"):
        metrics_from_bundle(bad)


def test_cli_parse_bundle_and_raw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "b.txt"
    bundle.write_text("\n".join(synth.bundle_lines("nixos-rehearsal", "rehearsal", synth.nixos_sections())) + "\n")
    assert cli.main(["parse", str(bundle), "--json", "--metrics"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "bundle" and out["os"] == "nixos-rehearsal" and out["metrics"]["kernel_s"] == 2.201
    assert "systemd-analyze" in out["missing"]["systemd_kernel_s"]  # applies, absent: reported with why
    assert cli.main(["parse", str(bundle), "--metrics"]) == 0
    assert "metric closure_size_mib: missing — " in capsys.readouterr().out
    assert cli.main(["parse", str(ALPINE / "lib-apk-db-installed")]) == 0
    assert "apk_installed: 14 record(s)" in capsys.readouterr().out
    assert cli.main(["parse", str(NIXOS / "systemd-analyze-samples.txt"), "--format", "systemd_time"]) == 2
    assert "section 'systemd_time'" in capsys.readouterr().err
    unknown = tmp_path / "u.txt"
    unknown.write_text("\n".join(synth.bundle_lines("windows", "real", synth.nixos_sections())) + "\n")
    assert cli.main(["parse", str(unknown)]) == 2
    assert "unknown os id 'windows'" in capsys.readouterr().err
    with pytest.raises(BundleError, match="truncated"):
        parse_text("\n".join(synth.bundle_lines("nixos-rehearsal", "rehearsal", synth.nixos_sections())[:-3]))
