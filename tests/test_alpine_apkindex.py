"""The package-set predictor on a real-format APKINDEX.tar.gz built here."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest

from labkit.cli.main import main
from labkit.core.errors import InputError
from labkit.systems.alpine.apkindex import package_set, predict, read_apkindex, world_file

RECORDS = [
    # (P, V, S, I, D, p)
    ("musl", "1.2.5-r0", 411_000, 658_000, "", "so:libc.musl-x86_64.so.1=1"),
    ("busybox", "1.36.1-r29", 517_000, 955_000, "so:libc.musl-x86_64.so.1",
     "cmd:busybox=1.36.1-r29 cmd:sh=1.36.1-r29 /bin/sh"),
    ("alpine-baselayout", "3.6.5-r0", 8_800, 12_000, "alpine-baselayout-data=3.6.5-r0 /bin/sh", ""),
    ("alpine-baselayout-data", "3.6.5-r0", 11_000, 18_000, "", ""),
    ("apk-tools", "2.14.4-r0", 120_000, 254_000, "musl>=1.2.3_git20230424 so:libc.musl-x86_64.so.1", ""),
    ("alpine-base", "3.20.3-r0", 1_500, 4_096, "alpine-baselayout apk-tools busybox cmd:sh", ""),
    ("dillo", "3.0.5-r14", 400_000, 1_100_000, "so:libc.musl-x86_64.so.1 !dillo-doc", ""),
]


def _stream(files: dict[str, bytes], *, end: bool) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as t:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    body = raw.getvalue()
    if not end:  # abuild-sign strips the end-of-archive blocks of the signature tar
        body = body[: 512 + ((len(next(iter(files.values()))) + 511) // 512) * 512]
    return gzip.compress(body)


def make_apkindex(path: Path, records: list[tuple[str, str, int, int, str, str]] = RECORDS) -> Path:
    blocks = []
    for p, v, s, i, d, prov in records:
        lines = [f"C:Q1{'A' * 27}=", f"P:{p}", f"V:{v}", "A:x86_64", f"S:{s}", f"I:{i}", f"T:{p} package",
                 "U:https://alpinelinux.org", "L:MIT", f"o:{p}", "m:Natanael Copa <ncopa@alpinelinux.org>",
                 "t:1725000000", "c:0123456789abcdef0123456789abcdef01234567"]
        lines += [f"D:{d}"] if d else []
        lines += [f"p:{prov}"] if prov else []
        blocks.append("\n".join(lines) + "\n")
    index = ("\n".join(blocks) + "\n").encode()
    sig = _stream({".SIGN.RSA.alpine-devel@lists.alpinelinux.org-6165ee59.rsa.pub": b"\x01" * 512}, end=False)
    path.write_bytes(sig + _stream({"DESCRIPTION": b"v3.20.3-0-g0000000", "APKINDEX": index}, end=True))
    return path


def test_reads_real_format_and_predicts(tmp_path: Path) -> None:
    idx = make_apkindex(tmp_path / "APKINDEX.tar.gz")
    pkgs = read_apkindex(idx)
    assert [p.name for p in pkgs] == [r[0] for r in RECORDS]
    bb = pkgs[1]
    assert (bb.version, bb.size, bb.installed_size) == ("1.36.1-r29", 517_000, 955_000)
    pred = predict(pkgs, ["alpine-base"])
    names = [p.name for p in pred.packages]
    assert names == ["alpine-base", "alpine-baselayout", "alpine-baselayout-data", "apk-tools", "busybox", "musl"]
    assert pred.download_bytes == 1_500 + 8_800 + 11_000 + 120_000 + 517_000 + 411_000
    assert pred.ram_bytes == pred.installed_bytes == 4_096 + 12_000 + 18_000 + 254_000 + 955_000 + 658_000
    bigger = predict(pkgs, ["alpine-base", "dillo"])
    assert bigger.download_bytes == pred.download_bytes + 400_000  # conflicts (!dillo-doc) are skipped


def test_missing_packages_named(tmp_path: Path) -> None:
    pkgs = read_apkindex(make_apkindex(tmp_path / "APKINDEX.tar.gz"))
    with pytest.raises(InputError, match="the world names 'firefox', not in the APKINDEX"):
        predict(pkgs, ["alpine-base", "firefox"])
    broken = [r for r in RECORDS if r[0] != "musl"]
    pk2 = read_apkindex(make_apkindex(tmp_path / "b.tar.gz", broken))
    with pytest.raises(InputError, match=r"\(needed by apk-tools\) is not provided"):
        predict(pk2, ["apk-tools"])


def test_bad_index(tmp_path: Path) -> None:
    idx = make_apkindex(tmp_path / "APKINDEX.tar.gz")
    with pytest.raises(InputError, match="truncated"):
        read_apkindex(idx.read_bytes()[:-20])
    with pytest.raises(InputError, match="no APKINDEX member"):
        read_apkindex(_stream({"DESCRIPTION": b"x"}, end=True))


def test_package_sets() -> None:
    assert package_set("base") == ("alpine-base",)
    assert set(package_set("+dillo")) < set(package_set("+sylpheed")) < set(package_set("+firefox"))
    assert "firefox" in package_set("firefox")
    assert world_file(["b", "a", "a"]) == "a\nb\n"
    with pytest.raises(InputError, match="unknown package set"):
        package_set("+kde")


def test_cli_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idx = make_apkindex(tmp_path / "APKINDEX.tar.gz")
    assert main(["alpine", "predict", "--index", str(idx), "--world", "alpine-base", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["packages"] == 6 and out["download_bytes"] == 1_069_300
    assert main(["alpine", "predict", "--index", str(idx), "--set", "+firefox"]) == 2
    assert "not in the APKINDEX" in capsys.readouterr().err
