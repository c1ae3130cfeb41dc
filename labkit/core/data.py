"""Files shipped in ``labkit/data``: the guest scripts and the probe that real systems run too."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
GUEST_DIR = DATA_DIR / "guest"


def guest_data(name: str) -> bytes:
    """A file from ``labkit/data/guest`` (init scripts, the probe)."""
    return (GUEST_DIR / name).read_bytes()


PROBE_INCLUDE = b"# @@include loop.sh@@\n"


def probe_script() -> bytes:
    """The probe every system runs: ``probe.sh`` with ``loop.sh`` (saving the bundle on /data, the reboot loop)
    put in at its include line, so it stays one file (Alpine's ``etc/local.d/labkit-probe.start``, NixOS's
    ``./labkit-probe.sh``)."""
    probe = guest_data("probe.sh")
    if probe.count(PROBE_INCLUDE) != 1:
        raise RuntimeError("labkit/data/guest/probe.sh must hold the include line of loop.sh exactly once")
    return probe.replace(PROBE_INCLUDE, guest_data("loop.sh"))


#: The notebooks live beside the package in the repository checkout (labkit is installed with
#: ``pip install -e .`` from it, see the README).
NOTEBOOKS_DIR = DATA_DIR.parent.parent / "notebooks"
