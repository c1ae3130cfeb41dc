"""The single place where labkit runs external commands.

Every command is an argv list (never a shell string). In ``plan`` mode nothing that changes
anything is executed: the command is recorded in the transcript and a placeholder result is
returned. Commands marked ``query=True`` only read state and run in both modes (the plan of a
destructive step must be computed from the real state of the target).

Each command appends one JSON line to the transcript: argv, cwd, environment overrides, the
step it belongs to, rc, duration and the tail of its output.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TextIO

from labkit.core.errors import CommandFailed, CommandTimeout, ToolMissing
from labkit.core.files import atomic_write_bytes, atomic_write_text, check_output_path, os_error

__all__ = ["CommandResult", "Mode", "PlannedCommand", "Runner", "atomic_write_bytes", "atomic_write_text",
           "read_transcript", "redact_secrets", "require_tool", "which"]

#: Debian package that provides each external program labkit uses.
TOOL_PACKAGES: dict[str, str] = {
    "sgdisk": "gdisk",
    "mkfs.vfat": "dosfstools",
    "mkfs.fat": "dosfstools",
    "fsck.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "mdir": "mtools",
    "mtype": "mtools",
    "mlabel": "mtools",
    "minfo": "mtools",
    "mke2fs": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "tune2fs": "e2fsprogs",
    "blkid": "util-linux",
    "partx": "util-linux",
    "losetup": "util-linux",
    "lsblk": "util-linux",
    "wipefs": "util-linux",
    "findmnt": "util-linux",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "grub-mkimage": "grub-efi-amd64-bin",
    "grub-install": "grub-efi-amd64-bin",
    "xorriso": "xorriso",
    "busybox": "busybox-static",
    "cpio": "cpio",
    "gzip": "gzip",
    "zstd": "zstd",
    "dpkg-deb": "dpkg",
    "dpkg-query": "dpkg",
    "dpkg": "dpkg",
    "apt-get": "apt",
    "apt-cache": "apt",
    "nix-instantiate": "nix-bin",
    "shellcheck": "shellcheck",
    "ldd": "libc-bin",
    "refind-install": "refind",
    "udevadm": "udev",
    "dd": "coreutils",
    "truncate": "coreutils",
    "sha256sum": "coreutils",
    "tar": "tar",
    "mount": "mount",
    "mkdir": "coreutils",
    "gpg": "gpg",
    "umount": "mount",
}

TAIL_CHARS = 2000
#: How long a process labkit stops gets between SIGTERM and SIGKILL.
KILL_GRACE_S = 2.0

#: crypt(3) password hashes (yescrypt, SHA-512/256, bcrypt, MD5, scrypt): never shown or recorded.
CRYPT_HASH_RE = re.compile(r"\$(?:y|gy|7|6|5|2[abxy]|1)\$[./A-Za-z0-9=,]+\$[./A-Za-z0-9=,$]{8,}")
REDACTED_HASH = "<redacted password hash>"


def redact_secrets(text: str) -> str:
    """``text`` with every crypt(3) password hash replaced (transcripts, notes, errors, notebooks)."""
    return CRYPT_HASH_RE.sub(REDACTED_HASH, text)


class Mode(str, Enum):
    PLAN = "plan"
    APPLY = "apply"


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    cwd: str | None
    rc: int | None
    duration_s: float
    stdout: str
    stderr: str
    executed: bool

    @property
    def ok(self) -> bool:
        return self.rc == 0 or not self.executed


@dataclass(frozen=True)
class PlannedCommand:
    """One command of a plan, as shown to the user before anything runs."""

    step: str
    argv: tuple[str, ...]
    cwd: str | None
    env: tuple[tuple[str, str], ...]
    query: bool

    def shell(self) -> str:
        """A copy-pasteable rendering (for display only; labkit never runs it through a shell)."""
        import shlex

        envs = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        cmd = shlex.join(self.argv)
        prefix = f"(cd {shlex.quote(self.cwd)} && " if self.cwd else ""
        suffix = ")" if self.cwd else ""
        return f"{prefix}{envs + ' ' if envs else ''}{cmd}{suffix}"


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found is None:
        for extra in ("/usr/sbin", "/sbin"):
            cand = Path(extra) / tool
            if cand.exists() and os.access(cand, os.X_OK):
                return str(cand)
    return found


def require_tool(tool: str) -> str:
    """Return the tool's path or raise :class:`ToolMissing` naming its Debian package."""
    path = which(tool)
    if path is None:
        raise ToolMissing(tool, TOOL_PACKAGES.get(Path(tool).name))
    return path


def _tail(text: str) -> str:
    return text[-TAIL_CHARS:]


