"""A tiny test guest: the Debian kernel + a busybox-static initramfs that prints a marker.

Test-only (the real rehearsal guests live in labkit/guests). The kernel is fetched with apt
once (labkit.rehearsal.obtain_kernel) and cached under ~/.cache/labkit/kernel.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from labkit.core.errors import LabkitError
from labkit.core.layout import Role
from labkit.core.runner import Runner
from labkit.rehearsal.kernel import default_kernel_cache, obtain_kernel

BUSYBOX = Path("/bin/busybox")
CMDLINE = "console=ttyS0,115200 quiet panic=-1"


@dataclass(frozen=True)
class Entry:
    """Same fields as labkit.rehearsal.BootEntry (docs/contracts.md)."""

    title: str
    partition_role: Role
    kernel: str
    initrd: str
    cmdline: str = CMDLINE


def fetch_kernel(runner: Runner) -> Path | str:
    """The Debian kernel (labkit's own cached download), or a reason string when it cannot be had."""
    if os.environ.get("LABKIT_TEST_KERNEL"):
        return Path(os.environ["LABKIT_TEST_KERNEL"])
    try:
        return obtain_kernel(runner, default_kernel_cache()).vmlinuz
    except (LabkitError, OSError) as exc:
        return f"cannot fetch the Debian kernel with apt: {exc}"


def make_initrd(runner: Runner, out: Path, marker: str, *, power_off: bool = True, tail: str = "") -> Path:
    """A newc cpio whose /init prints ``marker`` on the console, then powers off (or hangs).

    ``tail`` is printed after the marker without a newline (to test partial-line flushing).
    """
    tree = Path(tempfile.mkdtemp(prefix="initrd-", dir=out.parent))
    try:
        for d in ("bin", "dev", "proc", "sys"):
            (tree / d).mkdir()
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        end = "/bin/busybox poweroff -f" if power_off else "while :; do /bin/busybox sleep 60; done"
        init = (
            "#!/bin/busybox sh\n"
            "/bin/busybox mount -t devtmpfs devtmpfs /dev\n"
            f"echo '{marker}' > /dev/console\n"
            + (f"/bin/busybox printf '%s' '{tail}' > /dev/console\n" if tail else "")
            + f"{end}\n"
        )
        (tree / "init").write_text(init)
        (tree / "init").chmod(0o755)
        names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        runner.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=tree,
                   input=("\n".join(names) + "\n").encode(), stdout_path=out)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    return out
