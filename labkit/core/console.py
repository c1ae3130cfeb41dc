"""Serial console text: byte chunks -> clean lines (see docs/contracts.md, "Serial log").

Bytes are decoded latin-1 (never fails, one char per byte), ``\\r`` is removed, ANSI escape
sequences are stripped, and a partial line is kept until its newline arrives (or ``flush()``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

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


def read_serial_log(path: Path) -> list[SerialLine]:
    """Read a ``serial-<os>-<boot>.log`` back (UTF-8 file holding the latin-1-decoded text)."""
    out: list[SerialLine] = []
    with open(path, encoding="utf-8", newline="\n") as fh:
        for ln in fh:
            t, _, text = ln.rstrip("\n").partition("\t")
            out.append(SerialLine(float(t), text))
    return out
