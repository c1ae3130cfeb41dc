"""The hardware reboot loop: the probe's bundle on /data, the firmware section, the loop's state machine
(labkit/data/guest/loop.sh run by the real busybox sh), refind.conf edits on a real FAT ESP (mtools), collect
from a real ext4 image (mkfs.ext4 -d), arm/disarm."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import synth

from labkit.core.console import SerialLine
from labkit.core.data import GUEST_DIR, probe_script
from labkit.measure.bundle import extract_bundles, parse_bundle_text
from labkit.measure.metrics import measure_bundle
from labkit.measure.parsers import FORMATS, detect_format
from labkit.measure.parsers.firmware import firmware_times, parse_firmware

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="needs busybox")
APPLETS = ("sh", "awk", "md5sum", "df", "uname", "cat", "rm", "mkdir", "cp", "mv", "sync", "tr", "tail", "ls",
           "date", "grep", "sleep", "echo", "umount", "mount", "findfs")
BOOT_ID = "0b6c4b5e-1111-4222-8333-444455556666"
GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"


def _bindir(tmp: Path) -> Path:
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    assert BUSYBOX
    for applet in APPLETS:
        if not (bindir / applet).exists():
            (bindir / applet).symlink_to(BUSYBOX)
    return bindir


def _guest_root(tmp: Path, os_id: str = "alpine", *, data: bool = True, boot_id: str = BOOT_ID) -> Path:
    root = tmp / "root"
    for d in ("proc/sys/kernel/random", "etc", "data"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "proc" / "uptime").write_text("7.12 6.40\n")
    (root / "proc" / "meminfo").write_text(synth.MEMINFO.format(shmem=18234) + "\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet\n")
    (root / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")
    mounts = "tmpfs / tmpfs rw 0 0\n" + ("/dev/vda5 /data ext4 rw,noatime 0 0\n" if data else "")
    (root / "proc" / "mounts").write_text(mounts)
    (root / "etc" / "labkit-os").write_text(os_id + "\n")
    return root


def run_probe(tmp: Path, root: Path, extra_env: dict[str, str] | None = None) -> str:
    """probe_script() (probe.sh with loop.sh inlined) under busybox sh with busybox applets only; the console."""
    bindir = _bindir(tmp)
    probe = tmp / "probe.sh"
    probe.write_bytes(probe_script())
    dmesg = tmp / "dmesg.txt"
    dmesg.write_text(synth.dmesg_alpine(2.356789, 3.5, 5.25, 5.3) + "\n")
    out = tmp / "console.txt"
    out.write_text("")
    env = {"PATH": str(bindir), "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
           "LABKIT_PROBE_DMESG": str(dmesg), "TMPDIR": str(tmp), "LABKIT_PROBE_SETTLE": "0",
           "LABKIT_PROBE_GUNZIP": "0", **(extra_env or {})}
    subprocess.run([str(bindir / "sh"), str(probe)], env=env, check=True, timeout=60)
    return out.read_text()


# -- 1. the bundle on /data ----------------------------------------------------------------------------
def test_probe_saves_its_bundle_on_data_atomically(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "alpine")
    console = run_probe(tmp_path, root)
    saved = root / "data" / "labkit" / "bundles" / f"alpine-{BOOT_ID}.txt"
    assert saved.is_file(), console
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]  # no temporary file left
    from_file = parse_bundle_text(saved.read_text())
    (from_serial,) = extract_bundles(_lines(console))
    assert from_file.ok and from_file.sections == from_serial.sections and from_file.os == "alpine"
    assert f"bundle saved as /data/labkit/bundles/alpine-{BOOT_ID}.txt" in console


def test_probe_without_a_data_mount_saves_nothing(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos", data=False)
    console = run_probe(tmp_path, root)
    assert not (root / "data" / "labkit").exists()
    assert "bundle saved" not in console
    (b,) = extract_bundles(_lines(console))
    assert b.ok


def _lines(text: str) -> list[SerialLine]:
    return [SerialLine(1.0 + i / 1000, t) for i, t in enumerate(text.split("\n")) if t]


# -- 2. FPDT and the loader variables ---------------------------------------------------------------------
def _efivar(path: Path, value: str) -> None:
    path.write_bytes(b"\x06\x00\x00\x00" + (value + "\0").encode("utf-16-le"))


def test_probe_reads_fpdt_and_loader_variables(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos")
    fpdt = root / "sys" / "firmware" / "acpi" / "fpdt" / "boot"
    fpdt.mkdir(parents=True)
    values = {"firmware_start_ns": 0, "bootloader_load_ns": 2_100_000_000, "bootloader_launch_ns": 2_250_000_000,
              "exitbootservice_start_ns": 3_900_000_000, "exitbootservice_end_ns": 3_950_000_000}
    for k, v in values.items():
        (fpdt / k).write_text(f"{v}\n")
    (root / "sys" / "firmware" / "acpi" / "tables").mkdir()
    (root / "sys" / "firmware" / "acpi" / "tables" / "FPDT").write_bytes(b"FPDT")
    efivars = root / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    _efivar(efivars / f"LoaderInfo-{GUID}", "GRUB 2.12")
    console = run_probe(tmp_path, root)
    (b,) = extract_bundles(_lines(console))
    rec = parse_firmware(b.sections["firmware"])
    assert rec.fpdt == values and rec.loader_vars == {"LoaderInfo": "GRUB 2.12"}
    assert rec.flags == {"fpdt_table": True, "efi": True, "efivars": True}
    assert detect_format(b.sections["firmware"] + "\n") == "firmware" and FORMATS["firmware"] is parse_firmware
    m = {x.name: x for x in measure_bundle(b).metrics}
    assert m["firmware_s"].value == pytest.approx(2.25) and m["loader_s"].value == pytest.approx(1.7)
    assert "FPDT" in m["firmware_s"].source and "FPDT" in m["loader_s"].source


def test_loader_variables_when_there_is_no_fpdt(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos")
    efivars = root / "sys" / "firmware" / "efi" / "efivars"
    efivars.mkdir(parents=True)
    _efivar(efivars / f"LoaderTimeInitUSec-{GUID}", "1500000")
    _efivar(efivars / f"LoaderTimeExecUSec-{GUID}", "2750000")
    (b,) = extract_bundles(_lines(run_probe(tmp_path, root)))
    m = {x.name: x for x in measure_bundle(b).metrics}
    assert m["firmware_s"].value == pytest.approx(1.5) and m["loader_s"].value == pytest.approx(1.25)
    assert "LoaderTimeInitUSec" in m["loader_s"].source


def test_no_fpdt_no_variables_is_missing_with_the_reason(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "alpine")
    (b,) = extract_bundles(_lines(run_probe(tmp_path, root)))
    why = measure_bundle(b).reasons()
    assert why["firmware_s"].startswith("no FPDT in sysfs") and "not booted through UEFI" in why["firmware_s"]
    assert why["loader_s"] == why["firmware_s"]


def test_firmware_parser_rules() -> None:
    rec = parse_firmware("fpdt absent\nfpdt_table present\nefi present\nefivars present\n"
                         "efivar LoaderTimeInitUSec absent\nefivar LoaderTimeExecUSec absent\n"
                         "efivar LoaderInfo absent\n")
    t = firmware_times(rec)
    assert t.firmware_s is None and "kernel does not expose it" in t.why and "rEFInd and GRUB set none" in t.why
    bad = parse_firmware("fpdt bootloader_launch_ns 0\nfpdt exitbootservice_end_ns 5\n")
    assert firmware_times(bad).firmware_s is None and "not usable" in firmware_times(bad).why
    from labkit.measure.bundle import SectionError

    with pytest.raises(SectionError, match=r"line 1.*unknown FPDT field"):
        parse_firmware("fpdt reset_end_ns 5\n")
    with pytest.raises(SectionError, match="not a whole number"):
        parse_firmware("fpdt bootloader_launch_ns -5\n")
    with pytest.raises(SectionError, match="expected"):
        parse_firmware("hello\n")


def test_loop_sh_is_inlined_once() -> None:
    text = probe_script().decode()
    assert "# @@include loop.sh@@" not in text and text.count("labkit_loop_decide() {") == 1
    assert (GUEST_DIR / "loop.sh").is_file()


# -- 4. the loop's state machine (loop.sh under busybox sh) ------------------------------------------------
from labkit.lab import hwloop  # noqa: E402

CONF = """# written by labkit (bootchain.refind_conf)
timeout -1
default_selection "NixOS-style rehearsal"

