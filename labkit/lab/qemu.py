"""The QEMU runner: boot the lab image under OVMF, read the serial console live.

Serial output arrives on QEMU's stdout (``-chardev stdio``), is split into clean, time-stamped
lines (:mod:`labkit.core.console`) and written to the serial log as it comes, so a killed run keeps
its log. Every boot has a hard timeout (the process group is killed) and ``-no-reboot``.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from labkit.core.console import SerialDecoder, SerialLine, format_line
from labkit.core.errors import LabkitError
from labkit.core.runner import Mode, Runner, atomic_write_text, stop_group
from labkit.measure.hostload import HostLoad, HostLoadSampler

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
#: First text OVMF prints on serial (its boot manager); the accelerator smoke boot waits for it.
OVMF_MARKER = "BdsDxe"
#: The smoke boot's limit for the last (fallback) accelerator.
LAST_SMOKE_TIMEOUT_S = 60.0
#: stderr lines after which QEMU will never make progress (it pauses the guest and hangs).
FATAL_STDERR = ("KVM internal error", "failed to initialize kvm", "Could not access KVM")


class QemuStartError(LabkitError):
    """QEMU could not start a guest at all (an infrastructure failure: a matrix cell is retried, see
    :mod:`labkit.lab.matrix`), as opposed to a guest that started and then failed."""


@dataclass(frozen=True)
class BootResult:
    ok: bool
    timed_out: bool
    rc: int | None
    accel: str
    wall_s: float
    lines: list[SerialLine]
    serial_log: Path | None
    argv: list[str]
    reason: str
    stderr: str = ""
    stopped: bool = False  # stop_on matched and labkit ended the run
    host_load: HostLoad | None = None  # what else the host ran meanwhile (labkit.measure.hostload)
    cpu_marks: tuple[tuple[float, float], ...] = ()  # (t as in lines, QEMU's CPU seconds so far) per serial chunk

    @property
    def failed_to_start(self) -> bool:
        """QEMU exited with an error before the firmware wrote a single serial line (bad option,
        missing firmware file, no memory, ...): nothing of the guest ran."""
        return not (self.ok or self.stopped or self.timed_out) and not self.lines and self.rc not in (0, None)

    def find(self, pattern: str) -> SerialLine | None:
        """First serial line containing ``pattern`` (plain substring)."""
        return next((ln for ln in self.lines if pattern in ln.text), None)


@dataclass(frozen=True)
class AccelChoice:
    accel: str
    tried: list[tuple[str, bool, str]] = field(default_factory=list)  # (accel, ok, reason)

    @property
    def warning(self) -> str | None:
        failed = [f"{a}: {r}" for a, ok, r in self.tried if not ok]
        return f"using {self.accel}; failed: " + "; ".join(failed) if failed else None


def qemu_argv(
    image: Path | None,
    *,
    ovmf_code: Path = OVMF_CODE,
    vars_file: Path,
    accel: str = "tcg",
    memory_mib: int = 512,
    extra: Sequence[str] = (),
    reboot: bool = False,
) -> list[str]:
    """The exact ``qemu-system-x86_64`` command labkit runs (serial on stdout). ``-no-reboot`` (a guest reboot
    ends QEMU) unless ``reboot`` (the reboot loop: the guest reboots itself, QEMU goes on)."""
    argv = [
        QEMU, "-machine", "q35", "-accel", accel, "-m", str(memory_mib),
        *([] if reboot else ["-no-reboot"]), "-display", "none", "-nic", "none", "-monitor", "none",
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf_code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}",
    ]
    if image is not None:
        argv += ["-drive", f"file={image},format=raw,if=virtio"]
    argv += ["-chardev", "stdio,id=serial0,signal=off", "-serial", "chardev:serial0", *extra]
    return argv


def boot(
    runner: Runner,
    image: Path | None,
    *,
    ovmf_code: Path = OVMF_CODE,
    vars_template: Path = OVMF_VARS,
    workdir: Path,
    accel: str,
    memory_mib: int = 512,
    timeout_s: float,
    stop_on: Callable[[str], bool] | None = None,
    serial_log: Path | None = None,
    extra: Sequence[str] = (),
    reboot: bool = False,
) -> BootResult:
    """Boot once (with ``reboot``: through every reboot of the guest until it powers off); ``ok`` = QEMU exited 0
    (guest powered off) or ``stop_on`` matched a line."""
    workdir = Path(workdir)
    vars_file = workdir / "OVMF_VARS.fd"
    argv = qemu_argv(image, ovmf_code=ovmf_code, vars_file=vars_file, accel=accel,
                     memory_mib=memory_mib, extra=extra, reboot=reboot)
    if runner.mode is Mode.PLAN:
        runner.run(argv)
        return BootResult(False, False, None, accel, 0.0, [], serial_log, argv, "plan mode: not booted")
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vars_template, vars_file)  # fresh NVRAM every boot
    log = open(serial_log, "w", encoding="utf-8") if serial_log is not None else None
    sampler = HostLoadSampler()
    with runner.spawn(argv) as spawned:
        spawned.record = False  # recorded below, with the outcome
        proc = spawned.proc
        assert proc is not None
        start = spawned.start
        sampler.attach(proc.pid)
        try:
            lines, err, outcome = _pump(proc, start, timeout_s, stop_on, log, sampler)
        finally:
            if proc.poll() is None:
                stop_group(proc)
            if log is not None:
                log.close()
    wall = time.monotonic() - start
    load = sampler.finish(qemu_reaped=proc.returncode is not None)
    if serial_log is not None and sampler.cpu_marks:
        write_cpu_marks(cpu_marks_path(serial_log), sampler.cpu_marks)
    rc = proc.returncode
    timed_out = outcome == "timeout"
    stopped = outcome == "stop_on"
    if stopped:
        ok, reason = True, "stop_on matched"
    elif timed_out:
        ok, reason = False, f"no exit within {timeout_s:g} s: killed"
    elif outcome.startswith("fatal:"):
        ok, reason = False, outcome[len("fatal:"):]
    else:
        ok = rc == 0
        reason = "guest powered off" if ok else f"qemu exited {rc}: {_last(err)}"
    runner.record_external(argv, rc=rc, duration_s=wall, accel=accel, timed_out=timed_out, ok=ok,
                           reason=reason, serial_lines=len(lines),
                           serial_log=str(serial_log) if serial_log else None, stderr_tail=err[-2000:],
                           host_load=load.record())
    return BootResult(ok, timed_out, rc, accel, wall, lines, serial_log, argv, reason, err, stopped, load,
                      tuple(sampler.cpu_marks))


def cpu_marks_path(serial_log: Path) -> Path:
    """``serial/<os>-<n>.log`` → ``serial/<os>-<n>.qemu-cpu.tsv``: QEMU's CPU seconds as the serial lines came."""
    return serial_log.with_name(serial_log.stem + ".qemu-cpu.tsv")


