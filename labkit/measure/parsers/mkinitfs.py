"""The kernel-log messages of Alpine's diskless initramfs (mkinitfs ``initramfs-init.in``).

``ebegin`` writes ``<msg>...`` to ``/dev/kmsg`` and ``eend`` writes ``<msg>: ok.`` or ``<msg>: failed. <why>``
(alpinelinux/mkinitfs 3.10.1 initramfs-init.in l.11-33; even with ``quiet``). Since mkinitfs 3.13.0
(commit 6702e303 "initramfs: properly report apkovl install failures", 3.13.0 l.1072) a failed ``apk add``
also writes ``WARNING: apkovl packages install completed with errors...`` before
``Installing packages to root filesystem: ok.`` — the step itself still ends in ``ok.``; in 3.10/3.11 the
status is umount's, so a failed install leaves no trace in the kernel log at all. The rehearsal initramfs
writes the same texts (``labkit/data/guest/alpine-init.sh``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from labkit.measure.bundle import parse_dmesg

INSTALL_STEP = "Installing packages to root filesystem"
#: mkinitfs 3.13.0 initramfs-init.in l.1072
INSTALL_ERRORS_WARNING = "WARNING: apkovl packages install completed with errors..."

_BEGIN_RE = re.compile(r"^(?P<msg>.+?)\.\.\.$")
_END_RE = re.compile(r"^(?P<msg>.+?): (?:(?P<ok>ok)\.|(?P<failed>failed)\.(?: (?P<why>.*))?)$")
_VERSION_RE = re.compile(r"^Alpine Init (?P<v>\S+)")


@dataclass(frozen=True)
class InitramfsStep:
    message: str  # "Installing packages to root filesystem"
    started: float | None  # kernel-log time of "<message>..."
    ended: float | None  # time of "<message>: ok." / ": failed."
    status: str | None  # "ok", "failed", or None (no end line: the step never finished)
    detail: str = ""  # the text after "failed."


@dataclass(frozen=True)
class InitramfsLog:
    version: str | None  # from "Alpine Init <version>" (the rehearsal writes "labkit-rehearsal")
    steps: tuple[InitramfsStep, ...]
    install_errors: bool  # the 3.13 WARNING line was written
    warnings: tuple[str, ...]  # every kernel-log line starting "WARNING:" between the steps

    def step(self, message: str) -> InitramfsStep | None:
        return next((s for s in self.steps if s.message == message), None)


def parse_initramfs_messages(dmesg: str | list[tuple[float, str]]) -> InitramfsLog:
    """The initramfs's steps from a dmesg text (or :func:`labkit.measure.bundle.parse_dmesg` records).

    Lines that are no initramfs step (the kernel's own, apkovl file names, ...) are skipped, so the whole
    dmesg of a boot can be given.
    """
    records = parse_dmesg(dmesg) if isinstance(dmesg, str) else dmesg
    version: str | None = None
    steps: list[InitramfsStep] = []
    open_steps: dict[str, int] = {}
    warnings: list[str] = []
    for t, text in records:
        line = text.strip()
        v = _VERSION_RE.match(line)
        if v and version is None:
            version = v["v"]
            continue
        if line.startswith("WARNING:"):
            warnings.append(line)
            continue
        e = _END_RE.match(line)
        if e and e["msg"] in open_steps:
            i = open_steps.pop(e["msg"])
            s = steps[i]
            steps[i] = InitramfsStep(s.message, s.started, t, "ok" if e["ok"] else "failed", (e["why"] or "").strip())
            continue
        b = _BEGIN_RE.match(line)
        if b and not line.startswith(("[", "labkit-rehearsal:")):
            open_steps[b["msg"]] = len(steps)
            steps.append(InitramfsStep(b["msg"], t, None, None))
    return InitramfsLog(version, tuple(steps), INSTALL_ERRORS_WARNING in warnings, tuple(warnings))
