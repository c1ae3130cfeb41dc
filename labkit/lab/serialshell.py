"""Drive a root shell over a serial console: prompt detection, exit status, timeouts, transcript.

Modelled on the NixOS test driver's framing: each command is sent as one line that prints a
begin marker, runs the command (through ``eval``), and prints ``__RC_<nonce>_<status>__``. The markers are written
so that the terminal's echo of the typed line cannot match them (the begin marker is split by
an empty quote, the status is ``$?`` in the echo), so only the shell's own output frames the
command. Every wait has its own timeout; a timeout is reported as such (and the shell is
interrupted with Ctrl-C so the session can go on).

The transport is anything with ``write(bytes)`` and ``read(timeout) -> bytes`` (``b""`` when
nothing came within ``timeout``; :class:`EOFError` when the other side is gone):
:class:`PipeTransport` wraps a QEMU process started with ``-nographic`` (serial on stdio).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from labkit.core.console import ANSI_RE  # the one ANSI stripper
from labkit.core.errors import LabkitError
from labkit.core.runner import Runner

DEFAULT_PROMPT = r"(?:[#$]|\w+[#$>]) ?$"


class SerialError(LabkitError):
    """The serial session broke (the guest went away)."""


class SerialTimeout(LabkitError):
    def __init__(self, what: str, timeout_s: float, tail: str) -> None:
        self.what = what
        self.timeout_s = timeout_s
        self.tail = tail
        super().__init__(
            f"timed out after {timeout_s:g} s waiting for {what}; last output: {tail[-300:]!r}",
            "look at the transcript; raise the timeout if the guest is slow (TCG), or fix the command",
        )


class SerialCommandFailed(LabkitError):
    def __init__(self, result: ShellResult) -> None:
        self.result = result
        tail = "\n    ".join(result.output.strip().splitlines()[-5:])
        super().__init__(
            f"guest command failed with exit status {result.rc}: {result.command}" + (f"\n    {tail}" if tail else ""),
            "read the command's output above and the serial transcript; fix the cause and run it again",
        )


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...

    def read(self, timeout: float) -> bytes: ...


@dataclass
class PipeTransport:
    """Serial on a child process's stdin/stdout (``qemu -nographic``)."""

    proc: subprocess.Popen[bytes]

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise EOFError("the guest's serial input is closed") from None

    def read(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return b""
        data = os.read(fd, 65536)
        if not data:
            raise EOFError("the guest's serial output ended")
        return data


@dataclass
class FdTransport:
    """Serial on a file descriptor (a pty, e.g. QEMU ``-serial pty``, or a host pty in tests)."""

    fd: int

    def write(self, data: bytes) -> None:
        try:
            os.write(self.fd, data)
        except OSError:
            raise EOFError("the serial line is closed") from None

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the other side of the pty closed
            data = b""
        if not data:
            raise EOFError("the serial line closed")
        return data


@dataclass(frozen=True)
class ShellResult:
    command: str
    rc: int
    output: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.rc == 0


@dataclass
class SerialShell:
    """A shell session on a serial console. ``transcript`` holds everything, in order."""

    transport: Transport
    runner: Runner | None = None
    prompt: str = DEFAULT_PROMPT
    transcript: list[tuple[float, str, str]] = field(default_factory=list)  # (t, "rx"|"tx"|"cmd", text)
    _buf: str = ""
    _t0: float = field(default_factory=time.monotonic)
    _secrets: list[str] = field(default_factory=list)

    # -- secrets ---------------------------------------------------------------------------
    def add_secret(self, value: str) -> None:
        """``value`` is shown as ``***`` in :meth:`transcript_text` and in the runner's transcript."""
        if value and value not in self._secrets:
            self._secrets.append(value)
            if self.runner is not None:
                self.runner.add_secret(value)

    def redact(self, text: str) -> str:
        from labkit.core.runner import redact_secrets

        for s in self._secrets:
            text = text.replace(s, "***")
        return redact_secrets(text)

    # -- low level -------------------------------------------------------------------------
    def send(self, text: str) -> None:
        self.transcript.append((time.monotonic() - self._t0, "tx", text))
        self.transport.write(text.encode())

    def _pull(self, timeout: float) -> None:
        try:
            data = self.transport.read(timeout)
        except EOFError as exc:
            raise SerialError(f"serial session ended: {exc}; last output: {self._buf[-300:]!r}",
                              "look at the transcript: the guest may have crashed or powered off") from None
        if data:
            text = ANSI_RE.sub("", data.decode("latin-1")).replace("\r", "")
            self.transcript.append((time.monotonic() - self._t0, "rx", text))
            # strip again over the joined buffer: an escape sequence split across two reads (busybox
            # ash's cursor query ESC[6n after its prompt) would otherwise hide the prompt
            self._buf = ANSI_RE.sub("", self._buf + text)

    def wait_for(self, pattern: str, timeout: float, what: str | None = None) -> re.Match[str]:
        """Read until ``pattern`` (multiline regex) matches the unread output; consume through the match."""
        rx = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self._buf)
            if m:
                self._buf = self._buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise SerialTimeout(what or f"/{pattern}/", timeout, self._buf)
            self._pull(min(left, 0.5))

    def wait_for_prompt(self, timeout: float = 60.0, *, poke_every: float = 2.0) -> None:
        """Wait for a shell prompt, pressing Enter now and then (a console may need a key first)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.wait_for(self.prompt, min(poke_every, max(0.1, deadline - time.monotonic())), "a shell prompt")
                return
            except SerialTimeout:
                if time.monotonic() >= deadline:
                    raise SerialTimeout("a shell prompt", timeout, self._buf) from None
                self.send("\n")

    def start(self, timeout: float = 60.0) -> None:
        """Wait for the first prompt (pressing Enter now and then)."""
        self.wait_for_prompt(timeout)

    # -- commands --------------------------------------------------------------------------
    def run(self, command: str, *, timeout: float = 30.0, check: bool = True) -> ShellResult:
        """Run one shell command line; return its output and exit status.

        Raises :class:`SerialTimeout` when it does not finish in ``timeout`` (after sending
        Ctrl-C), and :class:`SerialCommandFailed` for a non-zero status when ``check``.
        """
        if "\n" in command:
            raise ValueError("one command line at a time")
        nonce = secrets.token_hex(4)
        begin, rc_re = f"__BEGIN_{nonce}__", rf"__RC_{nonce}_(\d+)__"
        self._buf = ""
        start = time.monotonic()
        self.transcript.append((start - self._t0, "cmd", command))
        # One line per command, sent once: a line editor (busybox ash) may drop a second line
        # that arrives while it reads the first, and a line typed while a command runs is echoed
        # into its output. `eval` keeps the command's own syntax (comments, `&&`, `cd`) intact.
        # The echo of the line shows `__BEG''IN_…` and `$?`: only the shell's output matches.
        self.send(f"echo __BEG''IN_{nonce}__; eval {shlex.quote(command)}; echo __RC_{nonce}_$?__\n")
        try:
            # not anchored at the line start: with the terminal echo off (``stty -echo``, used while a
            # secret is sent) the marker follows the prompt on the same line
            self.wait_for(rf"{re.escape(begin)}$", timeout, f"the start of {command!r}")
            m = self.wait_for(rf"(?s)^(.*?){rc_re}$", max(0.1, timeout - (time.monotonic() - start)),
                              f"{command!r} to finish")
        except SerialTimeout as exc:
            self._record(command, None, time.monotonic() - start, timed_out=True)
            self.interrupt()
            raise SerialTimeout(f"{command!r} to finish", timeout, exc.tail) from None
        output = m.group(1).lstrip("\n")
        rc = int(m.group(2))
        res = ShellResult(command, rc, output, time.monotonic() - start)
        self._record(command, rc, res.duration_s)
        if check and rc != 0:
            raise SerialCommandFailed(res)
        return res

    def run_all(self, commands: Sequence[str], *, timeout: float = 30.0) -> list[ShellResult]:
        return [self.run(c, timeout=timeout) for c in commands]

    def interrupt(self, timeout: float = 5.0, attempts: int = 3) -> None:
        """Ctrl-C, then wait for the prompt again (best effort); up to ``attempts`` times, as one Ctrl-C may
        stop only part of a command line (a loop, or the next command of the line starting after it)."""
        for _ in range(attempts):
            self.send("\x03\n")
            try:
                self.wait_for_prompt(timeout / attempts)
                return
            except SerialTimeout:
                continue
            except SerialError:
                return

    def _record(self, command: str, rc: int | None, duration_s: float, **extra: object) -> None:
        if self.runner is not None:
            self.runner.record_external(["serial-shell", command], rc=rc, duration_s=duration_s, **extra)

    def transcript_text(self) -> str:
        """What the console showed (received text only)."""
        return self.redact("".join(text for _, kind, text in self.transcript if kind == "rx"))


@contextlib.contextmanager
def spawn_serial(runner: Runner, argv: Sequence[str], *, prompt: str = DEFAULT_PROMPT) -> Iterator[SerialShell]:
    """Start ``argv`` (QEMU with ``-nographic``: the serial console on stdio) and drive its shell.

    The process is recorded in the runner's transcript when it ends (killed if still running).
    """
    with runner.spawn(argv, stdin=subprocess.PIPE, stderr=subprocess.STDOUT, serial="driven") as spawned:
        if spawned.proc is None:
            raise LabkitError("a serial shell cannot be driven in plan mode", "run it in apply mode")
        yield SerialShell(PipeTransport(spawned.proc), runner=runner, prompt=prompt)
