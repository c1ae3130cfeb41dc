"""The Alpine-style rehearsal with the real apk-tools (the Alpine minirootfs given): boots under QEMU (TCG)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from paths import require_alpine_minirootfs
from test_guests import CHECK, boot, mkext4, needs_qemu, parse_bundle

from labkit.core.runner import Runner
from labkit.measure.bundle import parse_bundle_text
from labkit.measure.metrics import measure_bundle
from labkit.measure.parsers.apk import parse_apk_installed
from labkit.measure.parsers.apk_timing import package_steps
from labkit.rehearsal import GuestKernel, build_alpine_tree, obtain_kernel
from labkit.rehearsal.apk import tamper_data
from labkit.rehearsal.kernel import default_kernel_cache


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(progress=None)


@pytest.fixture(scope="module")
def kernel(runner: Runner) -> GuestKernel:
    return obtain_kernel(runner, default_kernel_cache())


def _real_alpine(runner: Runner, kernel: GuestKernel, tmp_path: Path, world: str = "default",
                 break_package: str | None = None) -> tuple[str, float]:
    tree = tmp_path / "alpine"
    t0 = time.monotonic()
    build = build_alpine_tree(runner, kernel, tree, world, extra_overlay={"etc/local.d/00-check.start": (CHECK, 0o755)},
                              alpine_rootfs=require_alpine_minirootfs(), apk_cache=tmp_path / "apk-cache")
    print(f"alpine build {time.monotonic() - t0:.1f} s, {len(build.packages)} packages, "
          f"{build.installed_size / 2**20:.1f} MiB installed, {build.compressed_size / 2**20:.1f} MiB of .apk")
    assert build.file("packages") == "apk-tools"
    assert "quiet" not in build.entry.cmdline.split()  # Alpine's verbose entry: apk prints its lines
    if break_package is not None:  # the package's data changed after it was signed and indexed
        apk = next((tree / "apks" / "x86_64").glob(f"{break_package}-[0-9]*.apk"))
        apk.write_bytes(tamper_data(apk.read_bytes()))
    e = build.entry
    disk = mkext4(tree, tmp_path / "alpine.img", "alpine", "768M")
    text, took = boot(tree / e.kernel, tree / e.initrd, e.cmdline, [disk])
    (tmp_path / "serial.log").write_text(text)
    print(f"real-apk alpine boot {took:.1f} s wall to the bundle (TCG); serial log {tmp_path / 'serial.log'}")
    return text, took


@needs_qemu
@pytest.mark.boot
def test_real_apk_installs_the_alpine_rehearsal(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    text, _took = _real_alpine(runner, kernel, tmp_path)
    os_id, s = parse_bundle(text)
    assert os_id == "alpine-rehearsal"
    installed = {p.name: p for p in parse_apk_installed(s["apk_installed"])}
    assert installed["apk-tools"].version == "2.14.4-r0" and installed["busybox"].version == "1.36.1-r29"
    assert installed["musl"].version == "1.2.5-r0" and "labkit-rehearsal-base" in installed
    console = text[: text.index("@@LABKIT-BUNDLE-BEGIN")]
    assert "Installing busybox (1.36.1-r29)" in console and "Executing busybox-1.36.1-r29.post-install" in console
    assert "UNTRUSTED" not in console and "BAD signature" not in console
    steps = package_steps([(float(i), ln) for i, ln in enumerate(console.splitlines())])
    assert {"musl", "busybox", "apk-tools", "gdisk"} <= {st.name for st in steps}
    assert len(steps) == len(installed)
    dm = s["dmesg"]
    assert "Installing packages to root filesystem..." in dm and "Installing packages to root filesystem: ok." in dm
    assert "WARNING: apkovl packages install completed with errors" not in dm
    m = {x.name: x for x in measure_bundle(parse_bundle_text(text, strict=False)).metrics}
    assert m["packages_missing"].value == 0
    assert "labkit-check: present /sbin/sgdisk" in text


@needs_qemu
@pytest.mark.boot
def test_real_apk_broken_package_is_reported_missing(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    """gdisk's .apk no longer matches what was signed: apk refuses it (BAD signature), the boot goes on, and
    the bundle reports it missing (an incomplete install, not a fast load)."""
    text, _took = _real_alpine(runner, kernel, tmp_path, break_package="gdisk")
    console = text[: text.index("@@LABKIT-BUNDLE-BEGIN")]
    assert "ERROR: gdisk-1.0.9-r2: BAD signature" in console or "BAD signature" in console, console[-3000:]
    _os, s = parse_bundle(text)
    assert "WARNING: apkovl packages install completed with errors..." in s["dmesg"]
    installed = {p.name for p in parse_apk_installed(s["apk_installed"])}
    m = {x.name: x for x in measure_bundle(parse_bundle_text(text, strict=False)).metrics}
    assert "gdisk" not in installed and "busybox" in installed
    assert m["packages_missing"].value == 1 and "gdisk" in m["packages_missing"].source
    assert "labkit-check: present /sbin/sgdisk" not in text
