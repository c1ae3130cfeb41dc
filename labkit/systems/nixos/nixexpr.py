"""A tiny Nix value writer: Python values -> Nix text, with proper string escaping.

Attribute sets are dicts whose keys are a name (``"fileSystems"``) or an attribute path given
as a tuple (``("fileSystems", "/nix")`` -> ``fileSystems."/nix"``). :class:`Raw` inserts a Nix
expression verbatim (``lib.mkForce``, ``pkgs.coreutils``, path literals); only labkit's own
constant text goes into a Raw, never user input.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_'-]*$")
_KEYWORDS = {"if", "then", "else", "assert", "with", "let", "in", "rec", "inherit", "or"}


@dataclass(frozen=True)
class Raw:
    """A Nix expression written as is."""

    text: str


@dataclass(frozen=True)
class Apply:
    """``fn value`` — e.g. ``Apply("lib.mkForce", {...})``."""

    fn: str
    value: object


NixValue = object


def nix_string(s: str) -> str:
    """A double-quoted Nix string literal for ``s`` (escapes ``\\``, ``"``, ``${``, control characters)."""
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def attr_name(name: str) -> str:
    return name if _IDENT.match(name) and name not in _KEYWORDS else nix_string(name)


def _key(key: str | tuple[str, ...]) -> str:
    parts = (key,) if isinstance(key, str) else key
    return ".".join(attr_name(p) for p in parts)


def render(value: NixValue, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Apply):
        return f"{value.fn} {render(value.value, indent)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return nix_string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{ }"
        lines = [f"{pad}  {_key(k)} = {render(v, indent + 1)};" for k, v in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, Sequence):
        if not value:
            return "[ ]"
        items = [render(v, indent + 1) for v in value]
        if all("\n" not in i for i in items) and sum(len(i) + 1 for i in items) < 80:
            return "[ " + " ".join(_paren(i) for i in items) + " ]"
        return "[\n" + "\n".join(f"{pad}  {_paren(i)}" for i in items) + f"\n{pad}]"
    raise TypeError(f"cannot write {type(value).__name__} as Nix")


def _paren(item: str) -> str:
    """List items are space-separated: a function application must be parenthesised."""
    simple = item.startswith(('"', "{", "[", "(")) or " " not in item
    return item if simple else f"({item})"
