"""Bundle extraction and section parsers, against the contract and real tool output shapes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synth
from paths import ALPINE_FIXTURES

from labkit.core.console import SerialLogError, read_serial_log
from labkit.measure.bundle import (
    Bundle,
    BundleError,
    SectionError,
    SerialLine,
    extract_bundles,
    format_bundle,
    parse_bundle_text,
    parse_cmdline,
    parse_df,
    parse_dmesg,
    parse_meminfo,
    parse_uptime,
)
from labkit.measure.parsers.system import parse_probe_errors

BUSYBOX = ALPINE_FIXTURES / "busybox-free-df-meminfo.txt"
KMSG = ALPINE_FIXTURES / "initramfs-kmsg-messages.txt"


def _fixture_block(path: Path, command_prefix: str) -> str:
    """The output under the ``$ <command>`` line of a fixture file, up to the blank line."""
    blocks = path.read_text().split("\n\n")
    for block in blocks:
        head, _, body = block.partition("\n")
        if head.startswith(f"$ {command_prefix}"):
            return body
    raise AssertionError(f"no '$ {command_prefix}' block in {path}")


# -- real shapes ------------------------------------------------------------------------------------
def test_busybox_df_k_fixture() -> None:
    rows = parse_df(_fixture_block(BUSYBOX, "df -k"))
    assert len(rows) == 1
    r = rows[0]
    assert (r.filesystem, r.blocks_k, r.used_k, r.available_k, r.use_pct, r.mounted_on) == (
        "tmpfs", 12342040, 0, 12342040, 0, "/mnt/t"
    )


def test_df_h_is_rejected_with_section_and_line() -> None:
    with pytest.raises(SectionError) as exc:
        parse_df(_fixture_block(BUSYBOX, "df -h"))
    assert exc.value.section == "df" and exc.value.line_no == 1
    assert "df -k" in str(exc.value)


def test_busybox_meminfo_fixture() -> None:
    mem = parse_meminfo(_fixture_block(BUSYBOX, 'grep -E "^(MemTotal'))
    assert mem == {"MemTotal": 24684084, "MemFree": 23665812, "MemAvailable": 24275512, "Cached": 758704,
                   "Shmem": 8872}


def test_uptime_fixture() -> None:
    up = parse_uptime(_fixture_block(BUSYBOX, "cat /proc/uptime"))
    assert (up.uptime_s, up.idle_s) == (911.80, 1390.09)
    assert parse_uptime("12.34 5.67\n").uptime_s == 12.34


def test_alpine_kmsg_fixture() -> None:
    msgs = parse_dmesg(KMSG.read_text())
    assert msgs[0] == (608.70, "Alpine Init 3.13.0")
    texts = [t for _, t in msgs]
    assert "Installing packages to root filesystem..." in texts
    assert "Installing packages to root filesystem: ok." in texts


# -- section parsers: shapes and errors ---------------------------------------------------------------
def test_meminfo_malformed_line_names_section_and_line() -> None:
    text = "MemTotal:  492304 kB\nMemFree:   401232 kB\nMemAvailable 431120 kB\n"
    with pytest.raises(SectionError) as exc:
        parse_meminfo(text)
    assert exc.value.section == "meminfo" and exc.value.line_no == 3
    assert "section 'meminfo', line 3" in str(exc.value) and "MemAvailable 431120 kB" in str(exc.value)


def test_meminfo_counts_without_unit() -> None:
    mem = parse_meminfo(synth.MEMINFO.format(shmem=1))
    assert mem["HugePages_Total"] == 0 and mem["Shmem"] == 1


def test_uptime_malformed() -> None:
    with pytest.raises(SectionError, match="section 'uptime', line 1"):
        parse_uptime("12.34\n")
    with pytest.raises(SectionError, match="uptime"):
        parse_uptime("")


def test_dmesg_continuation_and_padding() -> None:
    msgs = parse_dmesg("[    1.234567] first\n  more of first\n[   12.000001] second\n<6>[   13.5] third\n")
    assert msgs == [(1.234567, "first\n  more of first"), (12.000001, "second"), (13.5, "third")]


def test_dmesg_without_timestamps_is_an_error() -> None:
    with pytest.raises(SectionError, match="section 'dmesg', line 1") as exc:
        parse_dmesg("Linux version 6.1.0\n[    1.0] x\n")
    assert "printk" in str(exc.value)


def test_df_wrapped_device_and_repeated_header() -> None:
    text = synth.DF_NIXOS.format(used=10, avail=20, pct=1) + "\n" + synth.DF_ALPINE.format(used=5, avail=6, pct=7)
    rows = parse_df(text)
    assert [r.mounted_on for r in rows] == ["/", "/nix", "/", "/dev", "/media/vda4"]
    assert rows[1].filesystem == "/dev/disk/by-label/nix-store-of-the-rehearsal-guest"
    assert rows[1].used_k == 300120


def test_df_coreutils_dash_and_bad_number() -> None:
    header = "Filesystem     1K-blocks  Used Available Use% Mounted on\n"
    rows = parse_df(header + "binfmt 0 0 0 - /proc/sys/fs/binfmt_misc\n")
    assert rows[0].use_pct is None
    with pytest.raises(SectionError, match="section 'df', line 2"):
        parse_df("Filesystem 1K-blocks Used Available Use% Mounted on\ntmpfs 10 x 5 50% /\n")
    with pytest.raises(SectionError, match="device name without its numbers"):
        parse_df("Filesystem 1K-blocks Used Available Use% Mounted on\n/dev/very/long/name\n")


def test_cmdline() -> None:
    assert parse_cmdline('console=ttyS0,115200 quiet label="nix store" console=tty0\n') == [
        ("console", "ttyS0,115200"), ("quiet", None), ("label", "nix store"), ("console", "tty0")
    ]
    with pytest.raises(SectionError, match="section 'cmdline', line 1"):
        parse_cmdline('root="broken\n')


# -- bundles in serial logs ---------------------------------------------------------------------------
def _alpine_log(t_begin: float = 11.9) -> list[SerialLine]:
    return synth.serial_log(synth.bundle_lines("alpine-rehearsal", "rehearsal", synth.alpine_sections()),
                            t_begin=t_begin)


def test_extract_from_noisy_serial_log() -> None:
    lines = _alpine_log()
    assert any(ln.text.startswith("[") and ln.t < 11.9 for ln in lines)  # a kernel message before BEGIN
    (b,) = extract_bundles(lines)
    assert (b.os, b.guest, b.t_begin, b.complete, b.md5_ok, b.ok) == (
        "alpine-rehearsal", "rehearsal", 11.9, True, True, True
    )
    assert list(b.sections) == ["uptime", "meminfo", "dmesg", "df", "cmdline", "kernel"]
    assert b.sections["meminfo"] == synth.MEMINFO.format(shmem=18234)
    assert b.section("kernel").startswith("Linux (none) 6.1.0")
    with pytest.raises(BundleError, match="no section 'apkdb'"):
        b.section("apkdb")


def test_objects_with_t_and_text_are_accepted() -> None:
    class Line:
        def __init__(self, t: float, text: str) -> None:
            self.t, self.text = t, text

    (b,) = extract_bundles([Line(ln.t, ln.text) for ln in _alpine_log()])
    assert b.ok


def test_two_bundles_and_noise_between() -> None:
    a = _alpine_log(11.9)
    n = synth.serial_log(synth.bundle_lines("nixos-rehearsal", "rehearsal", synth.nixos_sections()), t_begin=40.0)
    bundles = extract_bundles(a + n)
    assert [(b.os, b.t_begin) for b in bundles] == [("alpine-rehearsal", 11.9), ("nixos-rehearsal", 40.0)]


def test_serial_log_file_round_trip(tmp_path: Path) -> None:
    path = synth.write_serial_log(tmp_path / "serial-alpine-rehearsal-0.log", _alpine_log())
    lines = read_serial_log(path)
    assert [ln.text for ln in lines] == [ln.text for ln in _alpine_log()]
    assert [ln.t for ln in lines] == pytest.approx([ln.t for ln in _alpine_log()], abs=1e-6)
    (b,) = extract_bundles(lines)
    assert b.ok and b.t_begin == 11.9


def test_serial_log_malformed(tmp_path: Path) -> None:
    path = tmp_path / "serial-x-0.log"
    path.write_text("0.100000\tok\nnot a timestamp line\n")
    with pytest.raises(SerialLogError, match="line 2"):
        read_serial_log(path)


def test_truncated_bundle_is_named() -> None:
    lines = _alpine_log()
    end = next(i for i, ln in enumerate(lines) if "BUNDLE-END" in ln.text)
    cut = lines[: end - 3]  # the guest died while printing the df section
    with pytest.raises(BundleError) as exc:
        extract_bundles(cut)
    msg = str(exc.value)
    assert "truncated" in msg and "alpine-rehearsal" in msg and "no END line" in msg
    assert exc.value.fix
    (b,) = extract_bundles(cut, strict=False)
    assert not b.complete and not b.ok and b.problems


def test_new_begin_before_end_truncates_previous() -> None:
    lines = _alpine_log()
    end = next(i for i, ln in enumerate(lines) if "BUNDLE-END" in ln.text)
    bundles = extract_bundles(lines[:end] + _alpine_log(50.0), strict=False)
    assert [b.complete for b in bundles] == [False, True]


def test_md5_mismatch_is_corrupt() -> None:
    lines = _alpine_log()
    i = next(i for i, ln in enumerate(lines) if ln.text.startswith("MemFree:"))
    lines[i] = SerialLine(lines[i].t, "MemFree:          401233 kB")  # one dropped/flipped byte
    with pytest.raises(BundleError, match="corrupt: md5"):
        extract_bundles(lines)
    (b,) = extract_bundles(lines, strict=False)
    assert b.complete and not b.md5_ok


def test_unknown_os_id() -> None:
    lines = [SerialLine(1.0 + i, t) for i, t in enumerate(synth.bundle_lines("arch", "real", {"uptime": "1.0 1.0"}))]
    with pytest.raises(BundleError, match="unknown os id 'arch'"):
        extract_bundles(lines)
    with pytest.raises(BundleError, match="unknown os id"):
        extract_bundles(lines, strict=False)  # not a transmission problem: always an error


def test_guest_kind_must_match_os() -> None:
    lines = [SerialLine(0.0, t) for t in synth.bundle_lines("alpine", "rehearsal", {"uptime": "1.0 1.0"})]
    with pytest.raises(BundleError, match="real system"):
        extract_bundles(lines)


def test_sections_count_mismatch() -> None:
    body = synth.bundle_lines("nixos", "real", {"uptime": "1.0 1.0"})
    body[-1] = re.sub(r"sections=\d+", "sections=2", body[-1])
    with pytest.raises(BundleError, match="sections=2 but the body has 1"):
        extract_bundles([SerialLine(0.0, t) for t in body])


def test_hand_written_bundle_equals_format_bundle() -> None:
    sections = synth.nixos_sections()
    by_hand = "\n".join(synth.bundle_lines("nixos-rehearsal", "rehearsal", sections)) + "\n"
    assert format_bundle("nixos-rehearsal", "rehearsal", sections) == by_hand
    b = parse_bundle_text("some noise\n" + by_hand + "more noise\n")
    assert b.ok and b.t_begin is None and b.sections == sections


def test_parse_bundle_text_errors() -> None:
    with pytest.raises(BundleError, match="no @@LABKIT-BUNDLE-BEGIN"):
        parse_bundle_text("nothing here\n")
    one = format_bundle("nixos", "real", {"uptime": "1.0 1.0"})
    with pytest.raises(BundleError, match="expected one bundle, found 2"):
        parse_bundle_text(one + one)


def test_text_fast_path_agrees_with_the_line_reader() -> None:
    """parse_bundle_text reads a well-formed bundle in one pass (slices of the text); any irregular text goes
    to the line reader: both give the same bundle, and the irregular cases the same errors."""
    from labkit.measure.bundle import _fast_bundle

    sections = {**synth.alpine_sections(7.12), "empty": "", "last_empty": ""}
    text = format_bundle("alpine-rehearsal", "rehearsal", sections)
    fast = _fast_bundle("noise before\n" + text + "noise after\n")
    lines = [SerialLine(float("nan"), ln) for ln in text.split("\n")[:-1]]
    slow = extract_bundles(lines)[0]
    assert fast is not None and fast.sections == slow.sections == sections and fast.ok
    # irregular: each is left to the line reader, which decides as before
    crlf = text.replace("\n", "\r\n")
    assert _fast_bundle(crlf) is None and parse_bundle_text(crlf).sections == sections  # \r stripped per line
    corrupt = text.replace("7.12", "7.13", 1)
    assert _fast_bundle(corrupt) is None
    with pytest.raises(BundleError, match="corrupt"):
        parse_bundle_text(corrupt)
    assert _fast_bundle(text + text) is None and _fast_bundle(text[: len(text) // 2]) is None
    with pytest.raises(BundleError, match="truncated"):
        parse_bundle_text(text[: len(text) // 2])
    # a content line that starts like a marker but is not one: the line reader keeps it as content
    content = {"rc_log": "@@SECTION x@@ said a service\nok"}
    odd = format_bundle("alpine", "real", content)
    assert _fast_bundle(odd) is None and parse_bundle_text(odd).sections == content


PROBE = Path(__file__).resolve().parents[1] / "labkit" / "data" / "guest" / "probe.sh"


@pytest.mark.skipif(not PROBE.is_file() or shutil.which("busybox") is None, reason="needs probe.sh and busybox")
def test_real_probe_under_busybox_parses(tmp_path: Path) -> None:
    """The guests' probe.sh, run by busybox ash with busybox applets only, writes what we parse."""
    root, bindir = tmp_path / "root", tmp_path / "bin"
    for d in (root / "proc", root / "etc", bindir):
        d.mkdir(parents=True)
    (root / "proc" / "uptime").write_text("7.12 6.40\n")
    (root / "proc" / "meminfo").write_text(synth.MEMINFO.format(shmem=18234) + "\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet\n")
    (root / "etc" / "labkit-os").write_text("alpine-rehearsal\n")
    dmesg = tmp_path / "dmesg.txt"
    dmesg.write_text(synth.dmesg_alpine(2.356789, 3.5, 5.25, 5.3) + "\n")
    busybox = shutil.which("busybox")
    assert busybox
    for applet in ("sh", "awk", "md5sum", "df", "uname", "cat", "rm"):
        (bindir / applet).symlink_to(busybox)
    out = tmp_path / "console.txt"
    env = {"PATH": str(bindir), "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
           "LABKIT_PROBE_DMESG": str(dmesg), "TMPDIR": str(tmp_path)}
    subprocess.run([str(bindir / "sh"), str(PROBE)], env=env, check=True, timeout=30)
    serial = [SerialLine(10.0 + i * 0.001, t) for i, t in enumerate(out.read_text().split("\n")) if t]
    (b,) = extract_bundles([SerialLine(1.0, "noise"), *serial])
    assert b.ok and b.os == "alpine-rehearsal" and b.guest == "rehearsal" and b.t_begin == 10.0
    assert parse_uptime(b.sections["uptime"]).uptime_s == 7.12
    assert parse_meminfo(b.sections["meminfo"])["Shmem"] == 18234
    assert any(r.mounted_on == "/" for r in parse_df(b.sections["df"]))
    assert [t for t, _ in parse_dmesg(b.sections["dmesg"])][-1] == 5.3


