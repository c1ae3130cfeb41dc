"""The fast paths of bundle reading (issue 13, "Parsing at scale") give the same results as before.

The reference is the code as it was before the fast paths of this file's commit, kept here verbatim
(``_old_*``): the metrics of a bundle are computed twice, once by labkit and once with the old functions
patched in, and must be identical — values, sources, missing reasons, or the same error — on the fixture
bundles (tests/synth.py, tests/realshape.py, the benchmark's bundle) and on adversarial input: huge lines,
no newline at the end, CRLF, binary junk (every latin-1 character, among them the ones str.split and
regex ``\\s`` count as white space: ``\\x0b``, ``\\x1c``, ``\\x85``, ``\\xa0``), truncated sections and
bundles. The bundle text reader's one-pass path is compared with the line reader the same way.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
import realshape
import synth

import labkit.measure.bundle as B
import labkit.measure.metrics as M
from labkit.measure.bundle import Bundle, SectionError, format_bundle, parse_bundle_text
from labkit.measure.parsers.apk import ApkPackage, parse_apk_installed, parse_apk_world, world_missing

# -- the code before the fast paths, verbatim (labkit.measure.bundle / metrics / parsers.apk) ---------------


def _old_parse_uptime(text: str) -> B.Uptime:
    lines = B._content_lines(text)
    if len(lines) != 1:
        raise SectionError("uptime", None, None, f"expected one line, found {len(lines)}")
    no, line = lines[0]
    parts = line.split()
    if len(parts) != 2 or not all(B._SECONDS_RE.fullmatch(x) for x in parts):
        raise SectionError("uptime", no, line, "expected '<uptime seconds> <idle seconds>' (plain decimals)")
    up, idle = float(parts[0]), float(parts[1])
    if up > B.MAX_SECONDS:
        raise SectionError("uptime", no, line, f"an uptime over {B.MAX_SECONDS:g} s is not plausible")
    return B.Uptime(up, idle)


def _old_parse_meminfo(text: str) -> dict[str, int]:
    found = B._MEMINFO_ALL.findall(text)
    if found and len(found) == B._line_count(text):
        keys, values = zip(*found, strict=True)
        d = dict(zip(keys, map(int, values), strict=True))
        if "MemTotal" in d:
            return d
    out: dict[str, int] = {}
    for no, line in B._content_lines(text):
        m = B._MEMINFO_RE.match(line)
        if m is None:
            raise SectionError("meminfo", no, line, "expected '<Key>:  <number> [kB]'")
        out[m.group("key")] = int(m.group("val"))
    if "MemTotal" not in out:
        raise SectionError("meminfo", None, None, "no MemTotal line")
    return out


def _old_df_row(fields: list[str], no: int, line: str) -> B.DfRow:
    if len(fields) < 6:
        raise SectionError("df", no, line, "expected 6 columns (Filesystem 1K-blocks Used Available Use% Mounted on)")
    fs, blocks, used, avail, pct = fields[:5]
    mount = " ".join(fields[5:])
    try:
        use_pct = None if pct == "-" else B.whole_number(pct.rstrip("%"), "df", no, line, "Use%")
        if pct != "-" and not pct.endswith("%"):
            raise ValueError
        sizes = [B.whole_number(x, "df", no, line, "size") for x in (blocks, used, avail)]
        return B.DfRow(fs, sizes[0], sizes[1], sizes[2], use_pct, mount)
    except ValueError:
        raise SectionError("df", no, line, "size columns must be whole KiB numbers and Use% like '12%'") from None


def _old_os_family(os_id: str) -> str:
    return re.split(r"[^A-Za-z0-9_]", os_id, maxsplit=1)[0]


_OLD_APK_RECORD = re.compile(r"^P:[^\n]+\nV:[^\n]+\nS:(\d+)\nI:(\d+)(?:\np:[^\n]*)?$", re.M)


def _old_apk_sums(text: str) -> tuple[float, float, float] | None:
    recs = _OLD_APK_RECORD.findall(text)
    if not recs or _OLD_APK_RECORD.sub("", text).strip():
        return None
    sizes, installed = zip(*recs, strict=True)
    return (float(len(recs)), sum(map(int, installed)) / 1024**2, sum(map(int, sizes)) / 1024**2)


def _old_parse_apk_world(text: str, section: str = "apk_world") -> list[str]:
    out: list[str] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        for tok in raw.split():
            if not re.match(r"^[A-Za-z0-9_.+@:<>=~!-]+$", tok):
                raise SectionError(section, no, raw, f"not a package constraint: {tok!r}")
            out.append(tok)
    return out


def _old_world_missing(world: list[str], installed: list[ApkPackage]) -> list[str]:
    have = {p.name for p in installed} | {n for p in installed for n in p.provides}
    out = []
    for dep in world:
        if dep.startswith("!"):
            continue
        m = re.match(r"^(?P<name>[^<>=~@!]+)", dep)
        if m and m.group("name") not in have:
            out.append(m.group("name"))
    return out


def _old_world_values(v: M._Values, sections: Mapping[str, str]) -> None:
    if "apk_world" not in sections or "apk_installed" not in sections:
        what = "apk_world" if "apk_world" not in sections else "apk_installed"
        v.absent("packages_missing", f"no {what} section in the bundle")
    else:
        have: set[str] = set()
        for name, provides in M._INSTALLED_NAMES.findall(sections["apk_installed"]):
            if name:
                have.add(name)
            else:
                have.update(t.split("=", 1)[0] for t in provides.split())
        world = _old_parse_apk_world(sections["apk_world"])
        lost = _old_world_missing(world, [ApkPackage(n, "", None, None) for n in sorted(have)])
        v.set("packages_missing", float(len(lost)),
              "apk world vs apk db" + (f": {', '.join(lost[:8])}{' ...' if len(lost) > 8 else ''}" if lost else ""))
    if "dmesg" in sections:
        v.set("apk_install_errors", 1.0 if M.INSTALL_ERRORS_WARNING in sections["dmesg"] else 0.0)
    else:
        v.absent("apk_install_errors", "no dmesg section")


def _old_package_values(v: M._Values, bundle: Bundle) -> None:
    sections = bundle.sections
    nix_names = ("closure_size_mib", "package_count", "installed_size_mib")
    fast = _old_apk_sums(sections["apk_installed"]) if "apk_installed" in sections else None
    if fast is not None:
        for name, value in zip(("package_count", "installed_size_mib", "compressed_size_mib"), fast, strict=True):
            v.set(name, value)
    elif "apk_installed" in sections:
        pkgs = parse_apk_installed(sections["apk_installed"])
        v.set("package_count", float(len(pkgs)))
        if not pkgs:
            v.absent("installed_size_mib", "/lib/apk/db/installed has no package")
            v.absent("compressed_size_mib", "/lib/apk/db/installed has no package")
        if pkgs and all(p.installed_size is not None for p in pkgs):
            v.set("installed_size_mib", sum(p.installed_size or 0 for p in pkgs) / 1024**2)
        elif pkgs:
            v.absent("installed_size_mib", "a record of /lib/apk/db/installed has no I: field")
        if pkgs and all(p.size is not None for p in pkgs):
            v.set("compressed_size_mib", sum(p.size or 0 for p in pkgs) / 1024**2)
        elif pkgs:
            v.absent("compressed_size_mib", "a record of /lib/apk/db/installed has no S: field")
    elif "nix_path_info" in sections:
        err = M._tool_error(sections["nix_path_info"])
        if err:
            for n in nix_names:
                v.absent(n, f"nix path-info failed in the guest: {err[:160]}")
            return
        paths = M.parse_nix_path_info(sections["nix_path_info"], "nix_path_info")
        closures = [p.closure_size for p in paths if p.closure_size is not None]
        v.set("package_count", float(len(paths)))
        if closures:
            v.set("closure_size_mib", max(closures) / 1024**2)
            v.set("installed_size_mib", max(closures) / 1024**2)
        else:
            for n in ("closure_size_mib", "installed_size_mib"):
                v.absent(n, "nix path-info printed no closure size (run without -S?)")
    elif "nix_closure_du" in sections:
        err = M._tool_error(sections["nix_closure_du"], ("error:", "du:"))
        if err:
            for n in nix_names:
                v.absent(n, f"measuring the closure with nix-store -qR and du failed in the guest: {err[:160]}")
            return
        du = M.parse_du_k(sections["nix_closure_du"], "nix_closure_du")
        src = "du -sk over nix-store -qR /run/current-system (disk usage, not NAR size)"
        v.set("package_count", float(len(du)), src)
        v.set("closure_size_mib", sum(k for _, k in du) / 1024, src)
        v.set("installed_size_mib", sum(k for _, k in du) / 1024, src)
    elif "nix_store_du" in sections and bundle.guest == "rehearsal":
        du = M.parse_du_k(sections["nix_store_du"])
        src = "rehearsal store: sizes registered at build time (du -sk lines)"
        v.set("package_count", float(len(du)), src)
        v.set("closure_size_mib", sum(k for _, k in du) / 1024, src)
        v.set("installed_size_mib", sum(k for _, k in du) / 1024, src)
    elif "nix_store_du" in sections:
        for n in nix_names:
            v.absent(n, "the bundle's nix_store_du comes from an older probe that may have measured the whole "
                        "/nix/store (every generation, .drv files): not used as the closure")
    elif _old_os_family(bundle.os) == "nixos":
        for n in nix_names:
            v.absent(n, "no nix_path_info section: neither nix nor nix-store was on the probe's PATH (the "
                        "probe unit's path must hold config.nix.package)")
    else:
        for n in ("package_count", "installed_size_mib", "compressed_size_mib"):
            v.absent(n, "no apk_installed section: /lib/apk/db/installed was not found")
    if _old_os_family(bundle.os) == "alpine":
        _old_world_values(v, sections)


# -- helpers --------------------------------------------------------------------------------------------------


def _outcome(fn: Callable[[], object]) -> str:
    """What a call gives: its result's repr (NaN-safe), or its error's type and text."""
    try:
        return "ok " + repr(fn())
    except Exception as exc:  # any failure is compared, not only BundleError/SectionError
        return f"{type(exc).__name__} {exc}"


@pytest.fixture
def before(monkeypatch: pytest.MonkeyPatch) -> Callable[[Bundle], str]:
    """measure_bundle with the old functions in place of the fast paths, restored after each call."""
    def measure_old(bundle: Bundle) -> str:
        with monkeypatch.context() as m:
            m.setattr(M, "_package_values", _old_package_values)
            m.setattr(M, "meminfo_values", lambda text, keys: _old_parse_meminfo(text))
            m.setattr(M, "parse_uptime", _old_parse_uptime)
            m.setattr(M, "os_family", _old_os_family)
            m.setattr(M, "_new_metric", lambda cls, fields: cls(*fields))
            return _outcome(lambda: M.measure_bundle(bundle))
    return measure_old


def _benchmark_sections() -> dict[str, str]:
    from benchmarks.__main__ import sample_bundle_lines

    return parse_bundle_text("\n".join(sample_bundle_lines(3)) + "\n").sections


FIXTURES: dict[str, tuple[str, Callable[[], dict[str, str]]]] = {
    "synth-alpine": ("alpine-rehearsal", lambda: synth.alpine_sections(7.12)),
    "synth-nixos": ("nixos-rehearsal", lambda: synth.nixos_sections(6.40)),
    "real-alpine": ("alpine", realshape.alpine_sections),
    "real-nixos": ("nixos", realshape.nixos_sections),
    "benchmark": ("alpine-rehearsal", _benchmark_sections),
}

#: every latin-1 character once, and the white space str.split() and regex \s agree on beyond ASCII's
JUNK = ["".join(map(chr, range(256))), "\x00\x00", "\x0b", "\x1c\x1d\x1e\x1f", "\x85", "\xa0", "\x0c", "\r",
        "\ufffd", "é", "@@SECTION x@@", "\n\n\n", " \t "]


def _mutations(text: str, rng: random.Random) -> Iterator[str]:
    """Adversarial variants of one section's text."""
    yield text + "\n"
    yield text.rstrip("\n")
    yield text.replace("\n", "\r\n")
    yield text + "\r"
    yield ""
    yield "\n" + text
    yield text.replace(" ", "\xa0")
    yield text.replace(" ", "\t")
    yield text + "\n" + "9" * 300_000  # a huge line of digits
    yield "x" * 300_000 + text  # a huge first line
    yield text.replace("\n", " " * 1000 + "\n")
    for _ in range(6):
        cut = rng.randrange(len(text) + 1)
        yield text[:cut]  # truncated
        at = rng.randrange(len(text) + 1)
        yield text[:at] + rng.choice(JUNK) + text[at:]  # junk inserted
        yield text[:at] + text[at + 1:]  # one character lost
    for _ in range(3):
        yield "".join(chr(rng.randrange(256)) for _ in range(rng.randrange(1, 200)))  # binary junk


