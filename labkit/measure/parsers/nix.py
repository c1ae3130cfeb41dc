"""Nix store sizes: ``nix path-info -rS`` / ``-rsS`` (bytes or human), ``--json``, and ``du -sk``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from labkit.measure.bundle import SectionError, whole_number

_HUMAN = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class StorePath:
    path: str
    nar_size: int | None  # own NAR size (path-info -s), bytes
    closure_size: int | None  # closure size (path-info -S), bytes


def _size(tok: str, section: str, no: int, line: str) -> int:
    m = re.fullmatch(r"(\d{1,18}(?:\.\d{1,9})?)([KMGT]?)", tok)
    if not m:
        raise SectionError(section, no, line, f"size {tok!r} is not a number (optionally with K/M/G/T)")
    return int(float(m[1]) * _HUMAN[m[2]])


def parse_nix_path_info(text: str, section: str = "nix_path_info") -> list[StorePath]:
    """``nix path-info -rS PATH`` (path, closure size) or ``-rsS`` (path, NAR size, closure size);
    tabs or spaces; ``-h`` sizes like ``293.4K``; or the ``--json`` list/object forms.

    The text format is ``<path><padding>\\t<size right-aligned in 11 columns>`` (nix src/nix/path-info.cc:
    ``fmt("\\t%11d", value)`` after padding the path), hence split on any blank. ``warning:`` lines (nix's
    stderr, kept by the probe) are skipped; an ``error:`` line is a :class:`SectionError`."""
    s = "\n".join(ln for ln in text.split("\n") if not ln.strip().startswith("warning:")).strip()
    if s.startswith(("[", "{")):
        try:
            data = json.loads(s)
        except json.JSONDecodeError as exc:
            raise SectionError(section, exc.lineno, None, f"invalid JSON: {exc.msg}") from None
        # Nix >= 2.19: {path: info}, info null for a path that is not valid
        items = data if isinstance(data, list) else [{"path": k, **(v or {})} for k, v in data.items()]
        return [StorePath(str(d["path"]), d.get("narSize"), d.get("closureSize")) for d in items]
    out: list[StorePath] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("warning:"):
            continue  # the probe keeps nix's stderr: a warning (e.g. about nix.conf) is not a store path
        if line.startswith("error:"):
            raise SectionError(section, no, raw, "nix path-info failed in the guest")
        fields = line.split()
        if not fields[0].startswith("/") or len(fields) not in (2, 3):
            raise SectionError(section, no, raw, "expected '<store path> [<nar size>] <closure size>'")
        sizes = [_size(f, section, no, raw) for f in fields[1:]]
        nar, closure = (sizes[0], sizes[1]) if len(sizes) == 2 else (None, sizes[0])
        out.append(StorePath(fields[0], nar, closure))
    return out


def parse_du_k(text: str, section: str = "nix_store_du") -> list[tuple[str, int]]:
    """``du -sk PATH...``: ``[(path, KiB), ...]``."""
    out: list[tuple[str, int]] = []
    for no, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        size, sep, path = raw.strip().partition("\t")
        if not sep:
            size, _, path = raw.strip().partition(" ")
        if not path.strip():
            raise SectionError(section, no, raw, "expected '<KiB>\\t<path>'")
        out.append((path.strip(), whole_number(size, section, no, raw, "KiB size")))
    return out
