"""The declarative apkovl: byte-reproducible and shaped like the real lbu archive."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

import pytest
from paths import ALPINE_FIXTURES

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.systems.alpine.apkovl import (
    INITRAMFS_DEFAULT_SERVICES,
    ApkovlSpec,
    User,
    build_apkovl,
    check_password_hash,
    read_password_hash_file,
    runlevel_links,
    write_apkovl,
)
from labkit.systems.alpine.audit import audit, read_apkovl

FIX = ALPINE_FIXTURES
REAL = FIX / "alpinelab.apkovl.tar.gz"
HASH = "$6$saltsalt$" + "a" * 86
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOIiHcbg/7ytfLFHUNLRgEAubFz/13SwXBOM/05GNZe4 juser@example.com"


def _spec(**kw: object) -> ApkovlSpec:
    base: dict[str, object] = dict(
        media_uuid="5c3f1a2b-1111-4c2d-9e8f-0123456789ab", lbu_include=("home",), lbu_exclude=("home/juser/.cache",),
        users=(User("juser", gecos="Lab User", shell="/bin/bash", password_hash=HASH),), root_ssh_keys=(KEY,),
        probe="#!/bin/sh\ncat /proc/uptime\n", root_size="75%",
        world=("alpine-baselayout", "alpine-keys", "apk-tools", "busybox", "libc-utils"),
    )
    base.update(kw)
    return ApkovlSpec(**base)  # type: ignore[arg-type]


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        return {m.name: m for m in t.getmembers()}


def _texts(data: bytes) -> dict[str, str]:
    import io

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as t:
        return {m.name: t.extractfile(m).read().decode() for m in t.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_byte_identical_across_builds(tmp_path: Path) -> None:
    a = write_apkovl(_spec(), tmp_path / "a.apkovl.tar.gz").read_bytes()
    (tmp_path / "d").mkdir()
    b = write_apkovl(_spec(), tmp_path / "d").read_bytes()
    assert a == b and (tmp_path / "d" / "alpinelab.apkovl.tar.gz").is_file()
    assert a[:10] == REAL.read_bytes()[:10] == bytes.fromhex("1f8b0800000000000003")  # gzip header as busybox
    names = [m.name for m in _members(a).values()]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert {m.mtime for m in _members(a).values()} == {1_700_000_000}
    assert build_apkovl(_spec(hostname="other")) != a


def test_matches_the_real_lbu_apkovl_conventions() -> None:
    ours, real = _members(build_apkovl(_spec())), _members(REAL.read_bytes())
    ours_raw, real_raw = gzip.decompress(build_apkovl(_spec())), gzip.decompress(REAL.read_bytes())
    assert ours_raw[257:265] == real_raw[257:265] == b"ustar  \0"  # GNU headers, as busybox tar writes
    assert all(not n.startswith("/") and n.split("/")[0] in {"etc", "home", "root"} for n in ours)
    common = sorted(set(ours) & set(real))
    assert len(common) >= 12, common
    for name in common:
        o, r = ours[name], real[name]
        assert (o.type, o.mode, o.uid, o.gid, o.uname, o.gname) == (r.type, r.mode, r.uid, r.gid, r.uname, r.gname) or \
            name.startswith("home/"), name
        if o.issym():
            assert o.linkname == r.linkname
    sh = ours["etc/shadow"]
    assert sh.mode == 0o640 and (sh.uname, sh.gname) == ("root", "shadow")
    # the directory entry is stored with a trailing slash, like lbu's etc/lbu/
    assert b"etc/lbu/\0" in ours_raw and b"etc/lbu/\0" in real_raw
    # content equal to what setup-lbu / lbu include / adduser wrote
    ot, rt = _texts(build_apkovl(_spec())), _texts(REAL.read_bytes())
    for name in ("etc/hostname", "etc/hosts", "etc/network/interfaces", "etc/fstab", "etc/lbu/lbu.conf",
                 "etc/apk/protected_paths.d/lbu.list", "etc/apk/world"):
        if name == "etc/apk/protected_paths.d/lbu.list":
            assert ot[name] == "+home\n+root/.ssh\n+home/juser\n-home/juser/.cache\n"
            assert rt[name] == "+home\n-home/juser/.cache\n"
        else:
            assert ot[name] == rt[name], name
    assert ot["etc/passwd"] == rt["etc/passwd"] and ot["etc/group"] == rt["etc/group"]
    assert ot["etc/shadow"].splitlines()[:-1] == rt["etc/shadow"].splitlines()[:-1]
    assert ot["etc/shadow"].splitlines()[-1].split(":")[3:] == rt["etc/shadow"].splitlines()[-1].split(":")[3:]


def test_probe_runlevel_rc_logger_ssh_and_cache() -> None:
    data = build_apkovl(_spec())
    m, t = _members(data), _texts(data)
    assert m["etc/local.d/labkit-probe.start"].mode == 0o755
    assert m["etc/runlevels/default/local"].issym() and m["etc/runlevels/default/local"].linkname == "/etc/init.d/local"
    assert "etc/runlevels/default/sshd" not in m  # root has a key, but the world installs no SSH server
    assert 'rc_logger="YES"' in t["etc/rc.conf"]
    assert m["root/.ssh"].mode == 0o700 and m["root/.ssh/authorized_keys"].mode == 0o600
    assert t["root/.ssh/authorized_keys"] == KEY + "\n"
    assert m["etc/apk/cache"].linkname == "/media/sda4/cache"
    assert t["etc/apk/repositories"] == "/media/sda4/apks\n"
    assert (m["home/juser"].uid, m["home/juser"].uname) == (1000, "juser")
    assert _spec().kernel_args() == ["rootflags=size=75%"]
    ovl = read_apkovl(data)
    assert audit(ovl) == []  # labkit's own overlay is clean
    mirror = _texts(build_apkovl(_spec(mirror="https://dl-cdn.alpinelinux.org/alpine/v3.20/", media="vda4")))
    assert mirror["etc/apk/repositories"].splitlines() == [
        "/media/vda4/apks", "https://dl-cdn.alpinelinux.org/alpine/v3.20/main",
        "https://dl-cdn.alpinelinux.org/alpine/v3.20/community"]
    assert "LBU_MEDIA=vda4" in mirror["etc/lbu/lbu.conf"]


def test_password_hashes_validated() -> None:
    assert check_password_hash(HASH, "x") == HASH
    assert check_password_hash("!", "x") == "!"
    with pytest.raises(InputError, match="plaintext"):
        ApkovlSpec(root_password_hash="hunter2")
    with pytest.raises(InputError, match="plaintext"):
        User("juser", password_hash="secret")
    with pytest.raises(InputError, match="yescrypt"):
        User("juser", password_hash="$y$j9T$abc$" + "x" * 43)
    with pytest.raises(InputError, match="well-formed"):
        User("juser", password_hash="$6$short")
    shadow = _texts(build_apkovl(_spec(root_password_hash=HASH, users=(User("juser", password_hash=HASH),))))
    assert shadow["etc/shadow"].startswith(f"root:{HASH}:") and f"juser:{HASH}:" in shadow["etc/shadow"]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"hostname": "bad host"}, "bad hostname"),
        ({"media": "sda4;rm"}, "bad LBU media"),
        ({"lbu_include": ("/etc",)}, "relative"),
        ({"lbu_exclude": ("home/../etc",)}, "relative"),
        ({"root_size": "lots"}, "root tmpfs size"),
        ({"world": ()}, "world is empty"),
        ({"root_ssh_keys": ("-----BEGIN OPENSSH PRIVATE KEY-----",)}, "not an SSH public key"),
        ({"users": (User("a", groups=("nosuch",), password_hash=HASH),)}, "unknown groups"),
        ({"users": (User("a"), User("a", uid=1001))}, "duplicate"),
        ({"extra_files": (("/etc/x", b"", 0o644),)}, "relative path"),
    ],
)
def test_bad_declarations(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        build_apkovl(_spec(**kw))


# -- runlevels: what a diskless setup-alpine system commits (mkinitfs initramfs-init.in, alpine-conf) --------
SETUP_ALPINE_RUNLEVELS = {
    # mkinitfs 3.10.1 initramfs-init.in l.783-797 (rc_add ... sysinit/boot/shutdown), l.895-899 (hwclock)
    "sysinit": {"devfs", "dmesg", "mdev", "hwdrivers", "modloop"},
    "boot": {"modules", "sysctl", "hostname", "bootmisc", "syslog", "hwclock",
             "networking", "seedrng"},  # alpine-conf 3.18.1 setup-alpine.in l.229-230
    "default": {"crond", "local"},  # setup-alpine.in l.231-241; local: labkit's local.d probe
    "shutdown": {"mount-ro", "killprocs", "savecache"},
}


def test_runlevel_links_are_what_setup_alpine_commits() -> None:
    m = _members(build_apkovl(_spec()))
    links = {n: t for n, t in m.items() if n.startswith("etc/runlevels/")}
    got: dict[str, set[str]] = {}
    for name, ti in links.items():
        _etc, _rl, level, svc = name.split("/")
        assert ti.issym() and ti.linkname == f"/etc/init.d/{svc}", name  # absolute, as rc_add/rc-update make them
        assert (ti.uid, ti.gid, ti.mode) == (0, 0, 0o777)
        got.setdefault(level, set()).add(svc)
    assert got == SETUP_ALPINE_RUNLEVELS
    assert "etc/.default_boot_services" not in m  # see DEFAULT_BOOT_SERVICES_MARKER: the links are explicit
    assert not any(n == "etc/runlevels" or (n.startswith("etc/runlevels/") and m[n].isdir()) for n in m)
    # the initramfs's own list, in its order (firstboot left out: it deletes itself on its first start)
    assert [s for lvl, s in INITRAMFS_DEFAULT_SERVICES] == [
        "devfs", "dmesg", "mdev", "hwdrivers", "modloop", "modules", "sysctl", "hostname", "bootmisc", "syslog",
        "mount-ro", "killprocs", "savecache"]


def test_runlevels_off_leaves_only_local_and_ssh_server() -> None:
    spec = _spec(runlevels=False, world=("alpine-base", "openssh"), extra_services=(("default", "chronyd"),))
    assert runlevel_links(spec) == [("default", "sshd"), ("default", "local"), ("default", "chronyd")]
    with pytest.raises(InputError, match="bad service"):
        _spec(extra_services=(("later", "x"),))
    with pytest.raises(InputError, match="bad service"):
        _spec(extra_services=(("default", "../x"),))


# -- nobody can log in: refused unless no_login (the Alpine twin of the NixOS lock-out) ---------------------
def test_locked_apkovl_is_refused_unless_no_login() -> None:
    with pytest.raises(InputError, match="nobody could log in") as exc:
        ApkovlSpec()
    assert "--no-login" in str(exc.value)
    with pytest.raises(InputError, match="nobody could log in"):
        ApkovlSpec(users=(User("juser"),))  # a user with a locked password and no key
    # keys are a way in only with an SSH server in the world
    with pytest.raises(InputError, match="no SSH server"):
        ApkovlSpec(root_ssh_keys=(KEY,))
    spec = ApkovlSpec(root_ssh_keys=(KEY,), world=("alpine-base", "openssh"))
    assert ("default", "sshd") in runlevel_links(spec)
    assert ("default", "dropbear") in runlevel_links(ApkovlSpec(users=(User("juser", ssh_keys=(KEY,)),),
                                                                 world=("alpine-base", "dropbear")))
    assert ApkovlSpec(root_password_hash=HASH).root_password_hash == HASH
    assert ApkovlSpec(users=(User("juser", password_hash=HASH),)).users
    shadow = _texts(build_apkovl(ApkovlSpec(no_login=True)))["etc/shadow"]
    assert shadow.startswith("root:*:")


def test_password_hash_files(tmp_path: Path) -> None:
    f = tmp_path / "hash"
    f.write_text(HASH + "\n")
    assert read_password_hash_file(f, "root") == HASH
    f.write_text("!\n")
    assert read_password_hash_file(f, "root") == "!"
    for text, msg in ((HASH + "\n\n", "several lines"), (" " + HASH, "blanks"), ("", "empty"),
                      ("$y$j9T$abcdefgh$" + "x" * 43 + "\n", "yescrypt"), ("hunter2\n", "plaintext"),
                      ("$6$rounds=10$saltsalt$" + "a" * 86, "rounds=10")):
        f.write_text(text)
        with pytest.raises(InputError, match=msg) as exc:
            read_password_hash_file(f, "root")
        assert "hunter2" not in str(exc.value) and "x" * 43 not in str(exc.value)
    with pytest.raises(InputError, match="does not exist"):
        read_password_hash_file(tmp_path / "missing", "root")
    with pytest.raises(InputError, match=r"over labkit.s limit"):  # a huge file is not read whole
        f.write_text("$6$" + "a" * 5000)
        read_password_hash_file(f, "root")


def test_cli_hashes_from_files_and_no_login(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ovl"
    out.mkdir()
    assert main(["alpine", "apkovl", "--out", str(out)]) != 0
    assert "nobody could log in" in capsys.readouterr().err
    assert main(["alpine", "apkovl", "--out", str(out), "--root-password-hash", HASH]) != 0
    err = capsys.readouterr().err
    assert "--root-password-hash-file" in err and HASH not in err
    assert main(["alpine", "apkovl", "--out", str(out), "--no-login"]) == 0
    assert "measurement-only" in capsys.readouterr().out
    f = tmp_path / "hash"
    f.write_text(HASH + "\n")
    assert main(["alpine", "apkovl", "--out", str(out), "--hostname", "h2", "--root-password-hash-file", str(f)]) == 0
    assert _texts((out / "h2.apkovl.tar.gz").read_bytes())["etc/shadow"].startswith(f"root:{HASH}:")
