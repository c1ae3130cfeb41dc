"""The NixOS minimal ISO: a catalog entry, and a resumable download checked by sha256 before use
(:mod:`labkit.core.download`). A path the user gives is checked the same way."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from labkit.core.download import (  # noqa: F401  (re-exported: the NixOS media API)
    ChecksumMismatch,
    Progress,
    check_sha256,
    download,
    sha256_file,
    verify_file,
)
from labkit.core.errors import InputError


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


def expected_sha256(image: Image, *, timeout: float = 30.0) -> str:
    """The pinned checksum, else the first field of the published ``.sha256`` file."""
    if image.sha256:
        return check_sha256(image.sha256)
    if not image.sha256_url:
        raise InputError(f"image {image.name} has no checksum", "pin its sha256 in the catalog")
    with urllib.request.urlopen(image.sha256_url, timeout=timeout) as resp:
        text = resp.read(4096).decode("ascii", "replace")
    return check_sha256(text.split()[0] if text.split() else "")


def obtain(image: Image, cache_dir: Path, *, user_path: Path | None = None, progress: Progress | None = None) -> Path:
    """The checked ISO: the user's file, or a (resumed) download into ``cache_dir``."""
    sha = expected_sha256(image)
    if user_path is not None:
        return verify_file(user_path, sha)
    return download(image.url, cache_dir / image.file_name, sha, progress=progress)
