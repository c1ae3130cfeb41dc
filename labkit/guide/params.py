"""``labkit run -p KEY=VALUE``: the command-line side of the notebooks' parameters.

The parameters themselves are the settings table (:class:`labkit.core.settings.Settings`): every notebook's
``parameters`` cell is rendered from it and the next cell validates ``Settings.from_mapping(globals())``.
"""

from __future__ import annotations

import json
from typing import Any

from labkit.core.errors import InputError


def parse_assignment(text: str) -> tuple[str, str]:
    """``key=value`` from the command line (the value stays a string; coerce later)."""
    if "=" not in text:
        raise InputError(f"-p {text!r} is not key=value", "write e.g. -p target=lab or -p 04_alpine.hostname=box")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError(f"-p {text!r} has no key", "write e.g. -p boots=1")
    return key, value


def parse_loose(value: str) -> Any:
    """A value for a notebook-specific parameter: JSON if it parses (numbers, true, lists), else text.

    ``NaN``/``Infinity`` (which Python's JSON reader accepts) and numbers beyond 1e15 are refused."""

    def no_constant(name: str) -> Any:
        raise InputError(f"-p value {value!r} holds {name}, which is not a number a parameter can take",
                         "give a finite number")

    def bounded(text: str) -> float:
        number = float(text)
        if not abs(number) <= 1e15:
            raise InputError(f"-p value {value[:40]!r} is out of range for any parameter", "give a smaller number")
        return number

    try:
        return json.loads(value, parse_constant=no_constant, parse_float=bounded,
                          parse_int=lambda t: int(bounded(t)) if len(t) > 15 else int(t))
    except json.JSONDecodeError:
        return value
