"""apk parsers on both apk-tools generations, and the diskless initramfs's kernel-log messages.

apk-tools 2.14: the real outputs in tests/fixtures/alpine-3.20.3/ (apk 2.14.4 of Alpine 3.20.3).

apk-tools 3: no real apk 3 output was available here, so the apk-3 samples below are *built from the
format strings of apk-tools' own source at tag v3.0.6* (alpinelinux/apk-tools 7e92634a), each helper
naming the file and lines it follows, filled with the packages and sizes of the 2.14 fixtures.
"""

from __future__ import annotations

import re

import pytest
from paths import ALPINE_FIXTURES
from test_parsers import _blocks

from labkit.measure.bundle import SectionError
from labkit.measure.parsers import (
    detect_format,
    parse_apk_console,
    parse_apk_info_names,
    parse_apk_info_sizes,
    parse_apk_installed,
    parse_apk_list,
    parse_apk_stats,
    parse_apk_world,
    parse_initramfs_messages,
)
from labkit.measure.parsers.apk import split_name_version

ALPINE = ALPINE_FIXTURES
OUTPUTS = dict(_blocks(ALPINE / "apk-2.14-outputs.txt"))
INSTALLED = parse_apk_installed((ALPINE / "lib-apk-db-installed").read_text())
ESC = "\x1b"


