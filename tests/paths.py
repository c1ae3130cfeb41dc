"""Where the tests find their real-format samples: always relative to this folder, never an
absolute path of some machine (a user's clone lives anywhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
ALPINE_FIXTURES = FIXTURES / "alpine-3.20.3"
NIXOS_FIXTURES = FIXTURES / "nixos"

MINIROOTFS_NAME = "alpine-minirootfs-3.20.3-x86_64.tar.gz"
MINIROOTFS_ENV = "LABKIT_ALPINE_ROOTFS"


def alpine_minirootfs() -> Path | None:
    """The official Alpine minirootfs tarball: ``$LABKIT_ALPINE_ROOTFS``, else ``../shared/upstream/``
    beside the clone; None when neither holds it."""
    env = os.environ.get(MINIROOTFS_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "upstream" / MINIROOTFS_NAME)
    return next((p for p in candidates if p.is_file()), None)


def require_alpine_minirootfs() -> Path:
    """:func:`alpine_minirootfs` or skip the test, saying how to provide it."""
    found = alpine_minirootfs()
    if found is None:
        pytest.skip(f"no Alpine minirootfs: set {MINIROOTFS_ENV} to {MINIROOTFS_NAME} "
                    "(https://dl-cdn.alpinelinux.org/alpine/v3.20/releases/x86_64/)")
    return found