def write_cpu_marks(path: Path, marks: Sequence[tuple[float, float]]) -> None:
    """One ``<t, 6 decimals, as in the serial log>\t<QEMU CPU seconds>`` line per serial chunk."""
    atomic_write_text(path, "".join(f"{t:.6f}\t{c:.2f}\n" for t, c in marks))


def read_cpu_marks(path: Path) -> list[tuple[float, float]]:
    """The marks :func:`write_cpu_marks` wrote ([] when the file is missing)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        t, _, c = line.partition("\t")
        out.append((float(t), float(c)))
    return out


def _pump(
    proc: subprocess.Popen[bytes],
    start: float,
    timeout_s: float,
    stop_on: Callable[[str], bool] | None,
    log: TextIO | None,
    sampler: HostLoadSampler | None = None,
) -> tuple[list[SerialLine], str, str]:
    """Read stdout (serial) and stderr until exit, timeout, a fatal message or stop_on (sampling the
    host's load meanwhile)."""
    assert proc.stdout is not None and proc.stderr is not None
    dec = SerialDecoder()
    lines: list[SerialLine] = []
    err = bytearray()
    open_fds = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    deadline = start + timeout_s

    def emit(texts: list[str], now: float) -> bool:
        if texts and sampler is not None:
            sampler.mark(now - start)
        for text in texts:
            line = SerialLine(now - start, text)
            lines.append(line)
            if log is not None:
                log.write(format_line(line))
                log.flush()
            if stop_on is not None and stop_on(text):
                return True
        return False

    while open_fds:
        if sampler is not None:
            sampler.poll()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            emit(dec.flush(), time.monotonic())
            return lines, _dec(err), "timeout"
        ready, _, _ = select.select(list(open_fds), [], [], min(remaining, 0.5))
        for fd in ready:
            data = os.read(fd, 65536)
            now = time.monotonic()
            if not data:
                del open_fds[fd]
                continue
            if open_fds[fd] == "err":
                err += data
                fatal = next((m for m in FATAL_STDERR if m.encode() in err), None)
                if fatal is not None:
                    emit(dec.flush(), now)
                    return lines, _dec(err), f"fatal:{fatal} (see stderr)"
            elif emit(dec.feed(data), now):
                return lines, _dec(err), "stop_on"
    emit(dec.flush(), time.monotonic())
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return lines, _dec(err), "timeout"
    return lines, _dec(err), "exit"


def _dec(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace")


def _last(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no message)"


def _chosen(runner: Runner, accel: str, tried: list[tuple[str, bool, str]]) -> AccelChoice:
    """The choice, with a warning in the transcript when an earlier candidate failed."""
    choice = AccelChoice(accel, tried)
    if choice.warning:
        runner.note(f"warning: {choice.warning}")
    return choice


def choose_accelerator(
    runner: Runner,
    candidates: Sequence[str] = ("kvm", "tcg"),
    *,
    smoke_timeout: float = 8.0,
    workdir: Path,
    ovmf_code: Path = OVMF_CODE,
    vars_template: Path = OVMF_VARS,
    smoke_last: bool = True,
) -> AccelChoice:
    """Smoke-boot OVMF (no disk) under each accelerator in turn; take the first that reaches
    its boot manager on serial. The last candidate gets twice the time (TCG is slow).

    ``smoke_last=False`` takes the last candidate without its smoke boot: nothing is left to fall back to, so
    the smoke boot could only fail earlier with what the first real boot says anyway (the lab: it saves a
    ~7 s OVMF boot under TCG per run)."""
    tried: list[tuple[str, bool, str]] = []
    with runner.step("choose accelerator"):
        for i, accel in enumerate(candidates):
            if i == len(candidates) - 1 and not smoke_last and runner.mode is not Mode.PLAN:
                tried.append((accel, True, "the last candidate, taken without a smoke boot (the first boot tests it)"))
                return _chosen(runner, accel, tried)
            # the last candidate is the fallback (TCG): it stops at the first OVMF line, so a long limit costs
            # nothing on a quiet host and keeps a busy one (OVMF at 3x its speed) from failing for nothing
            limit = max(smoke_timeout * 2, LAST_SMOKE_TIMEOUT_S) if i == len(candidates) - 1 else smoke_timeout
            res = boot(runner, None, ovmf_code=ovmf_code, vars_template=vars_template,
                       workdir=Path(workdir) / f"smoke-{accel}", accel=accel, memory_mib=128, timeout_s=limit,
                       stop_on=lambda text: OVMF_MARKER in text)
            if runner.mode is Mode.PLAN:
                tried.append((accel, True, "plan mode: not probed"))
                return AccelChoice(accel, tried)
            if res.stopped:
                tried.append((accel, True, f"OVMF reached {OVMF_MARKER} in {res.wall_s:.1f} s"))
                return _chosen(runner, accel, tried)
            detail = _last(res.stderr) if res.stderr.strip() else ""
            why = f"{res.reason} [{detail}]" if detail and detail not in res.reason else res.reason
            tried.append((accel, False, why))
            runner.note(f"accelerator {accel} failed the smoke boot: {why}")
    raise QemuStartError(f"no accelerator can boot OVMF here: {tried}",
                         "check that qemu-system-x86 and ovmf are installed; try candidates=('tcg',)")


def host_versions(runner: Runner | None = None) -> dict[str, str]:
    """QEMU, OVMF, rEFInd and GRUB versions (for environment.json)."""
    r = runner or Runner(progress=None)
    out: dict[str, str] = {}
    res = r.run([QEMU, "--version"], query=True, check=False)
    m = re.search(r"version (\S+)", res.stdout)
    out["qemu"] = m.group(1) if m else res.stdout.strip().splitlines()[0] if res.stdout.strip() else "?"
    for key, pkg in (("qemu_package", "qemu-system-x86"), ("ovmf", "ovmf"), ("refind", "refind"),
                     ("grub", "grub-efi-amd64-bin"), ("mtools", "mtools"), ("gdisk", "gdisk"),
                     ("e2fsprogs", "e2fsprogs")):
        res = r.run(["dpkg-query", "-W", "-f", "${Version}", pkg], query=True, check=False)
        out[key] = res.stdout.strip() if res.rc == 0 else "not installed"
    return out
