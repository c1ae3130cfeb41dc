"""Text and number helpers for what labkit shows and what it reads from users and bundles.

- :func:`printable`: a name from an archive or a path, with control characters (ESC, CR, newline,
  bidi overrides, ...) shown escaped, so a terminal never interprets them.
- :func:`excerpt`: a short, escaped piece of a long input line for an error message.
- :func:`parse_number` / :func:`check_finite`: a number written by a user or a guest: ``nan``,
  ``inf``, exponents past the allowed range and absurd magnitudes are refused.
- :func:`dumps_json`: JSON that never contains ``NaN``/``Infinity`` (they become ``null``).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

from labkit.core.errors import InputError

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def printable(text: str) -> str:
    """``text`` with every control/format character escaped (``\\x1b``, ``\\n``, ``\\u202e``)."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch)[0] in "CZ" and ch != " ":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def excerpt(text: str, limit: int = 80) -> str:
    """A short, escaped, quoted piece of ``text`` (``'abc…' (10485760 characters)`` when cut)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


#: A plain decimal number as users and guests write it: no exponent, no nan/inf, no underscores.
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


def parse_number(text: str, what: str, *, minimum: float | None = None, maximum: float | None = None,
                 fix: str | None = None) -> float:
    """A finite decimal number within [minimum, maximum]; ``nan``, ``inf``, ``1e29`` are refused."""
    t = text.strip()
    if not _NUMBER_RE.fullmatch(t) or len(t) > 40:
        raise InputError(f"{what} {excerpt(text, 40)} is not a plain decimal number (no nan, inf or exponent)",
                         fix or f"write {what} as digits, e.g. 12 or 0.5")
    return check_finite(float(t), what, minimum=minimum, maximum=maximum, fix=fix)


def check_finite(value: float, what: str, *, minimum: float | None = None, maximum: float | None = None,
                 fix: str | None = None) -> float:
    if not math.isfinite(value):
        raise InputError(f"{what} is {value!r}; it must be a finite number", fix or f"give {what} as a number")
    if minimum is not None and value < minimum:
        raise InputError(f"{what} {value:g} is below the minimum {minimum:g}", fix or f"use at least {minimum:g}")
    if maximum is not None and value > maximum:
        raise InputError(f"{what} {value:g} is above the maximum {maximum:g}", fix or f"use at most {maximum:g}")
    return value


def _finite_only(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_only(v) for v in value]
    return value


def dumps_json(value: Any, **kw: Any) -> str:
    """``json.dumps`` that writes ``null`` for NaN/±Infinity (strict JSON, never ``NaN``)."""
    kw.setdefault("default", str)
    return json.dumps(_finite_only(value), allow_nan=False, **kw)