# -- apk-tools v3.0.6 format strings ---------------------------------------------------------------------------
def v3_human(val: int) -> str:
    """src/print.c:126-135 apk_fmt_human_size(buf, sz, val, pretty_print=1): divide by 1024 while >= 10000;
    B and KiB whole ("%" PRIu64 " %s"), MiB and up "%.1f %s"."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    s, i = float(val), 0
    while i < len(units) - 1 and s >= 10000:
        s, val, i = s / 1024, val // 1024, i + 1
    return f"{val} {units[i]}" if i < 2 else f"{s:.1f} {units[i]}"


def v3_status(done: int, total: int) -> str:
    """src/commit.c:67-69: apk_fmts("(%*i/%i)", total_changes_digits, done+1, total), digits = width of total."""
    return f"({done:>{len(str(total))}}/{total})"


def v3_progress(percent: int, width: int = 50) -> str:
    """src/print.c:201-225 apk_out_render_progress: ESC7 "%3i%% " bar ESC8 ESC[0K (width 50 when no tty)."""
    bar_width = width - 6
    bar = bar_width * percent // 100
    return f"{ESC}7{percent:3d}% " + "#" * bar + " " * (bar_width - bar) + f"{ESC}8{ESC}[0K"


def v3_console(packages: list[tuple[str, str, int]], *, errors: int = 0, verbose: bool = False) -> str:
    """An `apk add --progress` console as apk 3.0.6 prints it: per change src/commit.c:105-115
    ("%s %s %s" BLOB_FMT " (" BLOB_FMT ")"), the script line src/package.c:795-797 ("%sExecuting "
    PKG_VER_FMT ".%s", two spaces inside the install loop), the closing line src/commit.c:511-543."""
    n = len(packages)
    out = []
    for i, (name, ver, _size) in enumerate(packages, start=1):
        out.append(f"{v3_status(i, n)} Installing {name} ({ver})\n" + v3_progress(100 * (i - 1) // n))
        if name == "busybox":
            out.append(f"  Executing {name}-{ver}.post-install\n")
    out.append(v3_progress(100))
    total = sum(s for _n, _v, s in packages)
    msg = "OK:" if not errors else f"{errors} error{'s' if errors > 1 else ''};"
    if verbose:
        out.append(f"{msg} {n} packages, 97 dirs, 107 files, {v3_human(total)}\n")
    else:
        out.append(f"{msg} {v3_human(total)} in {n} packages\n")
    return "".join(out)


FIXTURE_PKGS = [(p.name, p.version, p.installed_size or 0) for p in INSTALLED]


def test_v3_human_sizes_follow_the_source() -> None:
    assert v3_human(8642560) == "8440 KiB"  # apk.md: the fixture's sum under apk 3
    assert v3_human(9999) == "9999 B" and v3_human(12 * 1024**2) == "12.0 MiB"
    assert v3_status(1, 15) == "( 1/15)" and v3_status(15, 15) == "(15/15)" and v3_status(3, 9) == "(3/9)"


# -- apk add console ------------------------------------------------------------------------------------------------
def test_console_214_fixture() -> None:
    text = (ALPINE / "apk-diskless-install-console.txt").read_text(encoding="utf-8")
    first = text.split("Installing packages to root filesystem: ok.")[0]
    r = parse_apk_console(first)
    assert len(r.changes) == 15 and r.changes[0] == (1, 15, "Installing", "alpine-baselayout-data", "3.6.5-r0")
    assert r.ok_bytes == 8 * 1024**2 and r.ok_unit == "MiB" and r.errors == 0 and r.ok_packages == 15
    assert r.executed[0] == "busybox-1.36.1-r29.post-install" and r.executed[-1] == "busybox-1.36.1-r29.trigger"
    assert [a for _a, u, _e in r.repositories for a in [u]] == [
        "https://dl-cdn.alpinelinux.org/alpine/v3.20/main", "https://dl-cdn.alpinelinux.org/alpine/v3.20/community"]
    assert r.repositories[0][0] == "opening from cache" and r.repositories[0][2] == "No such file or directory"
    assert r.missing == () and r.apk_version is None  # nothing 3-only; 2.14's lines fit both


def test_console_v3_from_format_strings() -> None:
    text = v3_console(FIXTURE_PKGS)
    assert "( 1/14) Installing alpine-baselayout (3.6.5-r0)" in text and "OK: 8440 KiB in 14 packages" in text
    r = parse_apk_console(text)
    assert detect_format(text) == "apk_console"
    assert [c[:2] for c in r.changes] == [(i, 14) for i in range(1, 15)]
    assert [(n, v) for _i, _n, n, v in r.installs] == [(n, v) for n, v, _s in FIXTURE_PKGS]
    assert r.ok_bytes == 8440 * 1024 and r.ok_unit == "KiB" and r.ok_packages == 14
    assert r.executed == ("busybox-1.36.1-r29.post-install",) and r.apk_version == 3
    # -v closing line, errors, MiB with a decimal
    v = parse_apk_console(v3_console(FIXTURE_PKGS * 2, errors=2, verbose=True))
    assert v.errors == 2 and v.ok_packages == 28 and v.ok_bytes == int(16.5 * 1024**2) and v.ok_unit == "MiB"
    assert parse_apk_console("ERRORS; 8440 KiB in 14 packages\n").errors == -1  # apk_fmts overflow fallback


def test_console_214_other_changes_and_errors() -> None:
    # 2.14 src/commit.c:27-90: the one-version and the old -> new forms; the counter runs over all changes
    text = ("(1/3) Purging meta (0-r0)\n(2/3) Upgrading hello (1.0-r0 -> 1.1-r0)\n"
            "(3/3) Installing extra@testing (2.0-r1)\n1 error; 0 MiB in 2 packages\n")
    r = parse_apk_console(text)
    assert [c[2] for c in r.changes] == ["Purging", "Upgrading", "Installing"]
    assert r.installs == ((2, 3, "hello", "1.1-r0"), (3, 3, "extra", "2.0-r1"))
    assert r.errors == 1 and r.ok_bytes == 0
    assert parse_apk_console("1 error; 4 packages, 4 dirs, 3 files, 0 MiB\n").ok_packages == 4  # apk -v
    with pytest.raises(SectionError, match="not '<action>"):
        parse_apk_console("(1/2) Installing a (1-r0)\n(2/2) Removing b\n")
    with pytest.raises(SectionError, match="out of order"):
        parse_apk_console("(1/2) Installing a (1-r0)\n(1/2) Installing b (1-r0)\n")


def test_missing_packages_and_repository_warnings() -> None:
    # 2.14 without force (verified output in apk-tools 2.14.4, src/commit.c:746, :542, :571-600)
    r214 = parse_apk_console("ERROR: unable to select packages:\n  nonexistent-pkg (no such package):\n"
                             "    required by: world[nonexistent-pkg]\n")
    assert r214.missing == ("nonexistent-pkg",)
    # 3.0.6: src/commit.c:945 header, :775 "%s (no such package)", label_start "  %s:\n" (:567), the world item
    # with its repository tag (:781-783); warnings go to stderr, shown at verbosity >= 0 (--quiet too)
    r3 = parse_apk_console("WARNING: opening /media/vda4/apks: UNTRUSTED signature\n"
                           "WARNING: The repository tag for world dependency 'firefox@edge' does not exist\n"
                           "ERROR: unable to select packages:\n  firefox (no such package):\n"
                           "    required by: world[firefox@edge]\n  gdisk (no such package):\n"
                           "    required by: world[gdisk]\n")
    assert r3.missing == ("firefox", "gdisk") and r3.missing_tags == ("firefox@edge",)
    assert r3.repositories == (("opening", "/media/vda4/apks", "UNTRUSTED signature"),)
    # v3 names the index URL (url_index_printable, src/database.c:1659-1660)
    idx = "https://dl-cdn.alpinelinux.org/alpine/v3.23/main/x86_64/APKINDEX.tar.gz"
    assert parse_apk_console(f"WARNING: fetching {idx}: network error\n").repositories == (
        ("fetching", idx, "network error"),)
    # under --initramfs-diskless-boot (APK_FORCE_BROKEN_WORLD) apk says nothing of a missing name
    assert parse_apk_console("(1/1) Installing hello (1.0-r0)\nOK: 0 MiB in 1 packages\n").missing == ()


# -- apk info / list / stats ----------------------------------------------------------------------------------------
def test_info_names_214_fixture() -> None:
    names = [p.name for p in INSTALLED]
    assert [e.name for e in parse_apk_info_names(OUTPUTS["apk info"])] == names
    assert [e.name for e in parse_apk_info_names(OUTPUTS["apk info -s"])] == names  # no args: names only
    v = parse_apk_info_names(OUTPUTS["apk -v info"])
    assert [(e.name, e.version) for e in v] == [(p.name, p.version) for p in INSTALLED]
    vv = parse_apk_info_names(OUTPUTS["apk info -vv"])
    assert vv[4].name == "busybox" and vv[4].description == "Size optimized toolbox of many common UNIX utilities"
    assert [e.name for e in parse_apk_info_names(OUTPUTS["apk info -e busybox"])] == ["busybox"]


def test_info_names_and_sizes_v3() -> None:
    # 3.0.6 src/app_info.c:27-35 info_print_pkg_oneline: name ["-" version [" - " description]]
    text = "".join(f"{n}-{v}\n" for n, v, _s in FIXTURE_PKGS)
    assert [(e.name, e.version) for e in parse_apk_info_names(text)] == [(n, v) for n, v, _s in FIXTURE_PKGS]
    # legacy block (legacy_info = 1 by default, src/context.c:33): PKG_VER_FMT " installed size:\n%s\n\n" with
    # apk_fmt_human_size(..., -1) = whole units (src/app_info.c:122-130); -vv: "%s: %s\n"
    size = 929792
    human = f"{size // 1024} KiB"
    assert parse_apk_info_sizes(f"busybox-1.36.1-r29 installed size:\n{human}\n\n") == {"busybox-1.36.1-r29": size}
    assert parse_apk_info_sizes(f"busybox: {human}\n") == {"busybox": size}
    assert parse_apk_info_sizes(OUTPUTS["apk info -s busybox"]) == {"busybox-1.36.1-r29": 908 * 1024}


def test_list_installed_214_fixture_and_v3() -> None:
    for cmd in ("apk list -I", "apk list --installed"):
        entries = parse_apk_list(OUTPUTS[cmd])
        assert [(e.name, e.version) for e in entries] == [(p.name, p.version) for p in INSTALLED]
        assert entries[6].license == "MPL-2.0 AND MIT" and entries[6].origin == "ca-certificates"
        assert {e.status for e in entries} == {"installed"} and {e.arch for e in entries} == {"x86_64"}
    assert detect_format(OUTPUTS["apk list -I"]) == "apk_list"
    # 3.0.6 src/app_list.c:54-92: the same line (no repository warnings: -I sets APK_OPENF_NO_SYS_REPOS);
    # -P prefixes "<name> "; --manifest prints "name version"
    line = "musl-utils-1.2.5-r0 x86_64 {musl} (MIT AND BSD-2-Clause AND GPL-2.0-or-later) [installed]"
    assert parse_apk_list(line + "\n")[0].license == "MIT AND BSD-2-Clause AND GPL-2.0-or-later"
    up = parse_apk_list("<so:libc.musl-x86_64.so.1> musl-1.2.5-r1 x86_64 {musl} (MIT) "
                        "[upgradable from: musl-1.2.5-r0]\n")
    assert (up[0].name, up[0].version, up[0].status) == ("musl", "1.2.5-r1", "upgradable from: musl-1.2.5-r0")
    man = parse_apk_list("".join(f"{n} {v}\n" for n, v, _s in FIXTURE_PKGS))
    assert [(e.name, e.version) for e in man] == [(n, v) for n, v, _s in FIXTURE_PKGS]
    with pytest.raises(SectionError, match="apk list"):
        parse_apk_list("this is not apk list output\n")


def test_stats_214_fixture_and_v3() -> None:
    s = parse_apk_stats(OUTPUTS["apk stats"])
    assert (s.installed_packages, s.installed_bytes, s.atoms) == (14, 8642560, 41)
    assert s.installed_bytes == sum(p.installed_size or 0 for p in INSTALLED)
    assert detect_format(OUTPUTS["apk stats"]) == "apk_stats"
    # 3.0.6 src/app_stats.c:30-51: the same text through apk_out, which appends one more '\n' (print.c:231)
    v3 = ("installed:\n  packages: 14\n  dirs: 97\n  files: 107\n  bytes: 8642560\n  triggers: 1\n"
          "available:\n  names: 39\n  packages: 14\natoms:\n  num: 41\n\n")
    assert parse_apk_stats(v3) == s
    with pytest.raises(SectionError, match="truncated"):
        parse_apk_stats("installed:\n  packages: 14\n")


def test_installed_db_v3_lines() -> None:
    """3.0.6 src/database.c:1100-1189 apk_db_fdb_write: a "g:" tags line after the header and the "S" flag
    (sha256-160 file hashes) in "f:"; the reader keeps P/V/S/I and skips the rest."""
    text = (ALPINE / "lib-apk-db-installed").read_text()
    v3 = re.sub(r"^(c:.*)$", r"\1\ng:openrc-service", text, flags=re.M).replace("\nF:", "\nf:S\nF:", 1)
    assert "g:openrc-service" in v3 and "f:S" in v3
    assert parse_apk_installed(v3) == INSTALLED


def test_split_name_version() -> None:
    assert split_name_version("busybox-1.36.1-r29") == ("busybox", "1.36.1-r29")
    assert split_name_version("ca-certificates-bundle-20240705-r0") == ("ca-certificates-bundle", "20240705-r0")
    assert split_name_version("py3-foo-2-1.0_rc1-r3") == ("py3-foo-2", "1.0_rc1-r3")
    assert split_name_version("alpine-base") is None


# -- the diskless initramfs's kernel log (mkinitfs) -----------------------------------------------------------------
def test_initramfs_messages_fixture() -> None:
    log = parse_initramfs_messages((ALPINE / "initramfs-kmsg-messages.txt").read_text())
    assert log.version == "3.13.0" and not log.install_errors
    assert [(s.message, s.status) for s in log.steps] == [
        ("Loading boot drivers", "ok"), ("Mounting boot media", "ok"),
        ("Loading user settings from /media/sda4/alpinelab.apkovl.tar.gz", "ok"),
        ("Installing packages to root filesystem", "ok")]


def test_initramfs_install_errors_313() -> None:
    # mkinitfs 3.13.0 initramfs-init.in l.1072-1074: the WARNING, then eend 0 (the step still ends "ok.")
    dmesg = ("[    2.100000] Alpine Init 3.13.0\n[    2.500000] Installing packages to root filesystem...\n"
             "[    3.900000] WARNING: apkovl packages install completed with errors...\n"
             "[    3.950000] Installing packages to root filesystem: ok.\n")
    log = parse_initramfs_messages(dmesg)
    step = log.step("Installing packages to root filesystem")
    assert log.install_errors and step is not None and step.status == "ok"
    assert (step.started, step.ended) == (2.5, 3.95)
    # 3.10.1 l.11-33 eend: "<msg>: failed. <why>"; a step without an end line never finished
    bad = parse_initramfs_messages("[1.0] Mounting boot media...\n[2.0] Mounting boot media: failed. \n"
                                   "[3.0] Loading user settings from /x.apkovl.tar.gz...\n")
    assert [(s.status, s.ended) for s in bad.steps] == [("failed", 2.0), (None, None)]



def test_world_missing_on_the_real_database() -> None:
    """The minirootfs's own world is satisfied by its installed database; a name apk could not install
    (APK_FORCE_BROKEN_WORLD drops it at a diskless boot) is named; provides (p:) satisfy a dependency."""
    from labkit.measure.parsers.apk import world_missing

    installed = parse_apk_installed((ALPINE_FIXTURES / "lib-apk-db-installed").read_text())
    world = parse_apk_world((ALPINE_FIXTURES / "etc-apk-world").read_text())
    assert world_missing(world, installed) == []
    busybox = next(p for p in installed if p.name == "busybox")
    assert "cmd:busybox" in busybox.provides and all("=" not in n for n in busybox.provides)
    extra = [*world, "busybox>=1.36", "cmd:apk", "so:libapk.so.2.14.0", "!openssh", "dillo@edge", "firefox<200",
             "cmd:nosuch"]
    assert world_missing(extra, installed) == ["dillo", "firefox", "cmd:nosuch"]


def test_packages_missing_metric_from_a_bundle() -> None:
    from labkit.measure.bundle import format_bundle, parse_bundle_text
    from labkit.measure.metrics import measure_bundle

    db = (ALPINE_FIXTURES / "lib-apk-db-installed").read_text()

    def bundle(world: str | None, dmesg: str) -> str:
        sections = {"os_release": "ID=alpine", "uptime": "5.00 1.00", "dmesg": dmesg, "apk_installed": db}
        if world is not None:
            sections["apk_world"] = world
        return format_bundle("alpine", "real", sections)

    ok = measure_bundle(parse_bundle_text(bundle("busybox\napk-tools", "[    1.000000] Alpine Init 3.13.0")))
    vals = {m.name: m for m in ok.metrics}
    assert vals["packages_missing"].value == 0 and vals["apk_install_errors"].value == 0
    warn = "[    2.000000] WARNING: apkovl packages install completed with errors..."
    bad = measure_bundle(parse_bundle_text(bundle("busybox\nfirefox\nchromium", warn)))
    vals = {m.name: m for m in bad.metrics}
    assert vals["packages_missing"].value == 2 and "firefox, chromium" in vals["packages_missing"].source
    assert vals["apk_install_errors"].value == 1
    none = measure_bundle(parse_bundle_text(bundle(None, "[    1.000000] x")))
    assert none.reasons()["packages_missing"] == "no apk_world section in the bundle"
