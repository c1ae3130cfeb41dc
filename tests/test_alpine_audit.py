"""apkovl inspection: the real lbu archive, findings, bad archives rejected, diffs."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
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
    # made in a chroot without OpenRC (fixtures README): no etc/runlevels, which a real boot would feel
    assert [(f.severity, f.rule) for f in findings] == [("warning", "boot-services")]
    assert "no modloop" in findings[0].message and "no hostname" in findings[0].message
    assert "no networking" in findings[0].message


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
        ("boot-services", "etc/runlevels"),
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
    assert main(["alpine", "audit", str(REAL), "--json"]) == 1  # a warning: no runlevel links
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 32 and out["total_size"] == 7682
    assert [f["rule"] for f in out["findings"]] == ["boot-services"]
    assert main(["alpine", "audit", str(REAL)]) == 1
    assert "32 entries, 7682 bytes of files, 4739 bytes compressed" in capsys.readouterr().out
    bad = tmp_path / "bad.apkovl.tar.gz"
    bad.write_bytes(_targz(("home/u/.cache/x", "file", "x")))
    assert main(["alpine", "audit", str(bad)]) == 1
    assert "warning: home/u/.cache/x" in capsys.readouterr().out
    bad.write_bytes(_targz(("/etc/x", "file", "x")))
    assert main(["alpine", "audit", str(bad)]) == 2
    assert "absolute path" in capsys.readouterr().err
    assert main(["alpine", "diff", str(REAL), str(REAL)]) == 0


# -- services: what OpenRC runs from the overlay (mkinitfs initramfs-init.in l.781, OpenRC local.in) ----------
def _links(*pairs: str) -> tuple[tuple[str, str, bytes | str], ...]:
    return tuple((f"etc/runlevels/{p}", "symlink", f"/etc/init.d/{p.split('/')[1]}") for p in pairs)


def test_labkit_apkovl_has_every_boot_service() -> None:
    ovl = read_apkovl(build_apkovl(ApkovlSpec(no_login=True, probe="#!/bin/sh\n")))
    assert audit(ovl) == []


def test_apkovl_without_boot_services_is_flagged() -> None:
    # the old labkit apkovl: only default/local with the probe
    old = read_apkovl(_targz(("etc/local.d/p.start", "file", "#!/bin/sh\n"), *_links("default/local")))
    f = [x for x in audit(old) if x.rule == "boot-services"]
    assert len(f) == 1 and f[0].severity == "warning"
    for svc in ("sysinit/modloop", "boot/hostname", "boot/networking", "sysinit/devfs", "shutdown/killprocs"):
        assert svc in f[0].message
    # all but networking: only that one is named
    some = read_apkovl(_targz(*_links(*[f"{lvl}/{svc}" for lvl, svc in (
        ("sysinit", "devfs"), ("sysinit", "dmesg"), ("sysinit", "mdev"), ("sysinit", "hwdrivers"),
        ("sysinit", "modloop"), ("boot", "modules"), ("boot", "sysctl"), ("boot", "hostname"), ("boot", "bootmisc"),
        ("boot", "syslog"), ("shutdown", "mount-ro"), ("shutdown", "killprocs"), ("shutdown", "savecache"))])))
    msgs = [x.message for x in audit(some) if x.rule == "boot-services"]
    assert len(msgs) == 1 and msgs[0].startswith("missing runlevel links boot/networking:")
    assert "no networking" in msgs[0]
    # the marker instead of links: the initramfs adds the defaults itself
    marked = read_apkovl(_targz(("etc/.default_boot_services", "file", "")))
    assert [(x.severity, x.rule) for x in audit(marked)] == [("info", "default-boot-services")]


def test_local_scripts_that_never_run_are_flagged() -> None:
    spec = ApkovlSpec(no_login=True)  # every runlevel link, but no local.d script and no local
    members = [m for m in read_apkovl(build_apkovl(spec)).members]
    data = _targz(("etc/local.d/a.start", "file", "x"), *_links("boot/hostname"))
    found = {(x.rule, x.path) for x in audit(read_apkovl(data))}
    assert ("local-not-enabled", "etc/local.d/a.start") in found
    assert ("local-not-executable", "etc/local.d/a.start") in found  # _targz writes mode 0644
    assert not any(m.name.endswith("/local") for m in members)


# -- a whole disk, as nlplug-findfs scans it (every partition, top level only, vfat included) --------------------
def _disk(tmp_path: Path, esp: dict[str, bytes], alpine: dict[str, bytes], data: dict[str, bytes]) -> Path:
    """A GPT image: 1 ESP (FAT, mtools), 2 alpine (ext4, mke2fs -d), 3 data (ext4)."""
    mib = 1 << 20
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    os.truncate(img, 48 * mib)
    subprocess.run(["sgdisk", "-n", "1:1M:+12M", "-t", "1:ef00", "-n", "2:0:+16M", "-t", "2:8300",
                    "-n", "3:0:+12M", "-t", "3:8300", str(img)], check=True, capture_output=True)
    starts = {int(ln.split()[0]): int(ln.split()[1]) * 512 for ln in subprocess.run(
        ["sgdisk", "-p", str(img)], check=True, capture_output=True, text=True).stdout.splitlines()
        if ln.strip()[:1].isdigit()}
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    fat = tmp_path / "esp.img"
    subprocess.run(["mkfs.vfat", "-C", "-n", "ESP", str(fat), str(12 * 1024)], check=True, capture_output=True)
    for name, body in esp.items():
        src = tmp_path / "f"
        src.write_bytes(body)
        parents = name.split("/")[:-1]
        for i in range(1, len(parents) + 1):  # mmd makes one level at a time
            subprocess.run(["mmd", "-D", "s", "-i", str(fat), "::/" + "/".join(parents[:i])], env=env, check=False,
                           capture_output=True)
        subprocess.run(["mcopy", "-i", str(fat), str(src), "::/" + name], env=env, check=True, capture_output=True)
    parts = [fat]
    for label, files in (("alpine", alpine), ("data", data)):
        tree = tmp_path / label
        for name, body in files.items():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(body)
        tree.mkdir(exist_ok=True)
        part = tmp_path / f"{label}.img"
        subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-d", str(tree), str(part),
                        "12M"], check=True, capture_output=True)
        parts.append(part)
    with open(img, "r+b") as out:
        for n, part in enumerate(parts, start=1):
            out.seek(starts[n])
            out.write(part.read_bytes())
    return img


def test_disk_audit_finds_every_top_level_apkovl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.core.runner import Runner
    from labkit.systems.alpine.diskaudit import audit_disk

    ours = build_apkovl(ApkovlSpec(no_login=True, probe="#!/bin/sh\n"))
    img = _disk(tmp_path,
                esp={"stale.apkovl.tar.gz": REAL.read_bytes(), "EFI/BOOT/x.efi": b"x"},
                alpine={"alpinelab.apkovl.tar.gz": ours, "apks/.boot_repository": b"", "apks/x86_64/a.apk": b"a"},
                data={"backup/old.apkovl.tar.gz": ours})  # not top level: nlplug-findfs never sees it
    res = audit_disk(Runner(progress=None), img)
    by = {p.number: p for p in res.partitions}
    assert (by[1].fstype, by[1].apkovls, by[1].repositories) == ("vfat", ("stale.apkovl.tar.gz",), ())
    assert (by[2].fstype, by[2].apkovls, by[2].repositories) == ("ext4", ("alpinelab.apkovl.tar.gz",), ("apks",))
    assert (by[3].apkovls, by[3].repositories) == ((), ())
    rules = {(f.rule, f.path) for f in res.findings}
    assert ("apkovl-several", "stale.apkovl.tar.gz") in rules
    assert ("apkovl-elsewhere", "partition 1:stale.apkovl.tar.gz") in rules
    assert not any(f.rule == "no-boot-repository" for f in res.findings)
    # each apkovl found is audited too: the ESP's (the real lbu fixture) lacks the boot services
    assert [f.rule for f in res.apkovls["partition 1:stale.apkovl.tar.gz"][1]] == ["boot-services"]
    assert res.apkovls["partition 2:alpinelab.apkovl.tar.gz"][1] == []
    # the CLI takes the image where it takes an apkovl
    assert main(["alpine", "audit", str(img)]) == 1
    out = capsys.readouterr().out
    assert "partition 1" in out and "head -n 1" in out and "stale.apkovl.tar.gz" in out
    assert main(["alpine", "audit", str(img), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["partitions"][1]["repositories"] == ["apks"]


def test_disk_audit_one_apkovl_and_no_gpt(tmp_path: Path) -> None:
    from labkit.core.runner import Runner
    from labkit.systems.alpine.diskaudit import audit_disk

    ours = build_apkovl(ApkovlSpec(no_login=True, probe="#!/bin/sh\n"))
    img = _disk(tmp_path, esp={"EFI/BOOT/x.efi": b"x"},
                alpine={"alpinelab.apkovl.tar.gz": ours, "apks/.boot_repository": b""}, data={})
    res = audit_disk(Runner(progress=None), img)
    assert [f for f in res.findings if f.severity == "warning"] == []
    # a filesystem on the whole device (no partition table), as on a USB stick formatted whole
    tree = tmp_path / "whole"
    (tree / "apks").mkdir(parents=True)
    (tree / "apks" / ".boot_repository").write_bytes(b"")
    whole = tmp_path / "whole.img"
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(whole), "8M"], check=True,
                   capture_output=True)
    res = audit_disk(Runner(progress=None), whole)
    assert [(p.number, p.repositories) for p in res.partitions] == [(None, ("apks",))]
    assert [f.rule for f in res.findings] == ["no-apkovl"]
    with pytest.raises(InputError, match="does not exist"):
        audit_disk(Runner(progress=None), tmp_path / "nope.img")
