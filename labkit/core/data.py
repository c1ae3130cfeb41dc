"""Files shipped in ``labkit/data``: the guest scripts and the probe that real systems run too."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
GUEST_DIR = DATA_DIR / "guest"


def guest_data(name: str) -> bytes:
    """A file from ``labkit/data/guest`` (init scripts, the probe)."""
    return (GUEST_DIR / name).read_bytes()

#: The notebooks live beside the package in the repository checkout (labkit is installed with
#: ``pip install -e .`` from it, see the README).
NOTEBOOKS_DIR = DATA_DIR.parent.parent / "notebooks"
