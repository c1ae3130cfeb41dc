"""Serial console text: byte chunks -> clean lines (see docs/contracts.md, "Serial log").

Bytes are decoded latin-1 (never fails, one char per byte), ``\\r`` is removed, ANSI escape
sequences are stripped, and a partial line is kept until its newline arrives (or ``flush()``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import LabkitError

#: CSI (ESC [ params intermediates final), OSC (ESC ] ... BEL/ST), charset selection, 2-char escapes.
ANSI_RE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"
    r"|\x1b[()*+][0-9A-Za-z]"
    r"|\x1b[@-Z\\-_=>78]"
)


@dataclass(frozen=True)
class SerialLine:
    t: float  # seconds since the QEMU process started (host time.monotonic())
    text: str


def strip_ansi(text: str) -> str:
    """``text`` without its ANSI escapes (colours, cursor moves, apk's ESC 7 / ESC 8 / ESC [0K progress)."""
    return ANSI_RE.sub("", text)


def clean(raw: bytes) -> str:
    """One raw serial line (without its newline) as text."""
    return ANSI_RE.sub("", raw.decode("latin-1")).replace("\r", "")


class SerialDecoder:
    """Split a byte stream into clean lines, buffering the partial last line."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        if b"\n" not in data:
            return []
        *done, rest = bytes(self._buf).split(b"\n")
        self._buf = bytearray(rest)
        return [clean(raw) for raw in done]

    def flush(self) -> list[str]:
        if not self._buf:
            return []
        raw = bytes(self._buf)
        self._buf.clear()
        return [clean(raw)]

    @property
    def pending(self) -> int:
        return len(self._buf)


def format_line(line: SerialLine) -> str:
    return f"{line.t:.6f}\t{line.text}\n"


_SECONDS_RE = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")


class SerialLogError(LabkitError):
    """A serial log file on disk does not follow the ``<t>\\t<text>`` format."""



def read_serial_log(path: Path) -> list[SerialLine]:
    """Read ``serial-<os>-<boot>.log``: one ``<t with 6 decimals>\\t<text>`` per line.

    A malformed line raises :class:`SerialLogError` naming the file and line (a non-UTF-8 line is read as
    latin-1).
    """
    out: list[SerialLine] = []
    data = Path(path).read_bytes()
    for no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw:
            continue  # the file's final newline (a serial line is never empty of its timestamp)
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("latin-1")
        t_str, sep, text = line.partition("\t")
        # seconds as labkit writes them: plain decimals, never nan/inf/1e29 (a hand-edited log is refused)
        t = float(t_str) if _SECONDS_RE.fullmatch(t_str) else float("nan")
        if not sep or t != t:
            raise SerialLogError(
                f"{path}: line {no} is not '<seconds>\\t<text>': {line[:80]!r}",
                "the file must be written by labkit.lab.qemu (serial-<os>-<boot>.log); do not edit it by hand",
            )
        out.append(SerialLine(t, text.rstrip("\r")))
    return out