menuentry "NixOS-style rehearsal" {
    loader \\EFI\\nixos\\grubx64.efi
}

menuentry "Alpine-style rehearsal" {
    volume alpine
    loader /boot/vmlinuz-lts
}
"""
TITLES = {"nixos": "NixOS-style rehearsal", "alpine": "Alpine-style rehearsal"}


def sh(tmp: Path, script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in busybox sh after sourcing loop.sh (busybox applets only on PATH)."""
    bindir = _bindir(tmp)
    return subprocess.run([str(bindir / "sh"), "-c", f'. "{GUEST_DIR / "loop.sh"}"\n{script}'],
                          env={"PATH": str(bindir), **(env or {})}, capture_output=True, text=True, timeout=60,
                          check=False)


def _armed(tmp: Path, plan: list[str], **kw: object) -> tuple[Path, Path]:
    data, esp = tmp / "data", tmp / "esp"
    (data / "labkit").mkdir(parents=True, exist_ok=True)
    (esp / "EFI" / "BOOT").mkdir(parents=True, exist_ok=True)
    (esp / "EFI" / "BOOT" / "refind.conf").write_text(CONF)
    args: dict[str, object] = {"armed": True, "plan_": plan, "titles": TITLES, "expected": plan[0], **kw}
    (data / "labkit" / "loop.json").write_text(hwloop.state_json(**args))  # type: ignore[arg-type]
    return data / "labkit" / "loop.json", esp