@dataclass
class Runner:
    """Run or record commands; write the JSONL transcript.

    ``progress`` (a text stream, default stderr) shows nested timed steps while it runs.
    """

    mode: Mode = Mode.APPLY
    transcript: Path | None = None
    progress: TextIO | None = field(default_factory=lambda: sys.stderr)
    secrets: tuple[str, ...] = ()
    planned: list[PlannedCommand] = field(default_factory=list)
    _steps: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _transcript_checked: bool = False

    # -- steps -----------------------------------------------------------------------------
    @property
    def step_name(self) -> str:
        return " / ".join(self._steps)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A nested, timed log step; commands run inside are tagged with it."""
        depth = len(self._steps)
        self._steps.append(name)
        start = time.monotonic()
        self._say(f"{'  ' * depth}▸ {name}")
        ok = False
        try:
            yield
            ok = True
        finally:
            dur = time.monotonic() - start
            self._say(f"{'  ' * depth}{'✓' if ok else '✗'} {name} ({dur:.1f} s)")
            self._record({"event": "step", "step": self.step_name, "ok": ok, "duration_s": round(dur, 4)})
            self._steps.pop()

    def note(self, message: str) -> None:
        self._say(f"{'  ' * len(self._steps)}{message}")
        self._record({"event": "note", "step": self.step_name, "message": self._redact(message)})

    # -- commands --------------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
        query: bool = False,
        stdout_path: Path | None = None,
    ) -> CommandResult:
        """Run ``argv`` (apply mode, or any mode when ``query``); record it either way.

        ``stdout_path`` sends stdout to a file (written to a temporary name, then renamed).
        """
        args = [os.fspath(a) for a in argv]
        if not args:
            raise ValueError("empty argv")
        cwd_s = os.fspath(cwd) if cwd is not None else None
        env_over = dict(env or {})
        # what is shown and recorded never carries a secret (the command itself runs with the real values)
        planned = PlannedCommand(
            step=self.step_name,
            argv=tuple(self._redact_argv(args)),
            cwd=cwd_s,
            env=tuple(sorted(self._redact_env(env_over).items())),
            query=query,
        )
        execute = query or self.mode is Mode.APPLY
        tool_path = which(args[0]) if not os.path.isabs(args[0]) else args[0]
        if tool_path is None or not os.path.exists(tool_path):
            if execute:
                self._record(
                    {
                        "event": "command",
                        "step": self.step_name,
                        "argv": self._redact_argv(args),
                        "cwd": cwd_s,
                        "error": "tool-missing",
                        "package": TOOL_PACKAGES.get(Path(args[0]).name),
                        "executed": False,
                    }
                )
                raise ToolMissing(args[0], TOOL_PACKAGES.get(Path(args[0]).name))
        with self._lock:
            self.planned.append(planned)
        if not execute:
            self._record(
                {
                    "event": "command",
                    "mode": self.mode.value,
                    "step": self.step_name,
                    "argv": self._redact_argv(args),
                    "cwd": cwd_s,
                    "env": self._redact_env(env_over),
                    "query": query,
                    "executed": False,
                    "rc": None,
                    "duration_s": 0.0,
                }
            )
            return CommandResult(tuple(args), cwd_s, None, 0.0, "", "", executed=False)

        full_env = None
        if env_over:
            full_env = dict(os.environ)
            full_env.update(env_over)
        start = time.monotonic()
        out_file = None
        tmp_out: Path | None = None
        try:
            if stdout_path is not None:
                stdout_path = check_output_path(stdout_path, what="the command's output file")
                tmp_out = stdout_path.with_name(f".{stdout_path.name}.tmp-{os.getpid()}")
                try:
                    out_file = open(tmp_out, "wb")
                except OSError as exc:
                    raise os_error(exc, stdout_path, "write the command's output to") from None
            proc = subprocess.run(
                args,
                cwd=cwd_s,
                env=full_env,
                input=input,
                stdout=out_file if out_file is not None else subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            dur = time.monotonic() - start
            self._record(
                {
                    "event": "command",
                    "mode": self.mode.value,
                    "step": self.step_name,
                    "argv": self._redact_argv(args),
                    "cwd": cwd_s,
                    "env": self._redact_env(env_over),
                    "query": query,
                    "executed": True,
                    "rc": None,
                    "timed_out": True,
                    "duration_s": round(dur, 4),
                    "stdout_tail": self._redact(_tail(_decode(exc.stdout))),
                    "stderr_tail": self._redact(_tail(_decode(exc.stderr))),
                }
            )
            if tmp_out is not None:
                tmp_out.unlink(missing_ok=True)
            raise CommandTimeout(args, timeout or 0.0) from None
        except BaseException:
            if tmp_out is not None:
                tmp_out.unlink(missing_ok=True)
            raise
        finally:
            if out_file is not None:
                out_file.close()
        dur = time.monotonic() - start
        stdout = _decode(proc.stdout) if out_file is None else ""
        stderr = _decode(proc.stderr)
        if tmp_out is not None and stdout_path is not None:
            try:
                if proc.returncode == 0:
                    os.replace(tmp_out, stdout_path)
                else:
                    tmp_out.unlink(missing_ok=True)
            except OSError as exc:
                tmp_out.unlink(missing_ok=True)
                raise os_error(exc, stdout_path, "write the command's output to") from None
        self._record(
            {
                "event": "command",
                "mode": self.mode.value,
                "step": self.step_name,
                "argv": self._redact_argv(args),
                "cwd": cwd_s,
                "env": self._redact_env(env_over),
                "query": query,
                "executed": True,
                "rc": proc.returncode,
                "duration_s": round(dur, 4),
                "stdout_tail": self._redact(_tail(stdout)),
                "stderr_tail": self._redact(_tail(stderr)),
            }
        )
        if check and proc.returncode != 0:
            raise CommandFailed(self._redact_argv(args), proc.returncode, self._redact(stderr or stdout))
        return CommandResult(tuple(args), cwd_s, proc.returncode, dur, stdout, stderr, executed=True)

    @contextlib.contextmanager
    def spawn(self, argv: Sequence[str | os.PathLike[str]], *, stdin: int | None = subprocess.DEVNULL,
              stderr: int | None = subprocess.PIPE, kill_grace_s: float = KILL_GRACE_S,
              **extra: object) -> Iterator[Spawned]:
        """Start a long-running process labkit drives itself (QEMU), in its own process group; yield it;
        whatever happens, stop it (SIGTERM to the group, then SIGKILL after ``kill_grace_s``) and record it
        in the transcript with its return code and duration. Plan mode records it and starts nothing
        (``Spawned.proc`` is None). The one place a process is started in the background."""
        args = [os.fspath(a) for a in argv]
        if not args:
            raise ValueError("empty argv")
        if self.mode is Mode.PLAN:
            self.record_external(args, rc=None, duration_s=0.0, executed=False, **extra)
            yield Spawned(args, None, 0.0)
            return
        require_tool(args[0])
        start = time.monotonic()
        proc = subprocess.Popen(args, stdin=stdin, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True)
        handle = Spawned(args, proc, start)
        try:
            yield handle
        finally:
            if proc.poll() is None:
                handle.killed = True
                stop_group(proc, kill_grace_s)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            if handle.record:
                self.record_external(args, rc=proc.returncode, duration_s=time.monotonic() - start,
                                     killed=handle.killed, **{**extra, **handle.extra})

    def record_external(self, argv: Sequence[str], *, rc: int | None, duration_s: float, **extra: object) -> None:
        """Record a process that labkit drives itself (for example a QEMU boot read live)."""
        args = [os.fspath(a) for a in argv]
        with self._lock:
            self.planned.append(PlannedCommand(self.step_name, tuple(self._redact_argv(args)), None, (), False))
        self._record(
            {
                "event": "command",
                "mode": self.mode.value,
                "step": self.step_name,
                "argv": self._redact_argv(args),
                "executed": True,
                "rc": rc,
                "duration_s": round(duration_s, 4),
                **{k: self._redact_value(v) for k, v in extra.items()},
            }
        )

    def add_secret(self, value: str) -> None:
        """From now on, ``value`` is shown as ``***`` in the transcript, notes and errors."""
        if value and value not in self.secrets:
            with self._lock:
                self.secrets = (*self.secrets, value)

    # -- internals -------------------------------------------------------------------------
    def _redact(self, text: str) -> str:
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return redact_secrets(text)

    def _redact_argv(self, argv: list[str]) -> list[str]:
        return [self._redact(a) for a in argv]

    def _redact_env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {k: self._redact(v) for k, v in env.items()}

    def _redact_value(self, value: object) -> object:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, list | tuple):
            return [self._redact_value(v) for v in value]
        if isinstance(value, dict):
            return {k: self._redact_value(v) for k, v in value.items()}
        return value

    def _say(self, line: str) -> None:
        if self.progress is not None:
            try:
                self.progress.write(line + "\n")
                self.progress.flush()
            except ValueError:  # closed stream
                pass

    def _record(self, obj: dict[str, object]) -> None:
        if self.transcript is None:
            return
        obj = {"ts": round(time.time(), 3), **obj}
        line = json.dumps(obj, ensure_ascii=False, default=str)
        with self._lock:
            if not self._transcript_checked:
                # a regular file (appended to) or a new one in a folder labkit may create
                self.transcript = check_output_path(self.transcript, what="the transcript")
                self._transcript_checked = True
            try:
                with open(self.transcript, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            except OSError as exc:
                raise os_error(exc, self.transcript, "append to the transcript") from None


@dataclass
class Spawned:
    """A process :meth:`Runner.spawn` started (``proc`` None in plan mode)."""

    argv: list[str]
    proc: subprocess.Popen[bytes] | None
    start: float
    killed: bool = False
    record: bool = True  # False: the caller records it itself (with more detail) via record_external
    extra: dict[str, object] = field(default_factory=dict)  # added to the transcript record at the end


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = KILL_GRACE_S) -> None:
    """The one kill policy: SIGTERM to the process group, SIGKILL after ``grace_s``, then reap."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", errors="replace")


def read_transcript(path: Path) -> list[dict[str, object]]:
    """Read a JSONL transcript back (for notebooks and tests)."""
    out: list[dict[str, object]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
