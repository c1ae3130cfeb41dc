"""Archives are read as streams within limits: a real gzip bomb (about a megabyte on disk, over a gigabyte
decompressed) is refused by ``alpine audit`` and ``alpine predict`` with bounded memory; members past the
count or size limit are refused; a valid GNU sparse member is read, not called corrupt; setuid/setgid and
world-writable entries are flagged; control characters in names are printed escaped."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from labkit.cli.main import main
from labkit.core.archives import ArchiveLimits, ArchiveTooLarge
from labkit.systems.alpine.apkindex import read_apkindex
from labkit.systems.alpine.audit import audit, read_apkovl

MiB = 1024 * 1024
ZEROS_1MIB = gzip.compress(b"\0" * MiB, 9)  # about 1 KiB: the bomb's building block


def header(name: str, size: int, mode: int = 0o644, kind: bytes = tarfile.REGTYPE) -> bytes:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.type, ti.mtime = size, mode, kind, 1_700_000_000
    return ti.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def bomb(entries: list[tuple[str, int]]) -> bytes:
    """A .tar.gz whose members are ``size_mib`` MiB of zeros each: gzip members concatenated, so the file
    is ~1 KiB per MiB it inflates to (``gzip -d`` reads it as one stream, like apk and tar)."""
    out = bytearray()
    for name, size_mib in entries:
        out += gzip.compress(header(name, size_mib * MiB)) + ZEROS_1MIB * size_mib
    return bytes(out + gzip.compress(b"\0" * 1024))


#: Runs its arguments as a child and prints "<exit status> <child's ru_maxrss in KiB>". Linux carries ru_maxrss
#: over exec() from the process that forked (the kernel keeps the old mm's high-water mark): a child started
#: straight from this test process (a pytest-xdist worker that has run other tests: 364 MiB seen) would report
#: the worker's peak. Started from this small interpreter, the child's figure is its own.
TRAMPOLINE = ("import os, subprocess, sys\n"
              "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
              "_, status, usage = os.wait4(p.pid, 0)\n"
              "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)\n")


def run_measured(argv: list[str]) -> tuple[int, str, float, float]:
    """Run ``python -m labkit ARGV`` as a grandchild; return (rc, stderr, its peak RSS in MiB, seconds)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", TRAMPOLINE, sys.executable, "-m", "labkit", *argv],
                          capture_output=True, text=True, check=True)
    rc, maxrss_kib = (int(v) for v in proc.stdout.split())
    return rc, proc.stderr, maxrss_kib / 1024, time.monotonic() - start


def test_gzip_bomb_is_refused_by_audit_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.apkovl.tar.gz"
    path.write_bytes(bomb([("etc/a", 300), ("etc/b", 300), ("etc/c", 500)]))  # 1.1 GiB inflated
    assert path.stat().st_size < 2 * MiB
    rc, err, rss_mib, secs = run_measured(["alpine", "audit", str(path)])
    assert rc == 2 and "decompresses to more than" in err and "gzip bomb" in err and "Traceback" not in err
    assert rss_mib < 300, f"peak RSS {rss_mib:.0f} MiB"  # was 12.6 GB before streaming
    print(f"audit of a {path.stat().st_size} byte bomb: refused in {secs:.1f} s, peak RSS {rss_mib:.0f} MiB")


def test_gzip_bomb_is_refused_by_predict(tmp_path: Path) -> None:
    idx = tmp_path / "APKINDEX.tar.gz"
    idx.write_bytes(bomb([("DESCRIPTION", 60), ("APKINDEX.old", 60), ("APKINDEX", 60)]))
    rc, err, rss_mib, _ = run_measured(["alpine", "predict", "--index", str(idx), "--world", "alpine-base"])
    assert rc == 2 and "decompresses to more than" in err and "Traceback" not in err
    assert rss_mib < 300, f"peak RSS {rss_mib:.0f} MiB"
    one = tmp_path / "one.tar.gz"  # a single APKINDEX member declared at 1 GiB: refused at its header
    one.write_bytes(gzip.compress(header("APKINDEX", 1024 * MiB)) + ZEROS_1MIB * 2)
    with pytest.raises(ArchiveTooLarge, match="over labkit's limit"):
        read_apkindex(one)