def step(tmp: Path, state: Path, esp: Path, os_id: str, boot_id: str, now: int) -> str:
    res = sh(tmp, f'labkit_loop "{state}" {os_id} {boot_id}',
             {"LABKIT_LOOP_ESP": str(esp), "LABKIT_LOOP_NOW": str(now), "LABKIT_LOOP_RUN": str(tmp),
              "LABKIT_LOOP_REBOOT": f"touch {tmp}/rebooted"})
    assert res.returncode == 0 and not res.stderr, res.stderr
    return res.stdout


def decide(tmp: Path, state: Path, os_id: str, boot_id: str, now: int) -> str:
    res = sh(tmp, f'labkit_loop_decide "{state}" {os_id} {boot_id} {now}')
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_decisions(tmp_path: Path) -> None:
    state, _esp = _armed(tmp_path, ["nixos", "alpine", "nixos", "alpine"], next_=1, expected="alpine",
                         rebooted_at=1000, max_gap_s=600)
    assert decide(tmp_path, state, "alpine-rehearsal", "b1", 1100) == "reboot 1 nixos"
    assert decide(tmp_path, state, "nixos", "b1", 1100) == "fail 1 nixos came up instead of the expected alpine"
    assert decide(tmp_path, state, "alpine", "b1", 1700).startswith("fail 1 alpine came back 700 s after")
    last, _ = _armed(tmp_path / "l", ["nixos", "alpine"], next_=1, expected="alpine", rebooted_at=1000)
    assert decide(tmp_path, last, "alpine", "b2", 1010) == "done 1"
    off, _ = _armed(tmp_path / "o", ["nixos"], armed=False)
    assert decide(tmp_path, off, "nixos", "b3", 5) == "idle"
    assert decide(tmp_path, tmp_path / "none.json", "nixos", "b3", 5) == "idle"
    first, _ = _armed(tmp_path / "f", ["alpine", "nixos"])  # rebooted_at 0: the first boot has no gap rule
    assert decide(tmp_path, first, "alpine", "b4", 10**9) == "reboot 0 nixos"


