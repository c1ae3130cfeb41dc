"""Host load during one boot: how much of the host's CPU went to other work while QEMU ran.

On a shared machine a boot can be slowed by other processes (other QEMUs, test suites, compilers) or,
inside a VM, by the hypervisor (steal). Every lab boot records, from Linux's own accounting:

- ``other_cpu``: the CPU time used by everything except QEMU and labkit itself, in cores on average over
  the boot (``/proc/stat`` busy time minus QEMU's CPU time, from its rusage once reaped, minus labkit's);
- ``steal``: the CPU time the hypervisor took from this machine (``/proc/stat`` steal), in cores;
- ``qemu_wait``: the time QEMU's threads were runnable but waited for a CPU (``/proc/<pid>/task/*/schedstat``,
  second field, summed over threads), as a share of the wall time — the direct sign that QEMU was slowed;
- ``cpu_pressure``: Linux's pressure-stall information ``/proc/pressure/cpu`` "some": the share of wall time
  during which at least one task waited for a CPU (anywhere on the host).

The sampler also marks QEMU's own CPU time as serial output arrives (:meth:`HostLoadSampler.mark`), so a
stretch of the boot between two console lines — one package's install — can be costed in CPU seconds, which
other load on the host does not inflate the way it inflates the wall time.

A boot is *contended* when another process used a sizeable share of a CPU or QEMU itself waited
(:func:`contention`). The rule is deliberately simple and its thresholds are module constants, so the
report can say exactly why a boot was flagged. Sources: proc(5) (``/proc/stat``, ``/proc/pid/stat``),
Documentation/scheduler/sched-stats.rst (``schedstat``: run time, run-queue wait, time slices, in ns) and
Documentation/accounting/psi.rst (``total`` in µs).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Average cores used by other processes above which a boot is flagged (one CPU-bound process ≈ 1.0).
OTHER_CPU_LIMIT = 0.5
#: Share of the wall time QEMU's threads spent waiting for a CPU above which a boot is flagged.
QEMU_WAIT_LIMIT = 0.05
#: Average cores stolen by the hypervisor above which a boot is flagged.
STEAL_LIMIT = 0.1
#: Minimum time between two reads of QEMU's per-thread schedstat during a boot.
SAMPLE_INTERVAL_S = 0.5

_PROC = Path("/proc")


@dataclass(frozen=True)
class HostLoad:
    """One boot's host load (averages over ``wall_s``; NaN where the host does not expose a source)."""

    wall_s: float
    ncpu: int
    qemu_cpu: float  # cores used by QEMU (all threads)
    other_cpu: float  # cores used by everything else (labkit excluded); may be slightly < 0 (accounting noise)
    steal: float  # cores stolen by the hypervisor
    qemu_wait: float  # QEMU threads' run-queue wait / wall time
    cpu_pressure: float  # PSI cpu "some": share of wall time some task waited for a CPU
    contended: bool
    reason: str  # why it is contended ("" when not)

    def record(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """E.g. ``other processes 1.02 of 2 CPUs, QEMU waited 8 % of the time, steal 0.00``."""
        parts = [f"other processes {self.other_cpu:.2f} of {self.ncpu} CPUs"]
        if self.qemu_wait == self.qemu_wait:
            parts.append(f"QEMU waited for a CPU {self.qemu_wait:.0%} of the time")
        if self.steal == self.steal:
            parts.append(f"steal {self.steal:.2f} CPUs")
        return ", ".join(parts)


def contention(other_cpu: float, qemu_wait: float, steal: float) -> tuple[bool, str]:
    """The contention rule: ``(contended, reason)``; NaN inputs never flag."""
    why = []
    if other_cpu == other_cpu and other_cpu > OTHER_CPU_LIMIT:
        why.append(f"other processes used {other_cpu:.2f} CPUs (> {OTHER_CPU_LIMIT})")
    if qemu_wait == qemu_wait and qemu_wait > QEMU_WAIT_LIMIT:
        why.append(f"QEMU waited for a CPU {qemu_wait:.0%} of the time (> {QEMU_WAIT_LIMIT:.0%})")
    if steal == steal and steal > STEAL_LIMIT:
        why.append(f"the hypervisor stole {steal:.2f} CPUs (> {STEAL_LIMIT})")
    return (bool(why), "; ".join(why))


def _cpu_line(proc: Path) -> tuple[float, float] | None:
    """(busy, steal) seconds summed over CPUs from the ``cpu`` line of /proc/stat."""
    try:
        with open(proc / "stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    hz = os.sysconf("SC_CLK_TCK")
    # guest/guest_nice (fields 9-10) are already counted in user/nice (proc(5))
    return ((user + nice + system + irq + softirq) / hz, steal / hz)


def _psi_some_s(proc: Path) -> float | None:
    try:
        with open(proc / "pressure" / "cpu", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("some "):
                    for tok in line.split():
                        if tok.startswith("total="):
                            return int(tok[6:]) / 1e6
    except (OSError, ValueError):
        return None
    return None


def _thread_wait_s(proc: Path, pid: int) -> dict[str, float]:
    """Run-queue wait of each thread of ``pid`` (seconds), by thread id; {} when not readable."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(proc / str(pid) / "task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(proc / str(pid) / "task" / tid / "schedstat", encoding="ascii") as fh:
                fields = fh.read().split()
            out[tid] = int(fields[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return out


def _proc_cpu_s(proc: Path, pid: int) -> float | None:
    """utime + stime of a process, all threads (proc(5): fields 14 and 15 of /proc/<pid>/stat), seconds."""
    try:
        with open(proc / str(pid) / "stat", encoding="ascii", errors="replace") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the name (field 2) may hold blanks
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _rusage_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


@dataclass
class HostLoadSampler:
    """Start it just before QEMU starts, :meth:`poll` it while the boot runs, :meth:`finish` it once
    QEMU has been reaped (its CPU time is then in labkit's ``RUSAGE_CHILDREN``)."""

    proc: Path = _PROC
    t0: float = field(default_factory=time.monotonic)
    pid: int | None = None
    _cpu0: tuple[float, float] | None = None
    _psi0: float | None = None
    _self0: float = 0.0
    _children0: float = 0.0
    _waits: dict[str, float] = field(default_factory=dict)  # last seen wait per QEMU thread
    _last_poll: float = float("-inf")
    #: (seconds since the boot started, QEMU's CPU seconds so far), taken as serial output arrives (mark)
    cpu_marks: list[tuple[float, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cpu0 = _cpu_line(self.proc)
        self._psi0 = _psi_some_s(self.proc)
        self._self0 = _rusage_s(resource.RUSAGE_SELF)
        self._children0 = _rusage_s(resource.RUSAGE_CHILDREN)

    def attach(self, pid: int) -> None:
        self.pid = pid

    def poll(self, now: float | None = None, *, force: bool = False) -> None:
        """Read QEMU's per-thread run-queue wait (at most every SAMPLE_INTERVAL_S unless ``force``)."""
        now = time.monotonic() if now is None else now
        if self.pid is None or (not force and now - self._last_poll < SAMPLE_INTERVAL_S):
            return
        self._last_poll = now
        self._waits.update(_thread_wait_s(self.proc, self.pid))

    def mark(self, t: float) -> None:
        """Record QEMU's CPU time so far (all its threads, exited ones included: /proc/<pid>/stat utime +
        stime, 1/CLK_TCK resolution) at ``t``: the per-package CPU cost is the difference between two
        package lines, which a busy host does not inflate the way it inflates their wall-time gap."""
        if self.pid is None:
            return
        cpu = _proc_cpu_s(self.proc, self.pid)
        if cpu is not None:
            self.cpu_marks.append((round(t, 6), cpu))

    def finish(self, *, qemu_reaped: bool = True) -> HostLoad:
        wall = max(time.monotonic() - self.t0, 1e-9)
        nan = float("nan")
        qemu = _rusage_s(resource.RUSAGE_CHILDREN) - self._children0 if qemu_reaped else nan
        own = _rusage_s(resource.RUSAGE_SELF) - self._self0
        cpu1 = _cpu_line(self.proc)
        if cpu1 is not None and self._cpu0 is not None and qemu == qemu:
            other = (cpu1[0] - self._cpu0[0] - qemu - own) / wall
            steal = (cpu1[1] - self._cpu0[1]) / wall
        else:
            other = steal = nan
        psi1 = _psi_some_s(self.proc)
        pressure = (psi1 - self._psi0) / wall if psi1 is not None and self._psi0 is not None else nan
        wait = sum(self._waits.values()) / wall if self._waits else nan
        flag, why = contention(other, wait, steal)
        return HostLoad(round(wall, 3), os.cpu_count() or 1, round(qemu / wall, 4) if qemu == qemu else nan,
                        round(other, 4), round(steal, 4), round(wait, 4), round(pressure, 4), flag, why)
