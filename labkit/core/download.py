"""Installation media: sha256 checks and resumable downloads (shared by the Alpine and NixOS media).

A download goes to ``<name>.part`` and resumes with an HTTP ``Range`` request; when a checksum is
known the file gets its final name only after its sha256 matches. A file the user gives is checked
the same way with :func:`verify_file`.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from labkit.core.errors import InputError, LabkitError

Progress = Callable[[int, int | None], None]  # (bytes so far, total or None)


class ChecksumMismatch(InputError):
    """A file's sha256 is not the published one."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha512_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha512(value: str | None) -> str:
    """``value`` as a lower-case 128-hex-digit sha512 (Alpine publishes sha512 for its minirootfs), or a clear
    error."""
    v = (value or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{128}", v):
        raise InputError(f"{(value or '')[:80]!r} is not a sha512 (128 hex digits)",
                         "give the 128-hex-digit sha512 published next to the file")
    return v


def _verified(path: Path, expected: str, algo: str, digest: Callable[[Path], str], what: str) -> Path:
    """``path`` if its ``algo`` digest is ``expected``; :class:`ChecksumMismatch` (problem + fix) if not."""
    if not path.is_file():
        raise InputError(f"{'image file' if what == 'image' else 'file'} {path} does not exist",
                         f"give the path of the downloaded {what}")
    got = digest(path)
    if got != expected:
        raise ChecksumMismatch(f"checksum mismatch for {path}: expected {algo} {expected}, got {got}",
                               "the file is damaged or another release: delete it and download it again")
    return path


def verify_file_sha512(path: Path, sha512: str) -> Path:
    """Return ``path`` if its sha512 is ``sha512``; raise :class:`ChecksumMismatch` if not."""
    return _verified(Path(path), check_sha512(sha512), "sha512", sha512_file, "file")


def check_sha256(value: str | None) -> str:
    """``value`` as a lower-case 64-hex-digit sha256, or a clear error."""
    v = (value or "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", v):
        raise InputError(f"{(value or '')[:80]!r} is not a sha256 (64 hex digits)",
                         "give the 64-hex-digit sha256 published next to the image")
    return v


def parse_sha256_file(text: str, filename: str | None = None) -> str:
    """The hash from a ``sha256sum``-style line (``<hex>  <name>``), for ``filename`` when given."""
    for line in text.splitlines():
        m = re.match(r"^([0-9a-fA-F]{64})(?:\s+\*?(\S+))?", line.strip())
        if m and (filename is None or m.group(2) in (None, filename)):
            return m.group(1).lower()
    raise InputError(f"no sha256 for {filename or 'the file'} in the checksum text",
                     "use the .sha256 file published next to the image")


def verify_file(path: Path, sha256: str) -> Path:
    """Return ``path`` if its sha256 is ``sha256``; raise :class:`ChecksumMismatch` (problem + fix) if not."""
    return _verified(Path(path), check_sha256(sha256), "sha256", sha256_file, "image")


def download(url: str, dest: Path, sha256: str | None, *, progress: Progress | None = None,
             timeout: float = 60.0, chunk: int = 1 << 20, sha512: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``); check ``sha256`` (or ``sha512``) when given; return
    ``dest``.

    An existing ``dest`` with the right checksum is used as is. A checksum mismatch deletes the
    partial file (the next run downloads afresh) and raises :class:`ChecksumMismatch`.
    """
    expected = check_sha256(sha256) if sha256 is not None else None
    expected512 = check_sha512(sha512) if sha512 is not None else None
    if expected is not None and dest.is_file() and sha256_file(dest) == expected:
        return dest
    if expected512 is not None and dest.is_file() and sha512_file(dest) == expected512:
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already complete
            resp = None
        else:
            raise LabkitError(f"download of {url} failed: HTTP {exc.code} {exc.reason}",
                              "check the URL and the network, then run again (the download resumes)") from None
    except (urllib.error.URLError, OSError) as exc:
        raise LabkitError(f"download of {url} failed: {exc}", "check the network, then run again (it resumes)") \
            from None
    if resp is not None:
        with resp:
            resumed = bool(have) and getattr(resp, "status", 200) == 206
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
    if expected is not None:
        got = sha256_file(part)
        if got != expected:
            part.unlink()
            raise ChecksumMismatch(f"downloaded {url}: checksum mismatch, expected sha256 {expected}, got {got}",
                                   "the download was damaged or another release was published: run again to "
                                   "download afresh")
    if expected512 is not None:
        got = sha512_file(part)
        if got != expected512:
            part.unlink()
            raise ChecksumMismatch(f"downloaded {url}: checksum mismatch, expected sha512 {expected512}, got {got}",
                                   "the download was damaged or another release was published: run again to "
                                   "download afresh")
    os.replace(part, dest)
    return dest
