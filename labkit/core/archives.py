"""Read a ``.tar.gz`` a user gives (an apkovl, an APKINDEX) as a stream, within limits.

``gzip.decompress`` of a small file can need gigabytes (a gzip bomb: 10 MB that inflates to 10 GB);
the whole-archive readers drove ``alpine audit`` and ``alpine predict`` to 12.6 GB RSS. Here the
compressed input is read from the file in pieces, the decompressed stream is counted as it is read,
and the tar is walked in stream mode (``r|``), so memory stays bounded by one read buffer plus what
the caller keeps. Past a limit (compressed size, decompressed bytes, member count, one member's size)
the read stops with :class:`ArchiveTooLarge` naming the limit. Concatenated gzip members (an APKINDEX
or a ``.apk``: signature + control + data) are one stream, as ``gzip -d`` reads them.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from labkit.core.errors import InputError

MiB = 1024 * 1024


@dataclass(frozen=True)
class ArchiveLimits:
    """How much of an archive labkit will read (each limit can be raised by the caller)."""

    max_compressed: int = 512 * MiB  # the .tar.gz file itself
    max_total: int = 2048 * MiB  # decompressed bytes of the whole tar stream (and of all member data)
    max_members: int = 50_000  # entries in the tar
    max_member: int = 1024 * MiB  # one member's size (a sparse member counts with its full size)


class ArchiveTooLarge(InputError):
    """An archive exceeds one of labkit's limits (a gzip bomb or the wrong file)."""


#: Decompressed bytes one tar header may take (with its PAX/GNU long-name/sparse extensions): tarfile
#: reads those into memory whole, so they get a budget of their own.
MAX_HEADER_BYTES = 16 * MiB


def _too_large(label: str, limit: int) -> ArchiveTooLarge:
    return ArchiveTooLarge(
        f"{label} decompresses to more than {limit} bytes (labkit's limit for it): a gzip bomb, "
        "or not the file you meant",
        "check the file; an apkovl or an APKINDEX is a few MiB once decompressed")


class _Counted(io.RawIOBase):
    """The decompressed stream; raises :class:`ArchiveTooLarge` once more than ``limit`` bytes came out,
    or more than ``header_limit`` (when set) while tarfile reads one header."""

    def __init__(self, inner: gzip.GzipFile, limit: int, label: str) -> None:
        self.inner, self.limit, self.label, self.count = inner, limit, label, 0
        self.header_limit: int | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        want = min(len(b), self.limit - self.count + 1)
        data = self.inner.read(max(want, 1))
        n = len(data)
        self.count += n
        if self.count > self.limit:
            raise _too_large(self.label, self.limit)
        if self.header_limit is not None and self.count > self.header_limit:
            raise ArchiveTooLarge(f"{self.label} holds a tar header (long name, PAX or sparse map) of more than "
                                  f"{MAX_HEADER_BYTES} bytes: a crafted archive", "check the file")
        b[:n] = data
        return n


def _open_source(source: Path | bytes, label: str, limits: ArchiveLimits) -> tuple[IO[bytes], int]:
    if isinstance(source, bytes | bytearray):
        if len(source) > limits.max_compressed:
            raise ArchiveTooLarge(f"{label} is {len(source)} bytes, over labkit's limit of {limits.max_compressed}",
                                  "check that it is the right file")
        return io.BytesIO(source), len(source)
    path = Path(source)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{label} does not exist", "give the path of the .tar.gz file") from None
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror}", "give the path of the .tar.gz file") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise InputError(f"{label} is {kind}", "give the path of the .tar.gz file itself")
    if st.st_size > limits.max_compressed:
        raise ArchiveTooLarge(f"{label} is {st.st_size} bytes, over labkit's limit of {limits.max_compressed}",
                              "check that it is the right file")
    try:
        return open(path, "rb"), st.st_size
    except OSError as exc:
        raise InputError(f"cannot read {label}: {exc.strerror}", "check the file's permissions") from None


def corrupt(label: str, exc: BaseException) -> InputError:
    return InputError(f"{label} is not a complete .tar.gz ({exc}); it is truncated or corrupt",
                      "copy it again from its source")


@dataclass
class TarStream:
    """The members of a ``.tar.gz``, read once, in order, within ``limits``.

    ``for info, data in stream:`` — ``data`` reads the member's content (a file object valid until the
    next member; ``None`` for non-files). ``stream.compressed_size`` is the file's size.
    """

    source: Path | bytes
    label: str
    limits: ArchiveLimits = ArchiveLimits()
    compressed_size: int = 0
    members: int = 0
    decompressed: int = 0

    def __iter__(self) -> Iterator[tuple[tarfile.TarInfo, _Guarded | None]]:
        raw, self.compressed_size = _open_source(self.source, self.label, self.limits)
        logical = 0
        try:
            gz = gzip.GzipFile(fileobj=raw, mode="rb")
            counted = _Counted(gz, self.limits.max_total, self.label)
            buffered = io.BufferedReader(counted, buffer_size=64 * 1024)
            counted.header_limit = MAX_HEADER_BYTES  # tarfile reads the first header in open()
            with tarfile.open(fileobj=buffered, mode="r|", errorlevel=2) as tar:
                while True:
                    # the previous member's data is read through first, so what tarfile reads in next()
                    # is the header alone: it gets its own budget
                    counted.header_limit = counted.count + MAX_HEADER_BYTES
                    info = tar.next()
                    counted.header_limit = None
                    if info is None:
                        break
                    self.members += 1
                    if self.members > self.limits.max_members:
                        raise ArchiveTooLarge(
                            f"{self.label} has more than {self.limits.max_members} entries (labkit's limit)",
                            "check the file; an apkovl holds hundreds of entries, not tens of thousands")
                    if info.isreg():
                        if info.size > self.limits.max_member:
                            raise ArchiveTooLarge(
                                f"{self.label}: entry {info.name[:200]!r} is {info.size} bytes, over labkit's limit "
                                f"of {self.limits.max_member} for one file", "check the file")
                        logical += info.size
                        if logical > self.limits.max_total:
                            raise _too_large(self.label, self.limits.max_total)
                        member = tar.extractfile(info)
                        guarded = _Guarded(member, self.label) if member is not None else None
                        yield info, guarded
                        if guarded is not None:
                            for _ in read_chunks(guarded):  # what the caller left unread
                                pass
                    else:
                        yield info, None
                    tar.members = []  # type: ignore[attr-defined]  # stream mode keeps every TarInfo otherwise
            self.decompressed = counted.count
        except ArchiveTooLarge:
            raise
        except (EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError) as exc:
            raise corrupt(self.label, exc) from None
        except OSError as exc:
            raise corrupt(self.label, exc) from None
        finally:
            raw.close()


class _Guarded:
    """A member's data: a damaged stream while reading it is the same clear error as anywhere else."""

    def __init__(self, inner: IO[bytes], label: str) -> None:
        self.inner, self.label = inner, label

    def read(self, size: int = -1) -> bytes:
        try:
            return self.inner.read(size)
        except ArchiveTooLarge:
            raise
        except (EOFError, gzip.BadGzipFile, zlib.error, tarfile.TarError, OSError) as exc:
            raise corrupt(self.label, exc) from None


def read_chunks(data: IO[bytes] | _Guarded, size: int = 1024 * 1024) -> Iterator[bytes]:
    while True:
        chunk = data.read(size)
        if not chunk:
            return
        yield chunk
