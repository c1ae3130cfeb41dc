"""Image build time: labkit.image.build_image vs the same tools in a plain shell script.

    .venv/bin/python benchmarks/bench_image_build.py [REPEATS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labkit.image import build_image
from labkit.layout import LAB_LAYOUT, Role
from labkit.runner import Runner

HERE = Path(__file__).resolve().parent


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        tree = t / "alpine"
        (tree / "boot").mkdir(parents=True)
        (tree / "boot" / "vmlinuz").write_bytes(b"k" * (8 << 20))
        files: dict[str, bytes | Path] = {"EFI/BOOT/BOOTX64.EFI": Path("/usr/share/refind/refind/refind_x64.efi")}
        times: dict[str, list[float]] = {"labkit (build+verify)": [], "sh, dd conv=sparse copy": [],
                                         "sh, no copy step": []}
        for _ in range(n):
            t0 = time.monotonic()
            build_image(Runner(progress=None), LAB_LAYOUT, t / "a.img", {Role.ALPINE: tree}, files)
            times["labkit (build+verify)"].append(time.monotonic() - t0)
            for key, copy in (("sh, dd conv=sparse copy", "dd"), ("sh, no copy step", "none")):
                t0 = time.monotonic()
                subprocess.run([HERE / "image_build.sh", t / "b.img", tree], check=True, env={"COPY": copy,
                               "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
                times[key].append(time.monotonic() - t0)
        base = statistics.median(times["sh, no copy step"])
        for key, v in times.items():
            med = statistics.median(v)
            print(f"{key:28s} median {med:6.2f} s  (min {min(v):.2f}, max {max(v):.2f}, n={n})  "
                  f"ratio to sh-no-copy {med / base:.2f}")


if __name__ == "__main__":
    main()
