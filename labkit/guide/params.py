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
    """A value for a notebook-specific parameter: JSON if it parses (numbers, true, lists), else text."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value