def test_a_whole_loop_then_disarmed_and_restored(tmp_path: Path) -> None:
    state, esp = _armed(tmp_path, ["nixos", "alpine", "nixos", "alpine"])
    conf = esp / "EFI" / "BOOT" / "refind.conf"
    now = 1_000_000
    for i, os_id in enumerate(["nixos-rehearsal", "alpine-rehearsal", "nixos-rehearsal"]):
        out = step(tmp_path, state, esp, os_id, f"boot-{i}", now + 60 * i)
        assert f"boot {i} ({os_id.split('-')[0]}) recorded" in out and "rebooting" in out
        nxt = ["alpine", "nixos", "alpine"][i]
        assert f'default_selection "{TITLES[nxt]}"' in conf.read_text()
        assert (esp / "EFI" / "BOOT" / "refind.conf.labkit-orig").read_text() == CONF
        assert (tmp_path / "rebooted").exists() and (tmp_path / "labkit-loop-rebooting").exists()
        (tmp_path / "rebooted").unlink()
        s = json.loads(state.read_text())
        assert s["armed"] is True and s["next"] == i + 1 and s["expected"] == nxt and s["rebooted_at"] == now + 60 * i
    # one line changed, nothing else
    diff = [(a, b) for a, b in zip(CONF.splitlines(), conf.read_text().splitlines(), strict=True) if a != b]
    assert diff == [('default_selection "NixOS-style rehearsal"', 'default_selection "Alpine-style rehearsal"')]
    # the same boot again (the probe run twice) changes nothing
    before = state.read_text()
    assert step(tmp_path, state, esp, "nixos-rehearsal", "boot-2", now + 999) == ""
    assert state.read_text() == before
    out = step(tmp_path, state, esp, "alpine-rehearsal", "boot-3", now + 200)
    assert "the plan is done; disarmed" in out and not (tmp_path / "rebooted").exists()
    s = json.loads(state.read_text())
    assert s["armed"] is False and s["reason"].startswith("done")
    assert [(b["index"], b["system"], b["status"]) for b in s["boots"]] == \
        [(0, "nixos", "ok"), (1, "alpine", "ok"), (2, "nixos", "ok"), (3, "alpine", "ok")]
    assert conf.read_text() == CONF and not (esp / "EFI" / "BOOT" / "refind.conf.labkit-orig").exists()
    assert sorted(p.name for p in state.parent.iterdir()) == ["loop.json"]  # no temporary file


def test_a_boot_that_never_came_back_is_recorded_failed(tmp_path: Path) -> None:
    state, esp = _armed(tmp_path, ["nixos", "alpine", "nixos", "alpine"])
    step(tmp_path, state, esp, "nixos", "boot-0", 1000)
    (tmp_path / "rebooted").unlink()
    # alpine hung: the machine was reset and (rEFInd's default fallen back, or a person chose) NixOS came up
    out = step(tmp_path, state, esp, "nixos", "boot-x", 1300)
    assert "boot 1 failed: nixos came up instead of the expected alpine" in out
    s = json.loads(state.read_text())
    assert s["armed"] is False and s["boots"][-1]["status"] == "failed" and s["boots"][-1]["system"] == "alpine"
    assert (esp / "EFI" / "BOOT" / "refind.conf").read_text() == CONF and not (tmp_path / "rebooted").exists()


def test_a_late_boot_is_a_failed_boot(tmp_path: Path) -> None:
    state, esp = _armed(tmp_path, ["nixos", "alpine"], max_gap_s=300)
    step(tmp_path, state, esp, "nixos", "boot-0", 1000)
    out = step(tmp_path, state, esp, "alpine", "boot-1", 1000 + 301)
    assert "came back 301 s after the loop's reboot" in out
    assert json.loads(state.read_text())["boots"][-1]["status"] == "failed"


def test_a_failed_step_stops_the_loop(tmp_path: Path) -> None:
    state, esp = _armed(tmp_path, ["nixos", "alpine"])
    (esp / "EFI" / "BOOT" / "refind.conf").unlink()  # the ESP has no refind.conf: the default cannot be set
    out = step(tmp_path, state, esp, "nixos", "boot-0", 1000)
    assert "stopped: cannot write" in out and not (tmp_path / "rebooted").exists()
    s = json.loads(state.read_text())
    assert s["armed"] is False and s["boots"] == [
        {"index": 0, "system": "nixos", "boot_id": "boot-0", "status": "ok", "at": 1000}]
    # a probe that could not save its bundle: the armed loop records the boot failed and stops
    state2, esp2 = _armed(tmp_path / "s", ["nixos", "alpine"])
    res = sh(tmp_path, f'labkit_loop "{state2}" nixos boot-0 "the probe could not save its bundle"',
             {"LABKIT_LOOP_ESP": str(esp2), "LABKIT_LOOP_NOW": "5", "LABKIT_LOOP_REBOOT": "false"})
    assert "boot 0 failed: the probe could not save its bundle" in res.stdout
    assert json.loads(state2.read_text())["boots"][0]["status"] == "failed"


