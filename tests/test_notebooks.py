"""Every chain notebook under papermill, through the chain: plan mode always, lab mode as a boot test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest_loop import make_loop, needs_loop  # noqa: F401

from labkit.core.settings import Settings
from labkit.guide.chain import CHAIN, chain_notebooks, run_chain


def _checkout_state() -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file of the checkout but caches, the venv and git's own folder."""
    root = Path(__file__).resolve().parents[1]
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "runs",
            "test-artifacts"}  # the browser test's screenshots (it may run meanwhile on another worker)
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not skip & set(rel.parts):
            st = p.stat()
            out[rel.as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def test_every_notebook_runs_in_plan_mode(tmp_path: Path) -> None:
    before = _checkout_state()
    run = run_chain(Settings(target="plan"), out=tmp_path / "run", log=None)
    # plan mode writes nothing outside its run folder: the checkout (notebooks/ included) is unchanged
    assert _checkout_state() == before
    assert run.ok, [(s.name, s.reason, s.traceback) for s in run.steps if s.status == "failed"]
    names = [s.name for s in run.steps]
    assert names == [p.stem for p in chain_notebooks()] and names == [n for n in CHAIN if n in names]
    for s in run.steps:
        assert s.status == "ok" or (s.status == "skipped" and s.reason), s
        if s.status == "ok":
            assert (run.run_dir / s.html).is_file() and (run.run_dir / s.notebook).is_file()
            assert s.parameters.get("interactive", False) is False
    index = (run.run_dir / "index.html").read_text()
    assert all(f'href="html/{s.name}.html"' in index for s in run.steps if s.status == "ok")
    overview = (run.run_dir / "html" / "00_overview.html").read_text()
    assert "data:image/png;base64" in overview  # the layout diagram
    assert "free space" in overview and "KVM" in overview
    refind = (run.run_dir / "notebooks" / "02_refind.ipynb").read_text()
    assert "refind-install" in refind and "::/EFI/BOOT/drivers_x64/ext4_x64.efi" in refind
    disk = (run.run_dir / "notebooks" / "01_disk.ipynb").read_text()
    assert "sgdisk --clear" in disk and "mkfs.ext4 -q -F -b 4096 -L alpine /dev/sdX4" in disk  # on the placeholder
    alpine = (run.run_dir / "notebooks" / "04_alpine.ipynb").read_text()
    assert "/dev/sdX4" in alpine and "alpinelab.apkovl.tar.gz" in alpine
    # the post's Alpine path, on a named placeholder ISO when none is chosen: xorriso reads apks/ and boot/
    assert "xorriso -indev '<alpine_iso: alpine-extended-3.20.3-x86_64.iso>' -osirrox on:auto_chmod_on " \
           "-extract /apks" in alpine and "-extract /boot/vmlinuz-lts" in alpine
    assert json.loads((run.run_dir / "chain.json").read_text())["ok"] is True


@pytest.mark.boot
@pytest.mark.timeout(3600)  # the whole chain with one boot per system (OpenRC / systemd guests)
def test_chain_in_lab_mode(tmp_path: Path) -> None:
    # one boot per system, no load-cost sets: the whole chain, kept short
    run = run_chain(Settings(target="lab", boots=1, max_boots=1), out=tmp_path / "run", log=None,
                    extra={"05_benchmark.load_sets": []})
    assert run.ok, [(s.name, s.reason, s.traceback) for s in run.steps if s.status == "failed"]
    status = {s.name: s.status for s in run.steps}
    assert status["05_benchmark"] == "ok" and status["06_report"] == "ok", status
    report = (run.run_dir / "html" / "06_report.html").read_text()
    assert "rehearsal" in report and "data:image/png;base64" in report
    assert (run.run_dir / "lab" / "results.csv").is_file()
    disk = (run.run_dir / "notebooks" / "01_disk.ipynb").read_text()
    assert "mkfs.vfat -F 32 -s 1 -n ESP --offset" in disk  # the disk phase on the lab image
    refind = (run.run_dir / "notebooks" / "02_refind.ipynb").read_text()
    assert "ext4 driver on the ESP: yes" in refind
    alpine = (run.run_dir / "notebooks" / "04_alpine.ipynb").read_text()
    assert "Alpine-style rehearsal: bundle complete" in alpine  # the installed image booted once


@pytest.mark.root
@pytest.mark.boot
@needs_loop
def test_chain_on_a_loop_disk(tmp_path: Path, make_loop) -> None:  # noqa: F811
    """`labkit run --target disk` on a loop device: 01-04 install through the device target, 05 boots the
    installed disk in QEMU into both systems, 06 reports."""
    from labkit.cli.main import main
    from labkit.core.layout import GiB
    from labkit.core.runner import Runner
    from labkit.targets.disks import read_disk

    dev = make_loop(size=3 * GiB)
    fp = read_disk(Runner(progress=None), dev).fingerprint
    hash_file = tmp_path / "root.hash"  # a real disk's Alpine must let its owner in
    hash_file.write_text("$6$saltsalt$" + "c" * 86 + "\n")
    rc = main(["run", "--target", "disk", "--device", dev, "--confirm", fp, "--out", str(tmp_path / "run"),
               "-p", "layout=lab", "-p", "wipe=true", "-p", "package_set=base", "-p", "boots=1", "-p", "max_boots=1",
               "-p", "05_benchmark.load_sets=[]", "-p", f"alpine_root_password_hash_file={hash_file}"])
    chain = json.loads((tmp_path / "run" / "chain.json").read_text())
    assert rc == 0, [(s["name"], s["reason"]) for s in chain["steps"] if s["status"] == "failed"]
    assert {s["name"]: s["status"] for s in chain["steps"]}["05_benchmark"] == "ok"
    rows = (tmp_path / "run" / "lab" / "results.csv").read_text()
    assert "alpine-rehearsal" in rows and "nixos-rehearsal" in rows
    assert read_disk(Runner(progress=None), dev).fingerprint != fp  # partitioned
