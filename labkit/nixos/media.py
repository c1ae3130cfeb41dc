"""The NixOS minimal ISO: a catalog entry, and a resumable download checked by sha256 before use.

A download goes to ``<name>.part`` and resumes with an HTTP ``Range`` request; the file gets its
final name only after its sha256 matches. A path the user gives is checked the same way.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import InputError, LabkitError

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class ChecksumMismatch(LabkitError):
    pass


@dataclass(frozen=True)
class Image:
    name: str
    version: str
    url: str
    sha256: str | None  # pinned; None = take it from sha256_url (a published checksum file)
    sha256_url: str | None = None
    filename: str = ""

    @property
    def file_name(self) -> str:
        return self.filename or self.url.rsplit("/", 1)[-1]


#: The NixOS minimal installer ISO (x86_64). The release directory publishes ``<iso>.sha256``
#: next to the image; pin ``sha256`` here once a release has been checked by hand.
NIXOS_MINIMAL = Image(
    name="nixos-minimal",
    version="24.11",
    url="https://channels.nixos.org/nixos-24.11/latest-nixos-minimal-x86_64-linux.iso",
    sha256=None,
    sha256_url="https://channels.nixos.org/nixos-24.11/latest-nixos-minimal-x86_64-linux.iso.sha256",
)

CATALOG: dict[str, Image] = {NIXOS_MINIMAL.name: NIXOS_MINIMAL}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_hex(value: str) -> str:
    v = value.strip().lower()
    if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise InputError(f"not a sha256 checksum: {value[:80]!r}", "give the 64-hex-digit sha256 of the image")
    return v


def expected_sha256(image: Image, *, timeout: float = 30.0) -> str:
    """The pinned checksum, else the first field of the published ``.sha256`` file."""
    if image.sha256:
        return _check_hex(image.sha256)
    if not image.sha256_url:
        raise InputError(f"image {image.name} has no checksum", "pin its sha256 in the catalog")
    with urllib.request.urlopen(image.sha256_url, timeout=timeout) as resp:
        text = resp.read(4096).decode("ascii", "replace")
    return _check_hex(text.split()[0] if text.split() else "")


def verify_file(path: Path, sha256: str) -> Path:
    """Return ``path`` if its sha256 is ``sha256``, else raise (problem + fix)."""
    if not path.is_file():
        raise InputError(f"image file {path} does not exist", "give the path of the downloaded ISO")
    got = sha256_file(path)
    if got != _check_hex(sha256):
        raise ChecksumMismatch(f"{path} has sha256 {got}, expected {sha256}",
                               "the file is damaged or another release: delete it and download again")
    return path


def download(url: str, dest: Path, sha256: str, *, progress: Progress | None = None, timeout: float = 60.0,
             chunk: int = 1 << 20) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), then check ``sha256``; return ``dest``.

    An existing ``dest`` with the right checksum is used as is.
    """
    sha256 = _check_hex(sha256)
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # already complete
            resp = None
        else:
            raise LabkitError(f"download of {url} failed: HTTP {exc.code} {exc.reason}",
                              "check the URL and the network, then run again (the download resumes)") from None
    except (urllib.error.URLError, OSError) as exc:
        raise LabkitError(f"download of {url} failed: {exc}", "check the network, then run again (it resumes)") \
            from None
    if resp is not None:
        with resp:
            resumed = have and getattr(resp, "status", 200) == 206
            if not resumed:
                have = 0  # the server sent the whole file
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as fh:
                done = have
                while block := resp.read(chunk):
                    fh.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total)
    got = sha256_file(part)
    if got != sha256:
        part.unlink()
        raise ChecksumMismatch(f"downloaded {url}: sha256 {got}, expected {sha256}",
                               "the download was damaged or the release changed: run again to download afresh")
    os.replace(part, dest)
    return dest


def obtain(image: Image, cache_dir: Path, *, user_path: Path | None = None, progress: Progress | None = None) -> Path:
    """The checked ISO: the user's file, or a (resumed) download into ``cache_dir``."""
    sha = expected_sha256(image)
    if user_path is not None:
        return verify_file(user_path, sha)
    return download(image.url, cache_dir / image.file_name, sha, progress=progress)