def test_python_and_shell_make_the_same_refind_conf(tmp_path: Path) -> None:
    for text in (CONF, CONF.replace('default_selection "NixOS-style rehearsal"\n', ""),
                 CONF + 'default_selection "x"\n', "timeout 5\n"):
        f = tmp_path / "refind.conf"
        f.write_text(text)
        (tmp_path / "refind.conf.labkit-orig").unlink(missing_ok=True)
        assert sh(tmp_path, f'labkit_conf_select "{f}" "Alpine-style rehearsal"').returncode == 0
        assert f.read_text() == hwloop.conf_with_default(text, "Alpine-style rehearsal")
        assert (tmp_path / "refind.conf.labkit-orig").read_text() == text


def test_probe_steps_an_armed_loop(tmp_path: Path) -> None:
    root = _guest_root(tmp_path, "nixos-rehearsal")
    state, esp = _armed(root, ["nixos", "alpine"])
    console = run_probe(tmp_path, root, {"LABKIT_LOOP_ESP": str(esp), "LABKIT_LOOP_RUN": str(tmp_path),
                                         "LABKIT_LOOP_REBOOT": f"touch {tmp_path}/rebooted"})
    assert "labkit-loop: boot 0 (nixos) recorded; next: boot 1 (alpine" in console
    assert (tmp_path / "rebooted").exists()
    assert json.loads(state.read_text())["boots"][0]["boot_id"] == BOOT_ID


# -- 3. collect, and arm/disarm against a disk image (mkfs.ext4 -d, mtools) --------------------------------
from labkit.core.runner import Runner  # noqa: E402
from labkit.targets.base import MTOOLS_ENV  # noqa: E402
from labkit.targets.gpt import read_gpt  # noqa: E402

