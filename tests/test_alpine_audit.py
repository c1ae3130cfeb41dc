"""apkovl inspection: the real lbu archive, findings, bad archives rejected, diffs."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from paths import ALPINE_FIXTURES

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.systems.alpine.apkovl import ApkovlSpec, build_apkovl
from labkit.systems.alpine.audit import audit, audit_file, diff, file_data, read_apkovl

REAL = ALPINE_FIXTURES / "alpinelab.apkovl.tar.gz"


def _targz(*members: tuple[str, str, bytes | str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as t:
        for name, kind, payload in members:
            ti = tarfile.TarInfo(name)
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            elif kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            else:
                ti.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                ti.linkname = str(payload)
                t.addfile(ti)
    return buf.getvalue()


def test_reads_the_real_lbu_apkovl() -> None:
    ovl, findings = audit_file(REAL)
    assert len(ovl.members) == 32 and ovl.compressed_size == 4739
    assert ovl.total_size == sum(m.size for m in ovl.members if m.kind == "file") == 7682
    m = ovl.by_name()
    assert m["etc/shadow"].owner == "root/shadow" and m["etc/shadow"].mode == 0o640
    assert m["etc/apk/cache"].kind == "symlink" and m["etc/apk/cache"].target == "/media/sda4/cache"
    assert m["etc/lbu"].kind == "dir"
    assert not any(n.startswith("home/juser/.cache") for n in m)  # lbu exclude worked
    assert findings == []


def test_findings() -> None:
    data = _targz(
        ("etc/ssh/ssh_host_ed25519_key", "file", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        ("root/.ssh/id_ed25519", "file", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        ("root/.ssh/id_ed25519.pub", "file", "ssh-ed25519 AAAA x"),
        ("etc/ssl/private/web.pem", "file", "-----BEGIN PRIVATE KEY-----\n"),
        ("home/u/.cache/foo", "file", "junk"),
        ("home/u/.mozilla/firefox/x.default/places.sqlite", "file", "x"),
        ("home/u/Mail/inbox", "file", "x"),
        ("home/u/big.bin", "file", b"\0" * 2048),
    )
    ovl = read_apkovl(data)
    found = {(f.rule, f.path) for f in audit(ovl, large=1024, data=file_data(data))}
    assert found == {
        ("host-key", "etc/ssh/ssh_host_ed25519_key"),
        ("private-key", "root/.ssh/id_ed25519"),
        ("private-key", "etc/ssl/private/web.pem"),
        ("cache", "home/u/.cache/foo"),
        ("browser-mail", "home/u/.mozilla/firefox/x.default/places.sqlite"),
        ("browser-mail", "home/u/Mail/inbox"),
        ("large-file", "home/u/big.bin"),
    }
    assert [f.severity for f in audit(ovl) if f.rule == "host-key"] == ["info"]


@pytest.mark.parametrize(
    ("members", "msg"),
    [
        ((("/etc/passwd", "file", "x"),), "absolute path"),
        ((("etc/../../root/x", "file", "x"),), r"contains '\.\.'"),
        ((("etc/esc", "symlink", "../../../etc/shadow"),), "leaves the tree"),
        ((("etc/lnk", "hardlink", "/etc/shadow"),), "hard link"),
        ((("etc/d", "symlink", "/"), ("etc/d/passwd", "file", "x")), "through the symlink"),
    ],
)
def test_unsafe_archives_rejected(members: tuple[tuple[str, str, str], ...], msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        read_apkovl(_targz(*members), label="evil.apkovl.tar.gz")


def test_absolute_symlink_inside_root_is_fine() -> None:
    ovl = read_apkovl(_targz(("etc/apk/cache", "symlink", "/media/sda4/cache"), ("etc/x", "symlink", "../etc/y")))
    assert len(ovl.members) == 2


def test_truncated_archives_rejected(tmp_path: Path) -> None:
    data = REAL.read_bytes()
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_apkovl(data[: len(data) // 2])
    p = tmp_path / "cut.apkovl.tar.gz"
    p.write_bytes(data[:-9])
    with pytest.raises(InputError, match=r"cut\.apkovl\.tar\.gz is not a complete \.tar\.gz"):
        read_apkovl(p)
    raw = gzip.decompress(data)
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_apkovl(gzip.compress(raw[:1000]))  # valid gzip, tar cut inside a member
    with pytest.raises(InputError, match="not a complete"):
        read_apkovl(b"not gzip at all")


def test_diff_real_vs_labkit_and_self() -> None:
    real = read_apkovl(REAL)
    assert diff(real, real).empty
    ours = read_apkovl(build_apkovl(ApkovlSpec(media_uuid="5c3f1a2b-1111-4c2d-9e8f-0123456789ab", no_login=True)))
    d = diff(real, ours)
    assert "etc/motd" in d.removed and "etc/rc.conf" in d.added
    changed = {c.path: c.what for c in d.changed}
    assert "etc/fstab" not in changed and "etc/hostname" not in changed and "etc/lbu/lbu.conf" not in changed
    assert changed["etc/apk/world"][0].startswith("content")
    assert "U etc/apk/world (content (59 -> 12 bytes))" in d.lines()


def test_cli_audit_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alpine", "audit", str(REAL), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 32 and out["total_size"] == 7682 and out["findings"] == []
    assert main(["alpine", "audit", str(REAL)]) == 0
    assert "32 entries, 7682 bytes of files, 4739 bytes compressed" in capsys.readouterr().out
    bad = tmp_path / "bad.apkovl.tar.gz"
    bad.write_bytes(_targz(("home/u/.cache/x", "file", "x")))
    assert main(["alpine", "audit", str(bad)]) == 1
    assert "warning: home/u/.cache/x" in capsys.readouterr().out
    bad.write_bytes(_targz(("/etc/x", "file", "x")))
    assert main(["alpine", "audit", str(bad)]) == 2
    assert "absolute path" in capsys.readouterr().err
    assert main(["alpine", "diff", str(REAL), str(REAL)]) == 0
