"""Real signed v2 .apk files and APKINDEX, checked by the real apk-tools 2.14.4 of the Alpine minirootfs
(run on this host through its own musl loader): indexed, installed without --allow-untrusted, refused when
a signature is broken."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zlib
from pathlib import Path

import pytest
from paths import require_alpine_minirootfs

from labkit.core.download import ChecksumMismatch
from labkit.core.runner import Runner
from labkit.rehearsal.alpinerepo import apk_version, minirootfs_specs, write_real_alpine_repo
from labkit.rehearsal.apk import (
    MINIROOTFS_ENV,
    MINIROOTFS_NAME,
    ApkSpec,
    ApkTool,
    LabKey,
    lab_key,
    obtain_minirootfs,
    signature_member,
    tamper_data,
    unpack_minirootfs,
    write_repository,
)
from labkit.rehearsal.payloads import PkgEntry

HELLO = (PkgEntry("usr/bin/hello", "file", 0o755, 14, data=b"#!/bin/sh\necho\n"[:14]),
         PkgEntry("usr/bin/hi", "symlink", 0o777, 0, target="hello"),
         PkgEntry("etc/hello.conf", "file", 0o600, 3, data=b"x=1"))


@pytest.fixture(scope="module")
def tool(tmp_path_factory: pytest.TempPathFactory) -> ApkTool:
    return unpack_minirootfs(Runner(progress=None), require_alpine_minirootfs(), tmp_path_factory.mktemp("mr"))


def _specs() -> list[ApkSpec]:
    return [ApkSpec("hello", "1.0-r0", HELLO, description="says hello", license="MIT", depends=("meta",)),
            ApkSpec("meta", "0-r0", (), provides=("alpine-base=0-r0",))]


def _root(tmp: Path, key: LabKey) -> Path:
    root = tmp / "root"
    (root / "etc" / "apk" / "keys").mkdir(parents=True)
    shutil.copyfile(key.public, root / "etc" / "apk" / "keys" / key.name)
    return root


def _add(runner: Runner, tool: ApkTool, root: Path, repo: Path, *names: str, diskless: bool = False):
    flags = ["--initramfs-diskless-boot"] if diskless else []
    return runner.run(tool.argv("add", "--root", root, "--initdb", "--no-network", "--repository", repo, *flags,
                                *names), check=False)


def test_real_apk_indexes_and_installs_signed_packages(runner: Runner, tool: ApkTool, tmp_path: Path) -> None:
    key = lab_key(runner, tmp_path / "key")
    assert key.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    pub = key.public.read_bytes()
    assert lab_key(runner, tmp_path / "key") == key and key.public.read_bytes() == pub  # generated once
    apks = write_repository(runner, tool, key, _specs(), tmp_path / "repo", "labkit test")
    assert [p.name for p in apks] == ["hello-1.0-r0.apk", "meta-0-r0.apk"]
    # three gzip members: signature, control (.PKGINFO), data
    raw = apks[0].read_bytes()
    names = tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw)), mode="r:").getnames()
    assert names[:2] == [f".SIGN.RSA.{key.name}", ".PKGINFO"] and "usr/bin/hello" in names
    # apk verify: the package signature itself checks out against the key
    keys = _root(tmp_path, key) / "etc" / "apk" / "keys"
    ver = runner.run(tool.argv("verify", "--keys-dir", keys, *apks), check=False)
    assert ver.rc == 0 and ver.stdout.count("0 - OK") == 2, ver.stdout + ver.stderr
    index = (tmp_path / "repo" / "x86_64" / "APKINDEX.tar.gz").read_bytes()
    text = tarfile.open(fileobj=io.BytesIO(gzip.decompress(index))).extractfile("APKINDEX").read().decode()
    assert "P:hello\nV:1.0-r0\nA:x86_64\n" in text and "p:alpine-base=0-r0" in text and "D:meta" in text
    res = _add(runner, tool, tmp_path / "root", tmp_path / "repo", "hello", "alpine-base")
    assert res.rc == 0, res.stdout + res.stderr
    assert "(1/2) Installing meta (0-r0)" in res.stdout and "(2/2) Installing hello (1.0-r0)" in res.stdout
    assert "UNTRUSTED" not in res.stderr and "WARNING" not in res.stderr
    root = tmp_path / "root"
    assert (root / "usr/bin/hello").read_bytes() == HELLO[0].data
    assert (root / "usr/bin/hi").readlink() == Path("hello")
    assert (root / "etc/hello.conf").stat().st_mode & 0o777 == 0o600
    db = (root / "lib/apk/db/installed").read_text()
    assert "P:hello\nV:1.0-r0\n" in db and "R:hello.conf\na:0:0:600\n" in db and "f:" not in db


def test_untrusted_index_installs_nothing(runner: Runner, tool: ApkTool, tmp_path: Path) -> None:
    """A root without the lab key: apk says UNTRUSTED and installs nothing; under --initramfs-diskless-boot
    (force-broken-world, not allow-untrusted) it still ends OK with 0 packages and exit status 0."""
    key = lab_key(runner, tmp_path / "key")
    repo = tmp_path / "repo"
    write_repository(runner, tool, key, _specs(), repo, "labkit test")
    root = tmp_path / "root"
    (root / "etc" / "apk" / "keys").mkdir(parents=True)
    res = _add(runner, tool, root, repo, "hello")
    assert res.rc != 0 and "UNTRUSTED signature" in res.stderr, res.stderr
    assert not (root / "usr/bin/hello").exists()
    res = _add(runner, tool, root, repo, "hello", "alpine-base", diskless=True)
    assert res.rc == 0 and "UNTRUSTED signature" in res.stderr and "OK: 0 MiB in 0 packages" in res.stdout
    assert "Installing" not in res.stdout and not (root / "usr/bin/hello").exists()


def test_index_signed_by_another_key_is_refused(runner: Runner, tool: ApkTool, tmp_path: Path) -> None:
    """The index re-signed by another key under the same key name: BAD signature, nothing installed."""
    key = lab_key(runner, tmp_path / "key")
    other = lab_key(runner, tmp_path / "other")
    repo = tmp_path / "repo"
    write_repository(runner, tool, key, _specs(), repo, "labkit test")
    index = repo / "x86_64" / "APKINDEX.tar.gz"
    body = _strip_signature(index.read_bytes())
    index.write_bytes(signature_member(runner, other, body) + body)
    res = _add(runner, tool, _root(tmp_path, key), repo, "hello")
    assert res.rc != 0 and "BAD signature" in res.stderr, res.stderr
    assert not (tmp_path / "root" / "usr/bin/hello").exists()


def test_broken_signature_is_refused(runner: Runner, tool: ApkTool, tmp_path: Path) -> None:
    """A signature byte flipped in the index: BAD signature, nothing installed."""
    key = lab_key(runner, tmp_path / "key")
    repo = tmp_path / "repo"
    write_repository(runner, tool, key, _specs(), repo, "labkit test")
    index = repo / "x86_64" / "APKINDEX.tar.gz"
    body = _strip_signature(index.read_bytes())
    sig = gzip.decompress(index.read_bytes()[: len(index.read_bytes()) - len(body)])
    tampered = bytearray(sig)
    tampered[600] ^= 0xFF  # inside the signature's data (after the 512-byte header)
    index.write_bytes(gzip.compress(bytes(tampered), mtime=0) + body)
    res = _add(runner, tool, _root(tmp_path, key), repo, "hello")
    assert res.rc != 0 and "BAD signature" in res.stderr, res.stderr
    assert not (tmp_path / "root" / "usr/bin/hello").exists()


def test_tampered_package_data_is_refused(runner: Runner, tool: ApkTool, tmp_path: Path) -> None:
    """A package whose data member changed after it was signed and indexed (same files, compressed again):
    its datahash no longer matches, apk says BAD signature and does not record it."""
    key = lab_key(runner, tmp_path / "key")
    repo = tmp_path / "repo"
    hello = write_repository(runner, tool, key, _specs(), repo, "labkit test")[0]
    hello.write_bytes(tamper_data(hello.read_bytes()))
    res = _add(runner, tool, _root(tmp_path, key), repo, "hello", "alpine-base", diskless=True)
    assert res.rc == 1 and "ERROR: hello-1.0-r0: BAD signature" in res.stderr, res.stdout + res.stderr
    assert "1 error; 0 MiB in 1 packages" in res.stdout
    db = (tmp_path / "root" / "lib/apk/db/installed").read_text()
    assert "P:meta" in db and "P:hello" not in db
    assert not (tmp_path / "root" / "usr/bin/hello").exists()


def _strip_signature(index: bytes) -> bytes:
    """The unsigned index: what follows the first gzip member."""
    d = zlib.decompressobj(31)
    d.decompress(index)
    return d.unused_data


def test_rehearsal_repository_from_the_minirootfs(runner: Runner, tool: ApkTool, tmp_path: Path) -> None:
    """The repository re-packs the minirootfs's 14 packages as they are recorded in its database, adds the
    rehearsal base (providing alpine-base) and the payloads; the real apk installs it as the initramfs
    asks (``apk add --initramfs-diskless-boot <world> alpine-base``), running the packages' own scripts."""
    key = lab_key(runner, tmp_path / "key")
    infos = write_real_alpine_repo(runner, tool, key, ["busybox-static", "gdisk"], tmp_path / "tree",
                                   cache=tmp_path / "cache")
    mini = {s.name: s for s in minirootfs_specs(tool)}
    assert len(mini) == 14 and mini["apk-tools"].version == "2.14.4-r0" and mini["busybox"].version == "1.36.1-r29"
    assert mini["busybox-binsh"].extra == {"provider_priority": "100"} and "/bin/sh" in mini["busybox-binsh"].provides
    assert [n for n, _ in mini["busybox"].scripts] == ["post-install", "post-upgrade", "trigger"]
    by_name = {i.name: i for i in infos}
    assert by_name["musl"].installed_size == 667648  # I: of the minirootfs's database
    assert "-r" in by_name["gdisk"].version and ":" not in by_name["gdisk"].version
    assert (tmp_path / "tree" / "apks" / ".boot_repository").is_file()
    root = _root(tmp_path, key)
    res = _add(runner, tool, root, tmp_path / "tree" / "apks", "gdisk", "alpine-base", diskless=True)
    assert res.rc == 0 and "UNTRUSTED" not in res.stderr, res.stdout + res.stderr
    assert "Installing busybox (1.36.1-r29)" in res.stdout and "Installing labkit-rehearsal-base (0-r0)" in res.stdout
    assert "Executing busybox-1.36.1-r29.post-install" in res.stdout
    assert (root / "bin" / "ls").is_symlink()  # busybox --install -s, run by apk in the new root
    installed = (root / "lib/apk/db/installed").read_text()
    for name, ver in (("apk-tools", "2.14.4-r0"), ("busybox", "1.36.1-r29"), ("musl", "1.2.5-r0")):
        assert f"P:{name}\nV:{ver}\n" in installed
    assert (root / "etc" / "labkit-rehearsal").is_file() and (root / "etc" / "inittab").is_file()


