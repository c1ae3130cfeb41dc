"""Alpine release catalog, checksummed download with resume, and ISO verification.

The published sha256 of each ISO lives in the ``.sha256`` file next to it on the mirror. Where
labkit could not confirm a value from the official mirror it stores ``None`` and fetches the
``.sha256`` sidecar at download time, or takes the value the user gives.
"""

from __future__ import annotations

import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from labkit.core.download import (
    Progress,
    download,
    parse_sha256_file,
    verify_file,
)
from labkit.core.errors import InputError
from labkit.core.runner import Runner, which

MIRROR = "https://dl-cdn.alpinelinux.org/alpine"
KERNEL_FLAVOR = {"standard": "lts", "extended": "lts", "virt": "virt"}


@dataclass(frozen=True)
class Release:
    version: str  # "3.20.3"
    flavor: str  # standard | extended | virt
    arch: str = "x86_64"
    sha256: str | None = None  # None: not confirmed here; read the published .sha256 sidecar

    @property
    def filename(self) -> str:
        return f"alpine-{self.flavor}-{self.version}-{self.arch}.iso"

    @property
    def url(self) -> str:
        branch = "v" + ".".join(self.version.split(".")[:2])
        return f"{MIRROR}/{branch}/releases/{self.arch}/{self.filename}"

    @property
    def sha256_url(self) -> str:
        return self.url + ".sha256"

    @property
    def signature_url(self) -> str:
        return self.url + ".asc"

    @property
    def kernel_flavor(self) -> str:
        return KERNEL_FLAVOR[self.flavor]


CATALOG: tuple[Release, ...] = tuple(
    Release(v, f) for v in ("3.20.3", "3.21.3") for f in ("standard", "extended", "virt")
)


def find_release(version: str, flavor: str = "standard", arch: str = "x86_64") -> Release:
    for r in CATALOG:
        if (r.version, r.flavor, r.arch) == (version, flavor, arch):
            return r
    known = sorted({f"{r.version}/{r.flavor}" for r in CATALOG})
    raise InputError(f"no Alpine release {version} {flavor} {arch} in the catalog", f"known: {', '.join(known)}")


def check_iso(path: Path, sha256: str | None = None) -> tuple[str, str]:
    """Verify an ISO the user gives: against ``sha256``, else the published ``<iso>.sha256`` beside it.

    Returns ``(sha256, source)`` with source ``"given"`` or the sidecar's path; refuses a mismatch,
    and an ISO with neither a hash nor a sidecar (an unchecked ISO is never used).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"ISO {path} does not exist", "give the path of the downloaded alpine-*.iso")
    if sha256:
        verify_file(path, sha256)
        return sha256.lower(), "given"
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        raise InputError(
            f"no checksum for {path}: neither a sha256 given nor {sidecar.name} beside it",
            "download the published .sha256 next to the ISO, or pass --alpine-iso-sha256 HEX",
        )
    expected = parse_sha256_file(sidecar.read_text(errors="replace"), path.name)
    verify_file(path, expected)
    return expected, str(sidecar)


def fetch(url: str, dest: Path, *, progress: Progress | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming it (checked by the caller)."""
    return download(url, dest, None, progress=progress)


def published_sha256(release: Release) -> str:
    if release.sha256:
        return release.sha256
    with urllib.request.urlopen(release.sha256_url, timeout=60) as resp:
        return parse_sha256_file(resp.read().decode(), release.filename)


def verify_signature(runner: Runner, iso: Path, signature: Path, key: Path) -> bool:
    """gpg check of the ``.asc`` with the given public key; False (and a note) when gpg is absent."""
    if which("gpg") is None:
        runner.note("gpg not installed: signature not checked (the sha256 was)")
        return False
    with tempfile.TemporaryDirectory() as home:
        env = {"GNUPGHOME": home}
        runner.run(["gpg", "--batch", "--import", str(key)], env=env, query=True)
        runner.run(["gpg", "--batch", "--verify", str(signature), str(iso)], env=env, query=True)
    return True


def obtain(runner: Runner, release: Release, dest_dir: Path, *, sha256: str | None = None,
           path: Path | None = None, key: Path | None = None, progress: Progress | None = None) -> Path:
    """The verified ISO: ``path`` if given, else a cached or fresh download into ``dest_dir``."""
    expected = sha256 or release.sha256
    if path is not None:
        if expected is None:
            raise InputError(f"no sha256 known for {path.name}", "pass the published sha256 (from the .sha256 file)")
        verify_file(path, expected)
        return path
    iso = dest_dir / release.filename
    expected = expected or published_sha256(release)
    with runner.step(f"alpine media {release.filename}"):
        if not iso.is_file():
            fetch(release.url, iso, progress=progress)
        try:
            verify_file(iso, expected)
        except InputError:
            iso.unlink(missing_ok=True)
            raise
        if key is not None:
            asc = fetch(release.signature_url, dest_dir / (release.filename + ".asc"))
            verify_signature(runner, iso, asc, key)
    return iso


#: The ``.alpine-release`` text of labkit's rehearsal ISO (tests/rehearsal_alpine_iso.py): never Alpine Linux.
REHEARSAL_RELEASE = "labkit-rehearsal"


def is_rehearsal_release(release: str) -> bool:
    """Whether an ISO's ``.alpine-release`` text is labkit's rehearsal marker."""
    return release.strip().startswith(REHEARSAL_RELEASE)
