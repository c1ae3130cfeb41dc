"""Values that reach Alpine's files are checked by the rules of the file they land in.

A newline in --exclude/--include/--mirror added lines to lbu.list or repositories, a newline in --media put
a shell command into the answer file (it ran when sh sourced it), ``--media-uuid 'x y"z'`` broke the fstab
line, and --world took ``open ssh``, ``../../etc/x``, newlines and empty names. Each is refused here, and
the answer file is sourced by a real ``sh`` to prove what it sets.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_alpine_apkindex import make_apkindex

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.systems.alpine.answers import AnswerSpec, answer_file, post_commands
from labkit.systems.alpine.apkovl import ApkovlSpec, build_apkovl
from labkit.systems.alpine.rules import check_world_entry


def members(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        return {m.name: (tar.extractfile(m).read().decode() if m.isfile() else "") for m in tar}  # type: ignore[union-attr]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--exclude", "home/lab/.cache\n+etc/shadow", "one lbu.list line"),
    ("--include", "home\n-etc", "one lbu.list line"),
    ("--include", "home/lab/My Documents", "one lbu.list line"),
    ("--include", "home/../../etc", "without '..'"),
    ("--mirror", "https://dl-cdn.alpinelinux.org/alpine/v3.20\nhttp://evil.example/alpine", "not one URL"),
    ("--mirror", "https://mirror.example/alpine v3.20", "not one URL"),
    ("--media", "sda4\ntouch /tmp/pwned", "bad LBU media"),
    ("--media", "../sda4", "bad LBU media"),
    ("--media-uuid", 'x y"z', "not a filesystem UUID"),
    ("--media-uuid", "5c3f1a2b-1111-4c2d-9e8f-0123456789ab\tnone", "not a filesystem UUID"),
    ("--hostname", "alpinelab\n", "bad hostname"),
    ("--root-size", "512m\n", "root tmpfs size"),
])
def test_apkovl_options_cannot_add_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str,
                                         value: str, message: str) -> None:
    out = tmp_path / "x.apkovl.tar.gz"
    rc, err = cli(["alpine", "apkovl", "--out", str(out), "--world", "alpine-base", option, value], capsys)
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2  # the problem (the value shown escaped) and the fix
    assert not out.exists()


@pytest.mark.parametrize("name", ["open ssh", "../../etc/x", "busybox\nopenssh", "", "-foo", "foo=", "foo=1.0~abc",
                                  "foo>=1.0_x", "foo=" + "1" * 18, "foo\tbar", "foo@", "so:libc.musl-x86_64.so.1",
                                  "!busybox", "foo><Q1abc"])
def test_world_takes_only_package_names(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    with pytest.raises(InputError):
        check_world_entry(name)
    rc, err = cli(["alpine", "apkovl", "--out", str(tmp_path / "o.tar.gz"), "--world", "alpine-base", name], capsys)
    assert rc == 2 and "Traceback" not in err
    assert not (tmp_path / "o.tar.gz").exists()


def test_good_world_entries_are_written_one_per_line() -> None:
    world = ("alpine-base", "py3-pip", "gtk+3.0", "font-noto_cjk", "busybox=1.36.1-r29", "musl>=1.2.5",
             "openssh~9.7", "firefox@edge", "linux-lts<6.7_rc1-r0")
    for w in world:
        assert check_world_entry(w) == w
    text = members(build_apkovl(ApkovlSpec(world=world, no_login=True)))["etc/apk/world"]
    assert text.splitlines() == sorted(world)


def test_valid_values_land_as_exactly_one_line_each() -> None:
    spec = ApkovlSpec(no_login=True, media="vda4", media_uuid="5c3f1a2b-1111-4c2d-9e8f-0123456789ab",
                      mirror="https://dl-cdn.alpinelinux.org/alpine/v3.20",
                      lbu_include=("home/lab", "etc/ssh/*.conf"), lbu_exclude=("home/lab/.cache",))
    files = members(build_apkovl(spec))
    assert files["etc/apk/protected_paths.d/lbu.list"] == "+home/lab\n+etc/ssh/*.conf\n-home/lab/.cache\n"
    assert files["etc/apk/repositories"].splitlines() == [
        "/media/vda4/apks", "https://dl-cdn.alpinelinux.org/alpine/v3.20/main",
        "https://dl-cdn.alpinelinux.org/alpine/v3.20/community"]
    fstab = files["etc/fstab"].splitlines()[-1].split()
    assert fstab == ["UUID=5c3f1a2b-1111-4c2d-9e8f-0123456789ab", "/media/vda4", "ext4", "noauto,ro", "0", "0"]


def test_answer_file_is_sourced_by_sh_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The answer file is sourced by sh: what sh sets is exactly what labkit meant, and a newline in
    --media (which used to end the header comment and run as a command) is refused."""
    spec = AnswerSpec(hostname="lab-1", media="nvme0n1p4", user="juser", timezone="Europe/Paris",
                      interfaces="auto lo\niface lo inet loopback\n# a comment; with 'quotes' & (parens)\n")
    f = tmp_path / "answers"
    f.write_text(answer_file(spec))
    marker = tmp_path / "ran"
    script = f'. "{f}"; printf "%s\\0" "$HOSTNAMEOPTS" "$LBUOPTS" "$INTERFACESOPTS" "$TIMEZONEOPTS" "$USEROPTS"'
    got = subprocess.run(["sh", "-c", script], capture_output=True, check=True).stdout.split(b"\0")[:-1]
    assert [g.decode() for g in got] == ["lab-1", "/media/nvme0n1p4", spec.interfaces, "Europe/Paris",
                                         "-a -u -g audio,input,video,netdev juser"]
    assert not marker.exists()
    for bad in (f"sda4\ntouch {marker}", "sda4;touch x", "$(reboot)"):
        with pytest.raises(InputError, match="bad LBU media"):
            AnswerSpec(media=bad)
        rc, err = cli(["alpine", "answers", "--media", bad, "--out", str(tmp_path / "a2")], capsys)
        assert rc == 2 and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "a2").exists()
    with pytest.raises(InputError, match="one OpenSSH public key line"):
        AnswerSpec(user="juser", user_ssh_key="ssh-ed25519 AAAA x\nssh-rsa BBBB evil")
    with pytest.raises(InputError, match=r"lbu\.list line"):
        post_commands(("home\nrm -rf /",))
    assert post_commands(("/etc/ssh",)) == [["lbu", "include", "/etc/ssh"], ["lbu", "commit", "-d"]]


def test_index_refuses_packages_the_media_does_not_carry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The diskless boot sets APK_FORCE_BROKEN_WORLD and drops a missing package silently: with --index
    labkit refuses it first, naming it."""
    idx = make_apkindex(tmp_path / "APKINDEX.tar.gz")
    out = tmp_path / "ovl.tar.gz"
    rc, err = cli(["alpine", "apkovl", "--no-login", "--out", str(out), "--index", str(idx),
                   "--world", "alpine-base", "dillo", "firefox", "nosuchpkg"], capsys)
    assert rc == 2 and "'firefox'" in err and "'nosuchpkg'" in err and not out.exists()
    rc, err = cli(["alpine", "apkovl", "--no-login", "--out", str(out), "--index", str(idx), "--world",
                   "alpine-base", "dillo@edge", "busybox>=1.36"], capsys)
    assert rc == 0, err
    assert members(out.read_bytes())["etc/apk/world"].split() == ["alpine-base", "busybox>=1.36", "dillo@edge"]