@pytest.mark.parametrize(("debian", "apk"), [("1.0.9-2.1", "1.0.9-r2"), ("1:2.3.4-5ubuntu1", "2.3.4-r5"),
                                             ("0.11.0+ds-1", "0.11.0-r1"), ("20230311", "20230311-r0"),
                                             ("2.39.3-9", "2.39.3-r9"),
                                             ("130.0.6723.116-1~deb12u1", "130.0.6723.116-r1")])
def test_apk_version_of_debian_versions(debian: str, apk: str) -> None:
    assert apk_version(debian) == apk


def test_obtain_minirootfs(runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given (sha512-checked), $LABKIT_ALPINE_ROOTFS, a download (here from a file: URL, through the ISOs'
    download code) into the cache, the cached copy; none without network; a wrong file is refused."""
    src = require_alpine_minirootfs()
    monkeypatch.delenv(MINIROOTFS_ENV, raising=False)
    got, how = obtain_minirootfs(runner, src, tmp_path / "c")
    assert got == src and how.startswith("given")
    got, how = obtain_minirootfs(runner, None, tmp_path / "c", network=False)
    assert got is None and "no alpine_rootfs given" in how
    got, how = obtain_minirootfs(runner, None, tmp_path / "c", url=src.as_uri())
    assert got == tmp_path / "c" / MINIROOTFS_NAME and how.startswith("downloaded")
    got, how = obtain_minirootfs(runner, None, tmp_path / "c", network=False)
    assert got == tmp_path / "c" / MINIROOTFS_NAME and how.startswith("cached")
    got, how = obtain_minirootfs(runner, None, tmp_path / "d", url=(tmp_path / "nothing-here").as_uri())
    assert got is None and "download failed" in how
    monkeypatch.setenv(MINIROOTFS_ENV, str(src))
    got, how = obtain_minirootfs(runner, None, tmp_path / "e", network=False)
    assert got == src
    monkeypatch.delenv(MINIROOTFS_ENV)
    bad = tmp_path / MINIROOTFS_NAME
    bad.write_bytes(b"not the minirootfs")
    with pytest.raises(ChecksumMismatch, match="sha512"):
        obtain_minirootfs(runner, bad, tmp_path / "c")
    with pytest.raises(ChecksumMismatch, match="sha512"):
        obtain_minirootfs(runner, None, tmp_path / "f", url=bad.as_uri())


def test_without_the_minirootfs_the_build_falls_back_and_says_so(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No alpine_rootfs and no apk cache to look in: labkit's own tarball repository and install, labelled in
    the build (``packages``), the transcript (a warning) and the boot entry (quiet kept)."""
    from labkit.core.runner import read_transcript
    from labkit.rehearsal import build_alpine_tree, obtain_kernel
    from labkit.rehearsal.kernel import default_kernel_cache

    monkeypatch.delenv(MINIROOTFS_ENV, raising=False)
    runner = Runner(transcript=tmp_path / "t.jsonl", progress=None)
    build = build_alpine_tree(runner, obtain_kernel(runner, default_kernel_cache()), tmp_path / "tree", "base")
    assert build.file("packages") == "labkit-tarballs" and "quiet" in build.entry.cmdline.split()
    assert (tmp_path / "tree" / "apks" / "x86_64" / "LABKIT-INDEX").is_file()
    assert not (tmp_path / "tree" / "apks" / "x86_64" / "APKINDEX.tar.gz").exists()
    notes = [str(r.get("message", r)) for r in read_transcript(tmp_path / "t.jsonl") if r.get("event") == "note"]
    assert any("no Alpine minirootfs" in n and "not apk-tools" in n for n in notes), notes


def test_with_the_minirootfs_the_build_uses_the_real_apk(tmp_path: Path) -> None:
    """The tree: signed repository, an initramfs carrying the real apk (executable), its musl loader and the lab's
    public key, Alpine's verbose boot entry (no quiet: apk prints its lines)."""
    import subprocess

    from labkit.rehearsal import build_alpine_tree, obtain_kernel
    from labkit.rehearsal.kernel import default_kernel_cache

    runner = Runner(progress=None)
    tree = tmp_path / "tree"
    build = build_alpine_tree(runner, obtain_kernel(runner, default_kernel_cache()), tree, "base",
                              alpine_rootfs=require_alpine_minirootfs(), apk_cache=tmp_path / "cache")
    assert build.file("packages") == "apk-tools" and "quiet" not in build.entry.cmdline.split()
    assert "loglevel=4" in build.entry.cmdline.split()  # the kernel's console as quiet as under `quiet`
    names = {p.name for p in build.packages}
    assert {"busybox", "musl", "apk-tools", "labkit-rehearsal-base"} <= names and "busybox-static" not in names
    assert (tree / "apks" / "x86_64" / "APKINDEX.tar.gz").is_file() and (tree / "apks" / ".boot_repository").is_file()
    listing = subprocess.run(f"zcat {tree / 'boot' / 'initramfs-lts'} | cpio -itv --quiet", shell=True,
                             capture_output=True, text=True, check=True).stdout
    modes = {ln.split(" -> ")[0].split()[-1]: ln.split()[0] for ln in listing.splitlines() if ln.strip()}
    assert modes["sbin/apk"] == "-rwxr-xr-x" and modes["lib/ld-musl-x86_64.so.1"] == "-rwxr-xr-x"
    assert modes["etc/apk/keys/labkit-rehearsal-lab.rsa.pub"] == "-rw-r--r--"
    assert not any(n.endswith(".rsa") for n in modes)  # never the private half
    assert modes["bin/busybox"] == "-rwxr-xr-x" and modes["sbin/switch_root"].startswith("l")
    with open(require_alpine_minirootfs(), "rb") as fh, tarfile.open(fileobj=fh) as tf:  # Alpine's busybox
        alpine_bb = tf.extractfile("./bin/busybox").read()  # type: ignore[union-attr]
    unpacked = subprocess.run(f"zcat {tree / 'boot' / 'initramfs-lts'} | cpio -i --quiet --to-stdout bin/busybox",
                              shell=True, capture_output=True, check=True).stdout
    assert unpacked == alpine_bb
    assert (tmp_path / "cache" / "labkit-rehearsal-lab.rsa").is_file()
