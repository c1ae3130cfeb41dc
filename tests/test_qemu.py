"""Serial parsing (unit), QEMU argv/plan mode, and real boots through OVMF -> rEFInd (-> GRUB)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import ALPINE_MARKER, HANG_MARKER, HANG_TAIL, NIXOS_MARKER, ChainImage

from labkit.core.console import SerialDecoder, SerialLine, clean, format_line, read_serial_log
from labkit.core.layout import LAB_LAYOUT, Role
from labkit.core.runner import Mode, Runner, read_transcript
from labkit.lab import qemu
from labkit.systems import bootchain
from labkit.targets.image import verify_image

ACCEL = "tcg"  # KNOWLEDGE: kvm hangs here; test_kvm_probe records what this host does


# -- serial parsing ------------------------------------------------------------------------
def test_ansi_is_stripped_and_cr_removed() -> None:
    raw = b"\x1b[2J\x1b[01;01H\x1b[=3h\x1b[1m\x1b[33m\x1b[40mMapping table\x1b[0m\x1b[37m\r"
    assert clean(raw) == "Mapping table"
    assert clean(b"\x1b]0;title\x07ok\x1b(B\x1b7x") == "okx"
    assert clean(b"caf\xe9") == "café"  # latin-1, never a decode error


def test_decoder_buffers_partial_lines_and_split_escapes() -> None:
    dec = SerialDecoder()
    assert dec.feed(b"hel") == []
    assert dec.feed(b"lo\r\nwor") == ["hello"]
    assert dec.feed(b"ld \x1b[1") == []  # escape split across chunks
    assert dec.feed(b";33mX\x1b[0m\n\n") == ["world X", ""]
    assert dec.feed(b"tail") == [] and dec.pending == 4
    assert dec.flush() == ["tail"] and dec.flush() == []


def test_serial_log_format_round_trips(tmp_path: Path) -> None:
    lines = [SerialLine(0.5, "a\tb"), SerialLine(12.3456789, "café"), SerialLine(13.0, "")]
    log = tmp_path / "serial-alpine-1.log"
    log.write_text("".join(format_line(ln) for ln in lines), encoding="utf-8")
    assert log.read_text(encoding="utf-8").splitlines()[1] == "12.345679\tcafé"
    back = read_serial_log(log)
    assert [ln.text for ln in back] == ["a\tb", "café", ""] and back[1].t == pytest.approx(12.345679)


# -- argv and plan mode -------------------------------------------------------------------
def test_qemu_argv(tmp_path: Path) -> None:
    argv = qemu.qemu_argv(tmp_path / "lab.img", vars_file=tmp_path / "VARS.fd", accel="tcg")
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    for want in ("-machine q35", "-accel tcg", "-m 512", "-no-reboot", "-display none", "-nic none",
                 f"file={tmp_path / 'lab.img'},format=raw,if=virtio",
                 "readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                 f"unit=1,file={tmp_path / 'VARS.fd'}"):
        assert want in joined, want


def test_plan_mode_boots_nothing(tmp_path: Path) -> None:
    runner = Runner(mode=Mode.PLAN, progress=None)
    res = qemu.boot(runner, tmp_path / "lab.img", workdir=tmp_path / "vm", accel="tcg", timeout_s=5)
    assert not res.ok and "plan" in res.reason and not (tmp_path / "vm").exists()
    assert runner.planned[0].argv[0] == "qemu-system-x86_64"


def test_host_versions() -> None:
    v = qemu.host_versions()
    assert v["qemu"][0].isdigit() and v["ovmf"] != "not installed" and v["refind"].startswith("0.")


# -- real boots -----------------------------------------------------------------------------
@pytest.mark.boot
def test_accelerator_fallback_from_broken_candidate(tmp_path: Path, runner: Runner) -> None:
    choice = qemu.choose_accelerator(runner, ("xen", "tcg"), workdir=tmp_path)
    assert choice.accel == "tcg"
    assert choice.tried[0][:2] == ("xen", False) and "xen" in choice.tried[0][2]
    assert choice.tried[1][:2] == ("tcg", True)
    assert choice.warning is not None and "xen" in choice.warning


@pytest.mark.boot
def test_kvm_probe_is_bounded(tmp_path: Path, runner: Runner) -> None:
    t0 = time.monotonic()
    choice = qemu.choose_accelerator(runner, ("kvm", "tcg"), workdir=tmp_path)
    elapsed = time.monotonic() - t0
    print(f"accelerator: {choice.accel}; tried: {choice.tried}; {elapsed:.1f} s")
    assert choice.accel in ("kvm", "tcg") and elapsed < 30
    if choice.accel == "tcg":
        assert choice.tried[0][:2] == ("kvm", False) and choice.warning


def _same_log(logged: list[SerialLine], lines: list[SerialLine]) -> None:
    assert [ln.text for ln in logged] == [ln.text for ln in lines]
    assert all(abs(a.t - b.t) < 1e-6 for a, b in zip(logged, lines, strict=True))


def _boot(chain: ChainImage, tmp_path: Path, title: str, *, timeout_s: float, name: str) -> qemu.BootResult:
    bootchain.set_default_selection(chain.runner, chain.path, chain.info.offset(Role.ESP), title)
    return qemu.boot(chain.runner, chain.path, workdir=tmp_path / "vm", accel=ACCEL, timeout_s=timeout_s,
                     serial_log=tmp_path / f"serial-{name}-1.log")


def _check_ok(res: qemu.BootResult, marker: str) -> SerialLine:
    assert res.ok and res.rc == 0 and not res.timed_out, (res.reason, res.lines[-5:])
    line = res.find(marker)
    assert line is not None, [ln.text for ln in res.lines]
    assert res.accel == ACCEL and f"-accel {ACCEL}" in " ".join(res.argv)
    assert res.serial_log is not None
    _same_log(read_serial_log(res.serial_log), res.lines)
    assert not any("\x1b" in ln.text or "\r" in ln.text for ln in res.lines)
    print(f"{marker}: {line.t:.2f} s after QEMU start, exit after {res.wall_s:.2f} s")
    return line


@pytest.mark.boot
def test_boot_alpine_entry_direct_from_rEFInd(chain_image: ChainImage, tmp_path: Path) -> None:
    res = _boot(chain_image, tmp_path, chain_image.alpine.title, timeout_s=90, name="alpine")
    line = _check_ok(res, ALPINE_MARKER)
    assert res.find("Using load options") is not None  # rEFInd loaded the kernel itself
    assert res.find("Welcome to GRUB") is None and line.t < 60
    rec = [r for r in read_transcript(chain_image.path.parent / "transcript.jsonl")
           if r.get("argv", [""])[0] == "qemu-system-x86_64"]
    assert rec[-1]["accel"] == ACCEL and rec[-1]["rc"] == 0


@pytest.mark.boot
def test_boot_nixos_entry_via_grub(chain_image: ChainImage, tmp_path: Path) -> None:
    res = _boot(chain_image, tmp_path, chain_image.nixos.title, timeout_s=90, name="nixos")
    _check_ok(res, NIXOS_MARKER)
    assert res.find("Welcome to GRUB") is not None and res.find(ALPINE_MARKER) is None


@pytest.mark.boot
def test_hanging_guest_times_out_and_keeps_the_log(chain_image: ChainImage, tmp_path: Path) -> None:
    # 60 s: the guest reaches its marker in ~12 s on a quiet host, 3x that on a busy 2-core one
    res = _boot(chain_image, tmp_path, chain_image.hang.title, timeout_s=60, name="hang")
    assert res.timed_out and not res.ok and "killed" in res.reason
    assert 60 <= res.wall_s < 66
    assert res.find(HANG_MARKER) is not None
    assert res.lines[-1].text.endswith(HANG_TAIL)  # the partial last line was flushed
    _same_log(read_serial_log(tmp_path / "serial-hang-1.log"), res.lines)
    verify_image(chain_image.runner, LAB_LAYOUT, chain_image.path)  # the image survived the kill


def test_last_candidate_without_smoke_boot(tmp_path: Path) -> None:
    """The lab takes the last candidate without booting OVMF: nothing else is left to try."""
    runner = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None)
    choice = qemu.choose_accelerator(runner, ("tcg",), workdir=tmp_path / "accel", smoke_last=False)
    assert choice.accel == "tcg" and choice.tried[0][:2] == ("tcg", True)
    assert "without a smoke boot" in choice.tried[0][2]
    assert not (tmp_path / "accel").exists()  # no QEMU ran (it would have made its work dir)