@pytest.mark.skipif(not PROBE.is_file() or shutil.which("busybox") is None, reason="needs probe.sh and busybox")
def _probe_with_broken_dmesg(tmp_path: Path, dmesg: str, *, stderr_to_console: bool = False) -> Bundle:
    """Run the probe (by dash) in a fake root whose first dmesg on PATH is the script ``dmesg``; busybox's dmesg
    applet prints a known kernel log. ``stderr_to_console``: the probe's stderr is the console it writes the
    bundle to, as in a guest (OpenRC's local.d, the initramfs's chroot)."""
    root, bindir = tmp_path / "root", tmp_path / "bin"
    for d in (root / "proc", root / "etc", bindir):
        d.mkdir(parents=True)
    (root / "proc" / "uptime").write_text("7.12 6.40\n")
    (root / "proc" / "meminfo").write_text(synth.MEMINFO.format(shmem=18234) + "\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200\n")
    (root / "etc" / "labkit-os").write_text("alpine-rehearsal\n")
    busybox = shutil.which("busybox")
    assert busybox
    for applet in ("awk", "md5sum", "df", "uname", "cat", "rm", "head"):
        (bindir / applet).symlink_to(busybox)
    # dash, not busybox ash: Debian's busybox ash prefers its own applets to PATH (FEATURE_SH_STANDALONE), so
    # it would never run the broken dmesg; Alpine's ash looks PATH up, as dash does
    (bindir / "sh").symlink_to(shutil.which("dash") or "/bin/sh")
    (bindir / "dmesg").write_text(dmesg)
    (bindir / "dmesg").chmod(0o755)
    # busybox's dmesg reads the host's kernel log, which a test cannot rely on: a stand-in applet that prints a
    # known one when called as `busybox dmesg`
    (bindir / "busybox").write_text(f'#!{busybox} sh\n[ "$1" = dmesg ] && cat "{tmp_path}/kmsg.txt"\n')
    (bindir / "busybox").chmod(0o755)
    (tmp_path / "kmsg.txt").write_text(synth.dmesg_alpine(2.356789, 3.5, 5.25, 5.3) + "\n")
    out = tmp_path / "console.txt"
    env = {"PATH": str(bindir), "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
           "TMPDIR": str(tmp_path), "LABKIT_PROBE_SETTLE": "0", "LABKIT_PROBE_GUNZIP": "0"}
    out.touch()
    with open(out, "a") as console:
        subprocess.run([str(bindir / "sh"), str(PROBE)], env=env, check=True, timeout=30,
                       stderr=console if stderr_to_console else None)
    serial = [SerialLine(10.0 + i * 0.001, t) for i, t in enumerate(out.read_text().split("\n")) if t]
    (b,) = extract_bundles(serial)
    assert not list(tmp_path.glob("labkit-probe.*"))  # its temporary files are gone
    return b