def _adversarial_bundles() -> Iterator[tuple[str, Bundle]]:
    rng = random.Random(13)
    for label, (os_id, make) in FIXTURES.items():
        sections = make()
        guest = B.KNOWN_OS[os_id]
        yield f"{label}", Bundle(os_id, guest, sections, 25.0, True, True)
        for name in sections:
            rest = {k: v for k, v in sections.items() if k != name}
            yield f"{label} without {name}", Bundle(os_id, guest, rest, 25.0, True, True)
            for i, text in enumerate(_mutations(sections[name], rng)):
                yield f"{label} {name} #{i}", Bundle(os_id, guest, {**sections, name: text}, None, True, True)


# -- the tests ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["one-list", "streamed"])
def test_metrics_are_the_same_as_before_on_fixture_and_adversarial_bundles(
        before: Callable[[Bundle], str], stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if stream:  # the apk database and meminfo read match by match, as sections over 1 MiB are
        monkeypatch.setattr(M, "_APK_STREAM_CHARS", 0)
        monkeypatch.setattr(B, "_MEMINFO_STREAM_CHARS", 0)
    n_ok = n_err = 0
    for label, bundle in _adversarial_bundles():
        now = _outcome(lambda b=bundle: M.measure_bundle(b))
        assert now == before(bundle), label
        n_ok += now.startswith("ok ")
        n_err += not now.startswith("ok ")
    assert n_ok > 100 and n_err > 50  # both the values and the errors were compared, many times


@pytest.mark.parametrize("stream", [False, True], ids=["one-list", "streamed"])
def test_apk_database_fast_path_is_the_same_as_before(stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sums, names and provides from one pass equal the two old passes (and the line parser), on the real
    database filtered as the probe does, with p: lines, and on adversarial variants; read as one list of
    matches and match by match (the way a section over _APK_STREAM_CHARS is read)."""
    if stream:
        monkeypatch.setattr(M, "_APK_STREAM_CHARS", 0)
    rng = random.Random(5)
    filtered = realshape.apk_installed()
    raw = (realshape.ALPINE_FIXTURES / "lib-apk-db-installed").read_text()
    with_provides = "P:a\nV:1-r0\nS:10\nI:20\np:cmd:x=1 so:libz.so.1=1.3 bare\n\nP:b c\nV:2\nS:1\nI:2\np:\n"
    texts = [filtered, raw, with_provides, "", "\n", "P:x\nV:1\nS:1\nI:1", " P:x\nV:1\nS:1\nI:1",
             "P:x\r\nV:1\nS:1\nI:1\n", "P:x\nV:1\nS:1\nI:1\n\xa0\n", "P:x\nV:1\nS:1\nI:1\n\x00",
             "P:x\nV:1\nS:1\nI:1\nx" + "y" * 200_000]
    for base in (filtered, with_provides):
        texts += list(_mutations(base, rng))
    for text in texts:
        fast = M._apk_sums(text)
        old = _old_apk_sums(text)
        assert (fast[:3] if fast is not None else None) == old, repr(text[:80])
        names_old: set[str] = set()
        for name, provides in M._INSTALLED_NAMES.findall(text):
            names_old |= {name} if name else {t.split("=", 1)[0] for t in provides.split()}
        assert (fast.names if fast else M._installed_names(text)) == names_old, repr(text[:80])
        assert M._installed_names(text) == names_old
        if fast is not None:  # the fast sums agree with the line parser too
            pkgs = parse_apk_installed(text)
            assert fast.n_packages == len(pkgs)
            assert fast.installed_mib == sum(p.installed_size or 0 for p in pkgs) / 1024**2
    assert M._installed_names(with_provides) == {"a", "cmd:x", "so:libz.so.1", "bare"}  # 'P:b c' is no name
    world = ["a", "so:libz.so.1>=1", "!b", "cmd:y", "z@edge"]
    installed = [ApkPackage("a", "1", 1, 1, ("cmd:x", "so:libz.so.1"))]
    assert world_missing(world, installed) == _old_world_missing(world, installed) == ["cmd:y", "z"]
    for w in ("cpio\nzstd", "a  b\n\nc>=1 !d", "bad token$", "x\r\ny"):
        assert _outcome(lambda w=w: parse_apk_world(w)) == _outcome(lambda w=w: _old_parse_apk_world(w))


@pytest.mark.parametrize("stream", [False, True], ids=["one-list", "streamed"])
def test_meminfo_and_uptime_fast_paths_are_the_same_as_before(stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if stream:  # meminfo read match by match, as a section over _MEMINFO_STREAM_CHARS is
        monkeypatch.setattr(B, "_MEMINFO_STREAM_CHARS", 0)
    rng = random.Random(7)
    meminfos = [synth.MEMINFO.format(shmem=18234), "MemTotal: 1\nMemTotal: 2 kB\n", "MemFree: 1 kB\n",
                "MemTotal: ١٢٣ kB", "MemTotal: 12345678901234567890 kB", "MemTotal:\t5\t kB \t"]
    meminfos += list(_mutations(meminfos[0], rng))
    keys = ("MemTotal", "MemAvailable", "Shmem", "Nope")
    for text in meminfos:
        old = _outcome(lambda t=text: _old_parse_meminfo(t))
        assert _outcome(lambda t=text: B.parse_meminfo(t)) == old, repr(text[:80])
        sub = _outcome(lambda t=text: {k: v for k, v in _old_parse_meminfo(t).items() if k in keys})
        assert _outcome(lambda t=text: B.meminfo_values(t, keys)) == sub, repr(text[:80])
    uptimes = ["5.70 4.10", "5.70 4.10\n", "\n 5.70\t4.10 \r\n\n", "5.70\n4.10", "5.70\x1c4.10", "5.70\xa04.10",
               "1e3 1", "nan 1", "-1 1", "1 2 3", "999999999999.999999999 1", "1.5", "", " " * 300 + "1 2",
               "1 2" + " " * 300, "١ ٢"]
    uptimes += list(_mutations("12.34 5.67", rng))
    for text in uptimes:
        assert _outcome(lambda t=text: B.parse_uptime(t)) == _outcome(lambda t=text: _old_parse_uptime(t)), \
            repr(text[:80])


def test_bundle_text_one_pass_reader_is_the_same_as_the_line_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_bundle_text's one-pass path against the line reader alone, on whole bundle texts: fixture bundles
    and adversarial variants (no newline at the end, CRLF, truncated, junk, huge lines, two bundles)."""
    rng = random.Random(11)
    texts: list[str] = []
    for os_id, make in FIXTURES.values():
        text = format_bundle(os_id, B.KNOWN_OS[os_id], make())
        huge = format_bundle(os_id, B.KNOWN_OS[os_id], {**make(), "dmesg": "[    0.1] " + "z" * 500_000})
        texts += [text, text.rstrip("\n"), text.replace("\n", "\r\n"), "noise\n" + text + "noise", huge,
                  text + text, "x" + text, text.replace("@@\n", "@@\r\n", 1)]
        for _ in range(8):
            cut = rng.randrange(len(text))
            at = rng.randrange(len(text))
            texts += [text[:cut], text[:at] + rng.choice(JUNK) + text[at:]]
    n_fast = 0
    for text in texts:
        now = [_outcome(lambda t=text, s=strict: parse_bundle_text(t, strict=s)) for strict in (True, False)]
        n_fast += _outcome(lambda t=text: B._fast_bundle(t)).startswith("ok Bundle(")
        with monkeypatch.context() as m:
            m.setattr(B, "_fast_bundle", lambda t: None)
            lines = [_outcome(lambda t=text, s=strict: parse_bundle_text(t, strict=s)) for strict in (True, False)]
        assert now == lines, repr(text[:80])
    assert n_fast >= 2 * len(FIXTURES)  # the one-pass path was taken (fixtures, no final newline, noise ...)


def test_df_fast_rows_are_the_same_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(3)
    rows = ["tmpfs 246152 18234 227918 7% /", "tmpfs 1 2 3 12%% /", "tmpfs 1 2 3 % /", "tmpfs 1 2 3 - /",
            "tmpfs 1 2 3 7 /", "tmpfs ١ 2 3 7% /", "tmpfs 1234567890123456789 2 3 7% /", "tmpfs -1 2 3 7% /",
            "tmpfs 1 2 3 7% /mnt/with space", "tmpfs 1 2 3 7%", "tmpfs 1 2 3 7%\xa0/", "a\n 1 2 3 4% /x"]
    header = "Filesystem           1K-blocks      Used Available Use% Mounted on\n"
    texts = [header + r for r in rows] + [synth.DF_ALPINE.format(used=1, avail=2, pct=3), realshape.DF_ALPINE,
                                          synth.DF_NIXOS.format(used=1, avail=2, pct=3)]
    texts += list(_mutations(realshape.DF_ALPINE, rng))
    for text in texts:
        now = _outcome(lambda t=text: B.parse_df(t))
        with monkeypatch.context() as m:
            m.setattr(B, "_df_row", _old_df_row)
            assert now == _outcome(lambda t=text: B.parse_df(t)), repr(text[:80])


def test_big_line_by_line_sections_stay_within_a_few_times_the_bundle(tmp_path: Path) -> None:
    """A bundle whose bulk is a package database and meminfo (the sections read line by line) is measured in
    a fresh process: the peak memory above the interpreter's stays under 4x the file (the code before read
    each as one list of matches: 8.5x on 15 MB)."""
    from benchmarks.__main__ import MEMORY_CHILD, db_bundle_text

    path = tmp_path / "db-bundle.txt"
    path.write_text(db_bundle_text(12), encoding="utf-8")
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path)], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1]).stdout.split()
    base_kib, peak_kib, n_metrics = int(out[0]), int(out[1]), int(out[2])
    assert n_metrics >= 5  # the metrics were computed, the package database among them
    assert (peak_kib - base_kib) * 1024 / path.stat().st_size < 4.0

