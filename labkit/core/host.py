"""The machine a phase's steps run on: this one (:class:`LocalHost`) or another one driven over a line
(the installer VM behind its serial console: ``labkit.lab.serialshell.SerialHost``).

A step never opens a file or starts a program itself: it asks its host. So the same steps — the NixOS
install's — run here on the NixOS installer and, unchanged, inside the lab's installer VM; there is one
description of the install, never a second one translated into shell lines.
"""

from __future__ import annotations

import glob as _glob
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

from labkit.core.runner import CommandResult, Mode, Runner, atomic_write_bytes, which


class Host(ABC):
    """Commands and file operations on one machine; every command is recorded by ``runner``."""

    name = "?"

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @property
    def mode(self) -> Mode:
        return self.runner.mode

    @abstractmethod
    def run(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
            check: bool = True, timeout: float | None = None, query: bool = False) -> CommandResult:
        """Run a command (plan mode: record it, unless it is a read-only ``query``)."""

    @abstractmethod
    def read_bytes(self, path: str | os.PathLike[str]) -> bytes | None:
        """A file's content, or None when it is not a regular file."""

    @abstractmethod
    def write_bytes(self, path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                    secret: bool = False) -> None:
        """Write a file atomically (plan mode: note it). ``secret``: its content never reaches a log."""

    @abstractmethod
    def is_file(self, path: str | os.PathLike[str]) -> bool: ...

    @abstractmethod
    def lexists(self, path: str | os.PathLike[str]) -> bool:
        """The path exists (a dangling symlink counts)."""

    @abstractmethod
    def readlink(self, path: str | os.PathLike[str]) -> str | None:
        """A symlink's target, or None when ``path`` is not a symlink."""

    @abstractmethod
    def glob(self, pattern: str) -> list[str]:
        """Paths matching a shell pattern, sorted."""

    @abstractmethod
    def which(self, tool: str) -> str | None: ...

    def read_text(self, path: str | os.PathLike[str]) -> str | None:
        data = self.read_bytes(path)
        return None if data is None else data.decode("utf-8", errors="replace")

    def note(self, message: str) -> None:
        self.runner.note(message)


class LocalHost(Host):
    """This machine: commands through the runner, files through the filesystem."""

    name = "this machine"

    def run(self, argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None,
            check: bool = True, timeout: float | None = None, query: bool = False) -> CommandResult:
        return self.runner.run(argv, env=env, check=check, timeout=timeout, query=query)

    def read_bytes(self, path: str | os.PathLike[str]) -> bytes | None:
        p = Path(path)
        try:
            return p.read_bytes() if p.is_file() else None
        except OSError:
            return None

    def write_bytes(self, path: str | os.PathLike[str], data: bytes, *, mode: int = 0o644,
                    secret: bool = False) -> None:
        if self.mode is Mode.PLAN:
            self.runner.note(f"write {path} ({len(data)} bytes{', secret' if secret else ''})")
            return
        atomic_write_bytes(Path(path), data, mode=mode)

    def is_file(self, path: str | os.PathLike[str]) -> bool:
        return Path(path).is_file()

    def lexists(self, path: str | os.PathLike[str]) -> bool:
        return os.path.lexists(path)

    def readlink(self, path: str | os.PathLike[str]) -> str | None:
        try:
            return os.readlink(path)
        except OSError:
            return None

    def glob(self, pattern: str) -> list[str]:
        return sorted(_glob.glob(pattern))

    def which(self, tool: str) -> str | None:
        return which(tool)