def test_probe_falls_back_to_busybox_dmesg(tmp_path: Path) -> None:
    """A dmesg first on PATH that cannot run (seen in the lab: a payload's glibc dmesg shadowing busybox's in a
    musl root, 'error while loading shared libraries') must not leave the bundle without its kernel log: the
    probe then asks busybox's applet."""
    b = _probe_with_broken_dmesg(tmp_path, "#!/bin/false\n")  # runs, fails, prints nothing
    assert [t for t, _ in parse_dmesg(b.sections["dmesg"])][-1] == 5.3


def test_probe_keeps_stderr_off_the_console(tmp_path: Path) -> None:
    """What a tool says on stderr never lands between the bundle's BEGIN and END lines on the console (seen in
    the lab: the glibc dmesg's loader error, printed there by the probe running in the initramfs, broke the
    bundle's checksum): it is the bundle's last section, probe_errors."""
    b = _probe_with_broken_dmesg(
        tmp_path, "#!/bin/sh\necho 'dmesg: error while loading shared libraries: libtinfo.so.6' >&2\nexit 127\n",
        stderr_to_console=True)
    assert b.ok, b.problems
    assert [t for t, _ in parse_dmesg(b.sections["dmesg"])][-1] == 5.3
    assert parse_probe_errors(b.sections["probe_errors"]) == ["dmesg: error while loading shared libraries: "
                                                               "libtinfo.so.6"]
    assert list(b.sections)[-1] == "probe_errors"