def test_member_count_and_size_limits(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(60):
            ti = tarfile.TarInfo(f"etc/f{i}")
            ti.size = 1
            tar.addfile(ti, io.BytesIO(b"x"))
    data = gzip.compress(raw.getvalue())
    assert len(read_apkovl(data).members) == 60
    with pytest.raises(ArchiveTooLarge, match="more than 50 entries"):
        read_apkovl(data, limits=ArchiveLimits(max_members=50))
    big = gzip.compress(header("etc/huge", 600 * MiB)) + ZEROS_1MIB
    with pytest.raises(ArchiveTooLarge, match=r"etc/huge.* over labkit's limit"):
        read_apkovl(big)
    with pytest.raises(ArchiveTooLarge, match="over labkit's limit of 100"):
        read_apkovl(data, limits=ArchiveLimits(max_compressed=100))
    # decompressed bytes are counted as they come out (a smaller limit to keep the test fast)
    with pytest.raises(ArchiveTooLarge, match="decompresses to more than"):
        read_apkovl(bomb([("etc/a", 3), ("etc/b", 3)]), limits=ArchiveLimits(max_total=4 * MiB))
    # a GNU long-name header (tarfile reads it into memory whole) of a gigabyte: stopped at 16 MiB
    longname = gzip.compress(header("././@LongLink", 1024 * MiB, kind=tarfile.GNUTYPE_LONGNAME)) + ZEROS_1MIB * 40
    with pytest.raises(ArchiveTooLarge, match="tar header"):
        read_apkovl(longname)


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar missing")
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_a_valid_sparse_member_is_read(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    sparse = tree / "etc" / "sparse.img"
    with open(sparse, "wb") as fh:
        fh.truncate(8 * MiB)
        fh.seek(3 * MiB)
        fh.write(b"middle")
        fh.seek(8 * MiB - 5)
        fh.write(b"tail!")
    (tree / "etc" / ".default_boot_services").touch()  # the initramfs adds the boot services (no warning)
    ovl = tmp_path / f"sparse-{fmt}.apkovl.tar.gz"
    subprocess.run(["tar", "--sparse", f"--format={fmt}", "-czf", str(ovl), "-C", str(tree), "etc"], check=True)
    with tarfile.open(ovl) as t:
        assert t.getmember("etc/sparse.img").issparse()  # GNU tar really wrote a sparse member
    parsed = read_apkovl(ovl)
    m = parsed.by_name()["etc/sparse.img"]
    assert m.kind == "file" and m.size == 8 * MiB
    assert m.sha256 == hashlib.sha256(sparse.read_bytes()).hexdigest()
    rc = main(["alpine", "audit", str(ovl), "--large", str(16 * MiB)])
    out = capsys.readouterr()
    assert rc == 0 and "corrupt" not in out.err + out.out and "etc/sparse.img" in out.out


def test_setuid_setgid_world_writable_are_flagged() -> None:
    raw = io.BytesIO()
    entries = [("etc", 0o755, tarfile.DIRTYPE), ("etc/suid", 0o4755, tarfile.REGTYPE),
               ("etc/sgid", 0o2755, tarfile.REGTYPE), ("etc/open.conf", 0o666, tarfile.REGTYPE),
               ("etc/opendir", 0o777, tarfile.DIRTYPE), ("etc/tmp", 0o1777, tarfile.DIRTYPE),
               ("home", 0o2755, tarfile.DIRTYPE), ("etc/fine", 0o644, tarfile.REGTYPE)]
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, mode, kind in entries:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.type = mode, kind
            tar.addfile(ti, io.BytesIO(b""))
    found = {(f.path, f.rule, f.severity) for f in audit(read_apkovl(gzip.compress(raw.getvalue())))}
    assert found == {("etc/suid", "setuid", "warning"), ("etc/sgid", "setuid", "warning"),
                     ("etc/open.conf", "world-writable", "warning"), ("etc/opendir", "world-writable", "warning"),
                     ("etc/tmp", "world-writable", "info"),
                     ("etc/runlevels", "boot-services", "warning")}  # no runlevel links in this overlay


def test_control_characters_in_names_are_printed_escaped(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    names = ["etc/\x1b[2J\x1b]0;pwned\x07title", "etc/a\rb", "etc/new\nline", "etc/rtl\u202eexe.txt"]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n in names:
            ti = tarfile.TarInfo(n)
            ti.size = 3
            tar.addfile(ti, io.BytesIO(b"abc"))
    ovl = tmp_path / "esc.apkovl.tar.gz"
    ovl.write_bytes(gzip.compress(raw.getvalue()))
    assert main(["alpine", "audit", str(ovl)]) == 1  # the overlay has no runlevel links (a warning)
    out = capsys.readouterr().out
    assert "missing runlevel links" in out
    for bad in ("\x1b", "\r", "\x07", "\u202e"):
        assert bad not in out
    assert "etc/\\x1b[2J\\x1b]0;pwned\\x07title" in out and "etc/a\\rb" in out and "etc/new\\nline" in out
    assert "etc/rtl\\u202eexe.txt" in out
    b = tmp_path / "b.apkovl.tar.gz"
    b.write_bytes(gzip.compress(io.BytesIO(raw.getvalue()).getvalue()[:0] + _one("etc/\x1bX")))
    assert main(["alpine", "diff", str(ovl), str(b)]) == 1
    diff = capsys.readouterr().out
    assert "\x1b" not in diff and "A etc/\\x1bX" in diff


def _one(name: str) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo(name)
        tar.addfile(ti, io.BytesIO(b""))
    return raw.getvalue()


def test_truncated_archive_is_still_corrupt(tmp_path: Path) -> None:
    data = bomb([("etc/a", 2)])
    with pytest.raises(Exception, match="truncated or corrupt"):
        read_apkovl(data[: len(data) // 2])