TOOLS = all(shutil.which(t) for t in ("sgdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "debugfs", "blkid"))
needs_tools = pytest.mark.skipif(not TOOLS, reason="needs sgdisk, e2fsprogs, dosfstools, mtools")


def make_disk(tmp: Path, data_tree: Path, conf: str = CONF) -> Path:
    """A GPT image: 1 ESP (FAT, label ESP, EFI/BOOT/refind.conf), 2 ext4 labelled data filled with
    ``mkfs.ext4 -d data_tree``; nothing mounted."""
    disk = tmp / "disk.img"
    subprocess.run(["truncate", "-s", "40M", str(disk)], check=True)
    # (sgdisk -q writes nothing: no -q here)
    subprocess.run(["sgdisk", "-o", "-n", "1:2048:+8M", "-t", "1:ef00", "-n", "2:0:+24M", "-t", "2:8300", str(disk)],
                   check=True, capture_output=True)
    esp, data = read_gpt(disk).entries[:2]
    subprocess.run(["mkfs.vfat", "-n", "ESP", "--offset", str(esp.first_lba), str(disk), str(esp.size // 1024)],
                   check=True, capture_output=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "data", "-d", str(data_tree), "-E", f"offset={data.start}",
                    str(disk), f"{data.size // 1024}k"], check=True, capture_output=True)
    spec = f"{disk}@@{esp.start}"
    subprocess.run(["mmd", "-i", spec, "::/EFI", "::/EFI/BOOT"], check=True, env=MTOOLS_ENV, capture_output=True)
    (tmp / "refind.conf").write_text(conf)
    subprocess.run(["mcopy", "-i", spec, str(tmp / "refind.conf"), "::/EFI/BOOT/refind.conf"], check=True,
                   env=MTOOLS_ENV)
    return disk


def esp_file(disk: Path, rel: str) -> str | None:
    esp = read_gpt(disk).entries[0]
    res = subprocess.run(["mtype", "-i", f"{disk}@@{esp.start}", f"::/{rel}"], env=MTOOLS_ENV,
                         capture_output=True, text=True, check=False)
    return res.stdout if res.returncode == 0 else None


def _loop_bundles(tmp: Path) -> Path:
    """/data as the loop leaves it: nixos, alpine, nixos bundles from the real probe, the loop state recording
    them and a fourth boot (alpine) that never came back."""
    data = tmp / "data-tree"
    state, esp = _armed(tmp / "g", ["nixos", "alpine", "nixos", "alpine"])
    for i, os_id in enumerate(["nixos", "alpine", "nixos"]):
        g = tmp / f"g{i}"
        g.mkdir()
        root = _guest_root(g, os_id, boot_id=f"00000000-0000-4000-8000-00000000000{i}")
        (root / "data" / "labkit").mkdir(parents=True)
        shutil.copy(state, root / "data" / "labkit" / "loop.json")
        run_probe(g, root, {"LABKIT_LOOP_ESP": str(esp), "LABKIT_LOOP_NOW": str(1000 + 100 * i),
                            "LABKIT_LOOP_RUN": str(g), "LABKIT_LOOP_REBOOT": "true"})
        shutil.copy(root / "data" / "labkit" / "loop.json", state)
        (data / "labkit" / "bundles").mkdir(parents=True, exist_ok=True)
        for f in (root / "data" / "labkit" / "bundles").iterdir():
            shutil.copy(f, data / "labkit" / "bundles" / f.name)
    # boot 3 (alpine) hung; after a reset NixOS came up: its probe records boot 3 failed and disarms
    g = tmp / "g3"
    g.mkdir()
    root = _guest_root(g, "nixos", boot_id="00000000-0000-4000-8000-000000000003")
    (root / "data" / "labkit").mkdir(parents=True)
    shutil.copy(state, root / "data" / "labkit" / "loop.json")
    console = run_probe(g, root, {"LABKIT_LOOP_ESP": str(esp), "LABKIT_LOOP_NOW": "2000", "LABKIT_LOOP_RUN": str(g),
                                  "LABKIT_LOOP_REBOOT": "false"})
    assert "boot 3 failed: nixos came up instead of the expected alpine" in console
    shutil.copy(root / "data" / "labkit" / "loop.json", data / "labkit" / "loop.json")
    for f in (root / "data" / "labkit" / "bundles").iterdir():
        shutil.copy(f, data / "labkit" / "bundles" / f.name)
    return data


def _check_collected(out: Path, res: hwloop.Collected) -> None:
    import pandas as pd

    boots = pd.read_csv(out / "boots.csv")
    assert list(boots["os"]) == ["nixos", "alpine", "nixos", "alpine", "nixos"]
    assert list(boots["ok"]) == [True, True, True, False, True]
    assert "loop boot 3 (alpine) failed: nixos came up instead of the expected alpine" in boots["reason"][3]
    assert "not part of a loop" in boots["reason"][4]  # the boot that found the failure is measured too
    results = pd.read_csv(out / "results.csv")
    assert set(results["accel"]) == {"hardware"} and set(results["os"]) == {"nixos", "alpine"}
    assert results.groupby("os")["boot"].nunique().to_dict() == {"alpine": 1, "nixos": 3}
    assert "kernel_s" in set(results["metric"]) and "firmware_s" not in set(results["metric"])
    env = json.loads((out / "environment.json").read_text())
    assert env["params"]["target"] == "hardware" and env["extra"]["loop"]["armed"] is False
    assert res.label == "hardware" and len(list((out / "bundles").iterdir())) == 4


@needs_tools
def test_collect_from_a_disk_image_without_mounting(tmp_path: Path) -> None:
    data = _loop_bundles(tmp_path)
    disk = make_disk(tmp_path, data)
    runner = Runner(progress=None)
    place = hwloop.locate(runner, disk)
    assert place.disk == disk and place.data_offset == read_gpt(disk).entries[1].start
    out = tmp_path / "run"
    res = hwloop.collect(runner, place, out, report=False)
    _check_collected(out, res)


def test_collect_from_a_mounted_data_directory(tmp_path: Path) -> None:
    data = _loop_bundles(tmp_path)
    out = tmp_path / "run"
    res = hwloop.collect(Runner(progress=None), hwloop.locate(Runner(progress=None), data), out, report=False)
    _check_collected(out, res)


def test_collect_refuses_an_empty_data(tmp_path: Path) -> None:
    from labkit.core.errors import InputError

    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match="no bundle in /data/labkit/bundles"):
        hwloop.collect(Runner(progress=None), hwloop.locate(Runner(progress=None), tmp_path / "d"), tmp_path / "o")
    with pytest.raises(InputError, match="does not exist"):
        hwloop.locate(Runner(progress=None), tmp_path / "missing")


@needs_tools
def test_arm_and_disarm_a_disk_image(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "labkit" / "bundles").mkdir(parents=True)
    disk = make_disk(tmp_path, tree)
    runner = Runner(progress=None)
    place = hwloop.locate(runner, disk)
    state = hwloop.arm(runner, place, rounds=2, systems=("alpine", "nixos"))
    assert state["plan"] == ["alpine", "nixos", "alpine", "nixos"] and state["expected"] == "alpine"
    conf = esp_file(disk, "EFI/BOOT/refind.conf")
    assert conf == hwloop.conf_with_default(CONF, "Alpine-style rehearsal")
    assert esp_file(disk, "EFI/BOOT/refind.conf.labkit-orig") == CONF
    raw = hwloop.read_data(runner, place, hwloop.STATE_REL)
    assert raw is not None and json.loads(raw)["armed"] is True
    from labkit.core.errors import InputError

    with pytest.raises(InputError, match="already armed"):
        hwloop.arm(runner, place, rounds=1)
    # the guest's shell reads what arm wrote
    (tmp_path / "s.json").write_bytes(raw)
    assert decide(tmp_path, tmp_path / "s.json", "alpine", "b0", 5) == "reboot 0 nixos"
    hwloop.disarm(runner, place)
    assert esp_file(disk, "EFI/BOOT/refind.conf") == CONF
    assert esp_file(disk, "EFI/BOOT/refind.conf.labkit-orig") is None
    raw = hwloop.read_data(runner, place, hwloop.STATE_REL)
    assert raw is not None and json.loads(raw)["armed"] is False and "by hand" in json.loads(raw)["reason"]


def test_arm_refuses_bad_input(tmp_path: Path) -> None:
    from labkit.core.errors import InputError

    with pytest.raises(InputError, match=r"outside 1\.\.200"):
        hwloop.plan(["nixos"], 0, "interleaved")
    with pytest.raises(InputError, match="at most once"):
        hwloop.plan(["nixos", "nixos"], 1, "interleaved")
    assert hwloop.plan(["nixos", "alpine"], 2, "blocked") == ["nixos", "nixos", "alpine", "alpine"]
    state, esp = _armed(tmp_path, ["nixos"])
    state.unlink()
    place = hwloop.Place(data_dir=state.parent.parent, esp_dir=esp)
    with pytest.raises(InputError, match="2 entries whose title names nixos"):
        (esp / "EFI" / "BOOT" / "refind.conf").write_text(CONF + 'menuentry "nixos old" {\n}\n')
        hwloop.arm(Runner(progress=None), place, rounds=1)
    with pytest.raises(InputError, match="no rEFInd entry matches"):
        hwloop.arm(Runner(progress=None), place, rounds=1, titles={"nixos": "Fedora"})


@needs_tools
def test_disarm_records_the_boot_that_never_came_back(tmp_path: Path) -> None:
    state, esp = _armed(tmp_path, ["nixos", "alpine"])
    runner = Runner(progress=None)
    place = hwloop.Place(data_dir=state.parent.parent, esp_dir=esp)
    # disarmed before the first reboot: nothing failed
    s = hwloop.disarm(runner, hwloop.Place(data_dir=state.parent.parent, esp_dir=esp))
    assert s["boots"] == [] and s["armed"] is False
    state, esp = _armed(tmp_path / "2", ["nixos", "alpine"])
    place = hwloop.Place(data_dir=state.parent.parent, esp_dir=esp)
    step(tmp_path, state, esp, "nixos", "boot-0", 1000)  # the loop rebooted into alpine, which hangs
    s = hwloop.disarm(runner, place, reason="the lab's QEMU timed out")
    assert s["boots"][-1]["status"] == "failed" and s["boots"][-1]["system"] == "alpine"
    assert "never came back (the lab's QEMU timed out)" in s["boots"][-1]["reason"]
    assert (esp / "EFI" / "BOOT" / "refind.conf").read_text() == CONF


def test_cli_arm_disarm_collect_on_a_mounted_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli.main import main

    state, esp = _armed(tmp_path, ["nixos"])
    state.unlink()
    data = state.parent.parent
    assert main(["measure", "arm", "--rounds", "1", "--data", str(data), "--esp", str(esp),
                 "--title", "alpine=Alpine-style"]) == 0
    assert "armed: 2 boots (nixos alpine)" in capsys.readouterr().out
    assert json.loads(state.read_text())["title_alpine"] == "Alpine-style"
    assert main(["measure", "disarm", "--data", str(data), "--esp", str(esp)]) == 0
    assert (esp / "EFI" / "BOOT" / "refind.conf").read_text() == CONF
    assert main(["measure", "collect", "--data", str(data), "--out", str(tmp_path / "o"), "--no-report"]) == 2
    assert "no bundle in /data/labkit/bundles" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("awk") is None, reason="needs bash and an awk")
def test_the_loop_under_bash_and_the_hosts_tools(tmp_path: Path) -> None:
    """NixOS runs the probe with bash (pkgs.runtimeShell) and GNU coreutils + gawk on the unit's PATH: here bash,
    coreutils and the host's awk (gawk, or Debian's default mawk), none of them busybox."""
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    for tool in ("bash", "awk", "cp", "mv", "sync", "tr", "grep", "mkdir", "rm", "cat", "date", "touch"):
        found = shutil.which(tool)
        assert found, tool
        (gnu / tool).symlink_to(found)
    state, esp = _armed(tmp_path, ["nixos", "alpine"])
    for i, os_id in enumerate(["nixos", "alpine"]):
        script = f'. "{GUEST_DIR / "loop.sh"}"\nlabkit_loop "{state}" {os_id} b{i}'
        res = subprocess.run([str(gnu / "bash"), "-c", script],
                             env={"PATH": str(gnu), "LABKIT_LOOP_ESP": str(esp), "LABKIT_LOOP_NOW": str(100 + i),
                                  "LABKIT_LOOP_RUN": str(tmp_path), "LABKIT_LOOP_REBOOT": "true"},
                             capture_output=True, text=True, timeout=60, check=False)
        assert res.returncode == 0 and not res.stderr, res.stderr
    s = json.loads(state.read_text())
    assert s["armed"] is False and [b["status"] for b in s["boots"]] == ["ok", "ok"]
    assert (esp / "EFI" / "BOOT" / "refind.conf").read_text() == CONF


def test_cli_lab_rounds_needs_reboot_loop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from labkit.cli.main import main

    assert main(["lab", "--rounds", "2", "--out", str(tmp_path / "r")]) == 2
    assert "--rounds is for --reboot-loop" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lab", "--reboot-loop", "--rounds", "0"])


def test_serial_boots_counts_each_boot_from_its_reset(tmp_path: Path) -> None:
    """Host times of each bundle's BEGIN line, from QEMU start for the first boot and from the previous boot's
    'reboot: Restarting system' line after that; boot ids from the probe's 'bundle saved as' line."""
    from labkit.lab.rebootloop import serial_boots
    from labkit.measure.bundle import format_bundle

    def boot(t: float, os_id: str, boot_id: str) -> list[SerialLine]:
        text = format_bundle(os_id, "rehearsal", {"uptime": "5.00 1.00"}).rstrip("\n").split("\n")
        out = [SerialLine(t + i * 0.01, ln) for i, ln in enumerate(text)]
        return [*out, SerialLine(t + 1, f"labkit-probe: bundle saved as /data/labkit/bundles/{os_id}-{boot_id}.txt"),
                SerialLine(t + 2, "labkit-loop: boot 0 (x) recorded; ... rebooting"),
                SerialLine(t + 3, "[   12.000000] reboot: Restarting system")]

    lines = [SerialLine(0.5, "BdsDxe: loading Boot0002"), *boot(20.0, "alpine-rehearsal", "aaaa-1"),
             *boot(60.0, "nixos-rehearsal", "bbbb-2")]
    assert serial_boots(lines) == {"aaaa-1": 20.0, "bbbb-2": pytest.approx(60.0 - 23.0)}
