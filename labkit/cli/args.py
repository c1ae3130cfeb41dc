"""Argument types for the ``labkit`` command line: bounded whole numbers and finite decimals.

argparse turns the :class:`argparse.ArgumentTypeError` they raise into one line
(``labkit lab: error: argument --boot-timeout: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from labkit.core.errors import InputError
from labkit.core.text import excerpt, parse_number


def whole(minimum: int, maximum: int) -> Callable[[str], int]:
    """A whole number in [minimum, maximum] (``nan``, ``1e3``, ``1.5`` and ``-1`` below 0 are refused)."""

    def parse(text: str) -> int:
        t = text.strip()
        if not t.lstrip("+-").isdigit() or len(t) > 19:
            raise argparse.ArgumentTypeError(f"{excerpt(text, 40)} is not a whole number (write digits, e.g. "
                                             f"{max(minimum, 1)})")
        value = int(t)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is outside {minimum}..{maximum}")
        return value

    parse.__name__ = "whole number"
    return parse


def decimal(minimum: float, maximum: float) -> Callable[[str], float]:
    """A finite decimal in [minimum, maximum]; ``nan``, ``inf`` and exponents (``1e29``) are refused."""

    def parse(text: str) -> float:
        try:
            return parse_number(text, "the value", minimum=minimum, maximum=maximum)
        except InputError as exc:
            raise argparse.ArgumentTypeError(f"{exc.problem} (allowed: {minimum:g}..{maximum:g})") from None

    parse.__name__ = "number"
    return parse


def assignment(text: str) -> tuple[str, str]:
    """``ROLE=SIZE`` (``--size nix_store=64G``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"{excerpt(text, 40)} is not ROLE=SIZE (e.g. nix_store=64G)")
    return key.strip(), value.strip()


def ssh_keys(values: list[str]) -> list[str]:
    """OpenSSH public keys given inline (``ssh-ed25519 AAAA...``) or as .pub files (each checked)."""
    from labkit.systems.nixos.config import ssh_keys_from

    return list(ssh_keys_from(values))
