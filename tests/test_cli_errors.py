"""Every failure a user can cause ends in one clear error line and a fix (exit status 2), never a
traceback: bad options, missing or unusable paths, binary files, nan/inf/1e29 as numbers, a 10 MB line,
and a reader that goes away (``| head``)."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from labkit.cli.main import main
from labkit.core.console import SerialLogError, read_serial_log
from labkit.core.errors import InputError
from labkit.core.layout import parse_size
from labkit.core.text import dumps_json, parse_number, printable
from labkit.measure.bundle import BundleError, parse_uptime
from labkit.measure.parsers import parse_text

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, stderr) of ``labkit ARGV``; argparse's own errors exit through SystemExit."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def refused(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    rc, err = cli(argv, capsys)
    assert rc == 2, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    binary = tmp_path / "binary"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\0\0\0" + bytes(range(256)))
    latin = tmp_path / "latin1"
    latin.write_bytes(b"MemTotal: 4000000 kB\n\xe9t\xe9\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        4000000 kB\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    plain = tmp_path / "plain.txt"
    plain.write_text("not a folder\n")
    return {"binary": binary, "latin": latin, "meminfo": meminfo, "folder": folder, "plain": plain,
            "missing": tmp_path / "missing"}


def test_size_without_equals_and_bad_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["disk", "apply", "--device", "/dev/null", "--confirm", "000000000000", "--plan"]
    refused([*base, "--size", "data"], capsys, "argument --size", "is not ROLE=SIZE")
    for bad in ("nan", "inf", "1e29", "-5G", "99999999T"):
        refused([*base, "--size", f"data={bad}"], capsys, "size", "fix:")
    refused([*base, "--size", "root=1G"], capsys, "unknown partition role")
    for bad in ("nan", "inf", "1e29", "1E3", "0x10"):
        with pytest.raises(InputError):
            parse_size(bad)


def test_missing_paths_for_audit_predict_parse(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    refused(["alpine", "audit", str(files["missing"])], capsys, "does not exist")
    refused(["alpine", "audit", str(files["folder"])], capsys, "is a directory")
    refused(["alpine", "audit", str(files["binary"])], capsys, "truncated or corrupt")
    refused(["alpine", "diff", str(files["missing"]), str(files["missing"])], capsys, "does not exist")
    refused(["alpine", "predict", "--index", str(files["missing"]), "--world", "alpine-base"], capsys,
            "does not exist")
    refused(["alpine", "predict", "--index", str(files["folder"]), "--world", "alpine-base"], capsys,
            "is a directory")
    refused(["parse", str(files["missing"])], capsys, "does not exist")
    refused(["parse", str(files["folder"])], capsys, "is a directory")


def test_extract_into_a_file(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    refused(["alpine", "extract", str(files["missing"]), str(files["plain"])], capsys,
            "exists and is not a directory")
    assert files["plain"].read_text() == "not a folder\n"


def test_meminfo_missing_binary_or_wrong(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    base = ["nixos", "install", "--root", "/mnt", "--plan", "--ssh-key", KEY]
    refused([*base, "--meminfo", str(files["missing"])], capsys, "meminfo file", "does not exist", "--machine-ram")
    refused([*base, "--meminfo", str(files["binary"])], capsys, "binary")
    refused([*base, "--meminfo", str(files["latin"])], capsys, "not UTF-8")
    refused([*base, "--meminfo", str(files["folder"])], capsys, "is a directory")
    for line in ("MemTotal: nan kB", "MemTotal: inf kB", "MemTotal: 1e29 kB", "MemTotal: 99999999999999999 kB"):
        files["meminfo"].write_text(line + "\n")
        refused([*base, "--meminfo", str(files["meminfo"])], capsys, "MemTotal")
    out = files["folder"] / "labkit.nix"
    refused(["nixos", "config", "--out", str(out), "--ssh-key", KEY, "--machine-ram", "nan"], capsys, "size")
    refused(["nixos", "config", "--out", str(out), "--ssh-key", str(files["missing"]), "--machine-ram", "8G"],
            capsys, "SSH public key file", "does not exist")


def test_probe_missing_directory_or_binary(files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.apkovl.tar.gz"
    for what, needle in (("missing", "does not exist"), ("folder", "is a directory"), ("binary", "binary")):
        refused(["alpine", "apkovl", "--out", str(out), "--probe", str(files[what])], capsys, "--probe", needle)
    refused(["alpine", "apkovl", "--out", str(out), "--root-ssh-key", str(files["missing"])], capsys,
            "does not exist")
    assert not out.exists()


def test_numbers_nan_inf_and_huge_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # labkit lab's options come from the settings table (labkit/core/settings.py), which checks them
    for opt, bad, name in (("--boot-timeout", "nan", "boot_timeout_s"), ("--boot-timeout", "inf", "boot_timeout_s"),
                           ("--boot-timeout", "1e29", "boot_timeout_s"), ("--spread-threshold", "nan",
                           "spread_threshold"), ("--spread-threshold", "-inf", "spread_threshold"),
                           ("--boots", "1e3", "boots"), ("--boots", "0", "boots"), ("--memory", "nan", "memory_mib"),
                           ("--warmup", "-1", "warmup")):
        refused(["lab", f"{opt}={bad}"], capsys, name, "fix:")
    refused(["boot", "--disk", "x.img", "--system", "alpine", "--boot-timeout", "nan"], capsys,
            "argument --boot-timeout")
    refused(["run", "--timeout", "NaN"], capsys, "argument --timeout")
    refused(["run", "-p", "05_benchmark.warmup=NaN"], capsys, "holds NaN")
    refused(["run", "-p", "05_benchmark.warmup=1e29"], capsys, "out of range")
    refused(["run", "-p", "boots=inf"], capsys, "not a whole number")
    refused(["alpine", "audit", "x", "--large", "inf"], capsys, "argument --large")
    for bad in ("nan", "inf", "-inf", "1e29", "1_000", "0x1f", ""):
        with pytest.raises(InputError):
            parse_number(bad, "the value")
    assert parse_number("0.5", "x", minimum=0, maximum=1) == 0.5
    # a setting (the form, `-p name=value`, a settings file) is written the same way: ASCII digits only
    from labkit.core.settings import coerce

    for name, bad in (("boots", "1_000"), ("boots", "\u0661\u0662"), ("boots", "0x1f"), ("boots", "1e3"),
                      ("spread_threshold", "1_0.5"), ("spread_threshold", "1e3"), ("spread_threshold", "nan")):
        with pytest.raises(InputError, match=f"{name}="):
            coerce(name, bad)
    assert coerce("boots", " 4 ") == 4 and coerce("spread_threshold", ".5") == 0.5


def test_bundle_numbers_are_finite(tmp_path: Path) -> None:
    for bad in ("nan nan", "inf 1.0", "1e29 1.0", "12.5 -1", "1" * 40 + " 1"):
        with pytest.raises(BundleError):
            parse_uptime(bad)
    assert parse_uptime("12.34 5.67").uptime_s == 12.34
    log = tmp_path / "serial.log"
    for t in ("inf", "nan", "1e29", "-1.0"):
        log.write_text(f"{t}\tline\n")
        with pytest.raises(SerialLogError):
            read_serial_log(log)
    for fmt, text in (("meminfo", "MemTotal: " + "9" * 30 + " kB"), ("df", "Filesystem 1K-blocks Used Available "
                      "Use% Mounted on\n/dev/vda4 " + "9" * 30 + " 1 1 1% /"), ("systemd_time", "Startup finished "
                      "in " + "9" * 30 + "s (kernel) = 1s"), ("nix_store_du", "9" * 30 + "\t/nix/store/x")):
        with pytest.raises(BundleError):
            parse_text(text, fmt)


def test_json_never_prints_nan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = dumps_json({"a": float("nan"), "b": [float("inf"), 1.5], "c": {"d": float("-inf")}})
    assert json.loads(text) == {"a": None, "b": [None, 1.5], "c": {"d": None}} and "NaN" not in text
    # a bundle's uptime of nan is refused, not turned into NaN in --json
    b = tmp_path / "up.txt"
    b.write_text("nan nan\n")
    refused(["parse", str(b), "--format", "uptime", "--json"], capsys, "plain decimals")
    assert capsys.readouterr().out == ""


def test_a_10mb_line_gives_a_short_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "big.txt"
    f.write_text("MemTotal: 1 kB\n" + "A" * (10 * 1024 * 1024) + "\n")
    err = refused(["parse", str(f), "--format", "meminfo"], capsys, "section 'meminfo', line 2")
    assert len(err) < 600 and "10485760 characters" in err


def test_a_password_hash_given_as_the_file_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    h = "$6$saltsalt$" + "x" * 86
    err = refused(["nixos", "config", "--out", "x.nix", "--hashed-password-file", h, "--machine-ram", "8G"], capsys,
                  "holds a password hash, not a file name")
    assert h not in err and "saltsalt" not in err


def test_control_characters_in_errors_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["alpine", "audit", "/nonexistent/\x1b[31mred\x1b[0m"], capsys, "does not exist")
    assert "\x1b" not in err and "\\x1b[31mred" in err
    assert printable("a\x1bb\nc\u202e") == "a\\x1bb\\nc\\u202e"


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    """``labkit ... | head -n 1``: the reader leaves early; labkit stops without a traceback."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(4000):  # a listing of about 300 KB: more than a pipe holds
            ti = tarfile.TarInfo(f"etc/some/rather/long/directory/name/file-{i:05d}.conf")
            tar.addfile(ti, io.BytesIO(b""))
    ovl = tmp_path / "many.apkovl.tar.gz"
    ovl.write_bytes(gzip.compress(raw.getvalue()))
    res = subprocess.run(["sh", "-c", f'"{sys.executable}" -m labkit alpine audit "{ovl}" | head -n 1'],
                         capture_output=True, text=True, check=True)
    assert res.stdout.strip().endswith("etc/some/rather/long/directory/name/file-00000.conf")
    assert res.stderr == "", res.stderr
    proc = subprocess.Popen([sys.executable, "-m", "labkit", "alpine", "audit", str(ovl)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == "", err


def test_every_command_has_a_help_page(capsys: pytest.CaptureFixture[str]) -> None:
    """--help of every command and subcommand prints (argparse %-formats help texts: a bare % broke it)."""
    import argparse

    from labkit.cli.main import build_parser

    parser = build_parser()
    seen = 0

    def walk(p: argparse.ArgumentParser, argv: list[str]) -> None:
        nonlocal seen
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([*argv, "--help"])
        assert exc.value.code == 0, argv
        assert "usage:" in capsys.readouterr().out
        seen += 1
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*argv, name])

    walk(parser, [])
    assert seen > 20


def test_a_plan_for_a_device_that_is_not_there_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped device still gets its plan (a lesson prepared away from the machine), but never passes for a
    disk labkit has read: the plan says what it assumed and that apply would refuse."""
    rc, err = cli(["disk", "apply", "--plan", "--device", str(tmp_path / "sdz"), "--confirm", "x",
                   "--workdir", str(tmp_path / "w")], capsys)
    assert rc == 0
    assert f"{tmp_path / 'sdz'} is not a disk here" in err and "would refuse" in err and "labkit disks" in err
