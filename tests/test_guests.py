"""Rehearsal guests: unit tests, and boot tests that really boot both guests under QEMU (TCG)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from labkit.core.data import GUEST_DIR as DATA_DIR
from labkit.core.errors import LabkitError
from labkit.core.pkgsets import rehearsal_payloads
from labkit.core.runner import Runner
from labkit.measure.bundle import parse_bundle_text
from labkit.measure.metrics import measure_bundle
from labkit.measure.parsers import parse_rc_status, parse_systemd_time
from labkit.rehearsal import (
    GuestKernel,
    build_alpine_tree,
    build_initramfs,
    build_nixos_trees,
    host_package,
    module_closure,
    obtain_kernel,
    read_modules_dep,
)
from labkit.rehearsal.initramfs import BOOT_MODULES
from labkit.rehearsal.kernel import default_kernel_cache
from labkit.rehearsal.payloads import busybox_payload, nix_base32, write_alpine_repo
from labkit.systems.alpine.apkovl import EXPECTED_SERVICES
from labkit.systems.nixos.config import NixosSettings, probe_service
from labkit.systems.nixos.units import render_service

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(
    QEMU is None, reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
)
#: TCG on a shared 2-core host: an OpenRC or systemd boot to its bundle takes 30 s idle, far more loaded
BOOT_TIMEOUT = 300


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner(progress=None)


@pytest.fixture(scope="module")
def kernel(runner: Runner) -> GuestKernel:
    return obtain_kernel(runner, default_kernel_cache())


# -- bundle helpers (independent of labkit.measure.bundle, which another module owns) ---------------------
BEGIN = re.compile(r"^@@LABKIT-BUNDLE-BEGIN v=1 os=(\S+) guest=(\S+)@@$")
END = re.compile(r"^@@LABKIT-BUNDLE-END sections=(\d+) md5=([0-9a-f]{32})@@$")


def parse_bundle(text: str) -> tuple[str, dict[str, str]]:
    lines = text.replace("\r", "").split("\n")
    start = next(i for i, ln in enumerate(lines) if BEGIN.match(ln))
    end = next(i for i, ln in enumerate(lines) if i > start and END.match(ln))
    body = lines[start + 1 : end]
    m = END.match(lines[end])
    assert m is not None
    digest = hashlib.md5("".join(ln + "\n" for ln in body).encode("latin-1")).hexdigest()
    assert digest == m.group(2), "bundle md5 does not match its body"
    sections: dict[str, list[str]] = {}
    cur = None
    for ln in body:
        s = re.match(r"^@@SECTION (\S+)@@$", ln)
        if s:
            cur = s.group(1)
            sections[cur] = []
        else:
            assert cur is not None
            sections[cur].append(ln)
    assert int(m.group(1)) == len(sections)
    b = BEGIN.match(lines[start])
    assert b is not None
    return b.group(1), {k: "\n".join(v) for k, v in sections.items()}


# -- unit tests -----------------------------------------------------------------------------------
def test_module_closure_orders_dependencies_first() -> None:
    deps = {
        "kernel/fs/ext4/ext4.ko": ["kernel/fs/jbd2/jbd2.ko", "kernel/fs/mbcache.ko", "kernel/lib/crc16.ko"],
        "kernel/fs/jbd2/jbd2.ko": ["kernel/crypto/crc32c_generic.ko"],
        "kernel/fs/mbcache.ko": [],
        "kernel/lib/crc16.ko": [],
        "kernel/crypto/crc32c_generic.ko": [],
        "kernel/drivers/block/virtio_blk.ko.xz": ["kernel/drivers/virtio/virtio.ko.xz"],
        "kernel/drivers/virtio/virtio.ko.xz": [],
        "kernel/unrelated.ko": [],
    }
    order = module_closure(deps, ["virtio-blk", "ext4"])
    assert "kernel/unrelated.ko" not in order
    assert len(order) == len(set(order)) == 7
    for mod, ds in deps.items():
        if mod in order:
            assert all(order.index(d) < order.index(mod) for d in ds)
    with pytest.raises(LabkitError, match=r"not in modules\.dep"):
        module_closure(deps, ["nope"])
    with pytest.raises(LabkitError, match="cycle"):
        module_closure({"a.ko": ["b.ko"], "b.ko": ["a.ko"]}, ["a"])


def test_kernel_cache_and_real_closure(runner: Runner, kernel: GuestKernel) -> None:
    assert kernel.vmlinuz.is_file() and (kernel.modules_dir / "modules.dep").is_file()
    again = Runner(progress=None)
    assert obtain_kernel(again, default_kernel_cache()) == kernel
    assert not any(p.argv[:2] in (("apt-get", "download"), ("apt-get", "update")) for p in again.planned)
    order = [Path(p).name.split(".ko")[0] for p in module_closure(read_modules_dep(kernel.modules_dir / "modules.dep"),
                                                                BOOT_MODULES)]
    for needed in ("virtio_pci", "virtio_blk", "ext4", "jbd2", "mbcache", "crc16", "crc32c_generic"):
        assert needed in order
    assert order.index("jbd2") < order.index("ext4") and order.index("crc32c_generic") < order.index("ext4")


def test_initramfs_is_reproducible(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    a = build_initramfs(runner, kernel, "alpine", tmp_path / "a" / "initrd")
    b = build_initramfs(runner, kernel, "alpine", tmp_path / "b" / "initrd")
    assert a.read_bytes() == b.read_bytes()
    listing = subprocess.run(["sh", "-c", f"gzip -dc {a} | cpio -t --quiet"], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "init" in listing and "bin/busybox" in listing and "sbin/switch_root" in listing
    assert any(n.endswith("ext4.ko") for n in listing)
    assert f"lib/modules/{kernel.version}/labkit-load-order" in listing
    n = build_initramfs(runner, kernel, "nixos", tmp_path / "n" / "initrd")
    assert n.read_bytes() != a.read_bytes()


def test_modloop_is_reproducible_and_holds_the_drivers(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    from labkit.rehearsal.initramfs import build_modloop

    a = build_modloop(runner, kernel, tmp_path / "a" / "modloop-lts")
    b = build_modloop(runner, kernel, tmp_path / "b" / "modloop-lts")
    assert a.read_bytes() == b.read_bytes()
    ls = subprocess.run(["debugfs", "-R", f"ls -p /modules/{kernel.version}", str(a)], capture_output=True,
                        text=True, check=True).stdout
    assert "/modules.dep/" in ls and "/modules.alias/" in ls
    alias = subprocess.run(["debugfs", "-R", f"cat /modules/{kernel.version}/modules.alias", str(a)],
                           capture_output=True, text=True, check=True).stdout
    # depmod's format, from the modules' own .modinfo: the ICH9 AHCI controller of QEMU's q35 -> ahci
    assert re.search(r"^alias pci:v00008086d00002922sv\*sd\*bc\*sc\*i\* ahci$", alias, re.M), alias[:500]


def test_payloads_are_real_and_reproducible(runner: Runner, tmp_path: Path) -> None:
    gdisk = host_package(runner, "gdisk")
    assert gdisk.installed_size > 100_000
    assert any(e.path == "sbin/sgdisk" for e in gdisk.entries)
    bb = busybox_payload(runner)
    assert any(e.path == "sbin/init" and e.target == "/bin/busybox" for e in bb.entries)
    infos = write_alpine_repo([bb, gdisk], tmp_path / "one")
    again = write_alpine_repo([bb, gdisk], tmp_path / "two")
    assert infos == again
    for info in infos:
        data = (tmp_path / "one" / info.file).read_bytes()
        assert data == (tmp_path / "two" / info.file).read_bytes()
        assert info.compressed_size == len(data) > 0 and info.installed_size > 0
        with tarfile.open(tmp_path / "one" / info.file) as tar:
            members = {m.name: m for m in tar.getmembers()}
        assert all(m.uid == 0 and m.gid == 0 and not m.name.startswith("/") for m in members.values())
    assert (tmp_path / "one" / "apks" / ".boot_repository").is_file()
    index = (tmp_path / "one" / "apks" / "x86_64" / "LABKIT-INDEX").read_text().splitlines()
    assert index[1].split("\t")[0] == "busybox-static" and index[2].split("\t")[0] == "gdisk"
    h = gdisk.content_hash()
    assert len(h) == 32 and set(h) <= set("0123456789abcdfghijklmnpqrsvwxyz")
    assert nix_base32(bytes(20)) == "0" * 32


def test_package_sets_grow() -> None:
    small, medium, large = (set(rehearsal_payloads(n)) for n in ("small", "medium", "large"))
    assert small < medium < large
    assert rehearsal_payloads("default") == rehearsal_payloads("medium")


def test_guest_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    stage2 = tmp_path / "stage2.sh"
    text = (DATA_DIR / "nixos-stage2.sh").read_text()
    stage2.write_text(text.replace("@busybox@", "/nix/store/x-busybox").replace("@system@", "/nix/store/y-system"))
    scripts = [*(DATA_DIR / n for n in ("probe.sh", "loop.sh", "alpine-init.sh", "nixos-init.sh")), stage2]
    res = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2239", *map(str, scripts)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout
    # labkit's OpenRC stand-ins (not the upstream OpenRC scripts shipped beside them, marked so in line 2);
    # openrc-run scripts use `local` and set variables openrc-run reads (description)
    openrc = DATA_DIR / "openrc" / "init.d"
    ours = [p for p in sorted(openrc.iterdir()) if "stand-in" in p.read_text().splitlines()[1]]
    upstream = [p for p in sorted(openrc.iterdir()) if p not in ours]
    assert {p.name for p in ours} >= {"mdev", "hwdrivers", "modloop", "syslog", "crond", "networking", "firstboot"}
    assert all("OpenRC 0.45.2" in p.read_text().splitlines()[1] for p in upstream)
    res = subprocess.run(["shellcheck", "-s", "sh", "-e", "SC2239,SC3043,SC2034", *map(str, ours)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout


def test_probe_under_busybox_writes_a_valid_bundle(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "proc" / "uptime").write_text("3.14 2.00\n")
    (root / "proc" / "meminfo").write_text("MemTotal:         468400 kB\nMemFree:          386428 kB\n")
    (root / "proc" / "cmdline").write_text("console=ttyS0,115200 quiet\n")
    (root / "etc" / "labkit-os").write_text("alpine-rehearsal\n")
    dmesg = tmp_path / "dmesg"
    dmesg.write_text("[    1.000000] Run /init as init process\n[    2.000000] labkit-rehearsal: switch_root")
    out = tmp_path / "out"
    env = {**os.environ, "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
           "LABKIT_PROBE_DMESG": str(dmesg), "TMPDIR": str(tmp_path)}
    subprocess.run(["busybox", "sh", str(DATA_DIR / "probe.sh")], env=env, check=True, timeout=30)
    os_id, sections = parse_bundle(out.read_text())
    assert os_id == "alpine-rehearsal"
    # the contract's fixed sections, in order; optional ones (free, systemd_*, ...) depend on the host running it
    fixed = ["uptime", "dmesg", "meminfo", "df", "cmdline", "kernel", "uptime_mid", "uptime_end"]
    assert [k for k in sections if k in fixed] == fixed
    assert sections["uptime"] == "3.14 2.00"
    assert sections["dmesg"].endswith("labkit-rehearsal: switch_root")
    assert "Filesystem" in sections["df"]
    assert not list(tmp_path.glob("labkit-probe.*"))


# -- boot tests -----------------------------------------------------------------------------------
def mkext4(tree: Path, image: Path, label: str, size: str) -> Path:
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-d", str(tree), str(image), size],
                   check=True, timeout=60)
    return image


def boot(kernel: Path, initrd: Path, cmdline: str, disks: list[Path], *, poweroff: bool = False) -> tuple[str, float]:
    """Boot under TCG; return the serial text and the seconds to the bundle's END line (as the lab stops
    there), or, with ``poweroff``, to the guest's own power-off (QEMU exits 0)."""
    assert QEMU is not None
    argv = [QEMU, "-machine", "q35", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]
    for d in disks:
        argv += ["-drive", f"file={d},format=raw,if=virtio"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = bytearray()
    ended = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            out.extend(line)
            if line.startswith(b"@@LABKIT-BUNDLE-END "):
                ended.set()
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if poweroff:
            rc = proc.wait(timeout=BOOT_TIMEOUT)
            reader.join(timeout=10)
            assert rc == 0, out.decode("latin-1")[-3000:]
        else:
            assert ended.wait(timeout=BOOT_TIMEOUT), out.decode("latin-1")[-3000:]
    finally:
        took = time.monotonic() - start
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode("latin-1").replace("\r", ""), took


def kmsg_time(dmesg: str, text: str) -> float:
    m = re.search(r"^\[\s*(\d+\.\d+)\] " + re.escape(text) + "$", dmesg, re.M)
    assert m, f"{text!r} not in dmesg"
    return float(m.group(1))


CHECK = b"""#!/bin/sh
for p in /sbin/sgdisk /sbin/mke2fs /usr/share/OVMF/OVMF_CODE_4M.fd /lib/apk/db/installed; do
\t[ -f "$p" ] && echo "labkit-check: present $p" > /dev/console
done
"""


def _alpine(runner: Runner, kernel: GuestKernel, tmp_path: Path, drop: str | None = None, world: str = "default",
            runlevels: bool = True, extra: dict[str, tuple[bytes, int]] | None = None,
            poweroff: bool = False) -> tuple[str, float, int]:
    tree = tmp_path / "alpine"
    t0 = time.monotonic()
    check = {"etc/local.d/00-check.start": (CHECK, 0o755), **(extra or {})}
    build = build_alpine_tree(runner, kernel, tree, world, extra_overlay=check, runlevels=runlevels)
    print(f"alpine build {time.monotonic() - t0:.1f} s, {build.installed_size / 2**20:.1f} MiB installed, "
          f"{build.compressed_size / 2**20:.1f} MiB of .apk")
    if drop is not None:  # a world package the repository lacks
        index = tree / "apks" / "x86_64" / "LABKIT-INDEX"
        index.write_text("".join(ln for ln in index.read_text().splitlines(True) if not ln.startswith(drop + "\t")))
    e = build.entry
    assert "console=ttyS0,115200" in e.cmdline.split() and "quiet" in e.cmdline.split()
    disk = mkext4(tree, tmp_path / "alpine.img", "alpine", "768M")
    text, took = boot(tree / e.kernel, tree / e.initrd, e.cmdline, [disk], poweroff=poweroff)
    return text, took, build.installed_size


@needs_qemu
@pytest.mark.boot
def test_alpine_rehearsal_boots_and_installs_world(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    text, took, installed = _alpine(runner, kernel, tmp_path)
    os_id, s = parse_bundle(text)
    assert os_id == "alpine-rehearsal"
    dm = s["dmesg"]
    t_begin = kmsg_time(dm, "Installing packages to root filesystem...")
    t_ok = kmsg_time(dm, "Installing packages to root filesystem: ok.")
    t_switch = kmsg_time(dm, "labkit-rehearsal: switch_root")
    assert kmsg_time(dm, "Run /init as init process") < t_begin < t_ok <= t_switch
    assert "Loading user settings from /media/vda/alpinelab.apkovl.tar.gz: ok." in dm
    for p in ("/sbin/sgdisk", "/sbin/mke2fs", "/usr/share/OVMF/OVMF_CODE_4M.fd", "/lib/apk/db/installed"):
        assert f"labkit-check: present {p}" in text
    root_used = next(int(ln.split()[2]) for ln in s["df"].splitlines() if ln.endswith(" /"))
    assert root_used * 1024 >= 0.9 * installed
    # OpenRC ran the apkovl's runlevels: every service of a diskless setup-alpine system started
    status = parse_rc_status(s["rc_status"])
    for lvl, svc in EXPECTED_SERVICES:
        if lvl != "shutdown":
            assert status.runlevel_of(svc) == lvl and status.runlevels[lvl][svc] == "started", (lvl, svc)
    assert status.runlevels["boot"]["hwclock"] == "started"  # added by the initramfs on every boot
    assert s["kernel"].split()[1] == "alpinelab"  # the hostname service
    assert any(ln.endswith(" /.modloop") for ln in s["df"].splitlines())  # the modloop service
    assert "rc boot logging started at" in s["rc_log"] and "Setting hostname to alpinelab" in s["rc_log"]
    print(f"alpine boot {took:.1f} s wall, uptime {s['uptime'].split()[0]} s, package load {t_ok - t_begin:.2f} s")


@needs_qemu
@pytest.mark.boot
def test_alpine_apkovl_without_runlevels_boots_without_services(runner: Runner, kernel: GuestKernel,
                                                                tmp_path: Path) -> None:
    """labkit's old apkovl (only default/local): mkinitfs adds no default service when an apkovl is there,
    so the guest comes up without modloop, hostname or networking, and the bundle says so."""
    text, _took, _ = _alpine(runner, kernel, tmp_path, world="base", runlevels=False)
    os_id, s = parse_bundle(text)
    assert os_id == "alpine-rehearsal"
    status = parse_rc_status(s["rc_status"])
    # the default runlevel holds only local (still starting while the probe runs: rc-status leaves it out)
    assert set(status.runlevels["default"]) <= {"local"}
    for svc in ("modloop", "hostname", "networking", "devfs", "hwdrivers", "crond"):
        assert status.runlevel_of(svc) is None, svc
    assert status.runlevels["boot"] == {"hwclock": "started"}  # the only one the initramfs always adds
    assert s["kernel"].split()[1] != "alpinelab"  # no hostname service: the kernel's default name
    assert not any(ln.endswith(" /.modloop") for ln in s["df"].splitlines())


@needs_qemu
@pytest.mark.boot
def test_alpine_default_boot_services_marker(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    """The same apkovl with etc/.default_boot_services: the initramfs adds its default services (and
    firstboot, which removes itself) and deletes the marker from the running system."""
    marker = {"etc/.default_boot_services": (b"", 0o644),
              "etc/local.d/01-marker.start": (b"#!/bin/sh\n[ -e /etc/.default_boot_services ] && "
                                              b"echo 'labkit-check: marker kept' > /dev/console\n", 0o755)}
    text, took, _ = _alpine(runner, kernel, tmp_path, world="base", runlevels=False, extra=marker, poweroff=True)
    _os, s = parse_bundle(text)
    # the lab apkovl's zz-labkit-poweroff.start: busybox poweroff, acted on by init once `openrc default` has
    # returned, then `openrc shutdown` (the shutdown runlevel the initramfs added) and the power-off
    after = text.split("@@LABKIT-BUNDLE-END", 1)[1]
    assert "Remounting remaining filesystems read-only" in after and "reboot: Power down" in after
    print(f"alpine boot to power-off {took:.1f} s wall")
    status = parse_rc_status(s["rc_status"])
    for svc in ("modloop", "devfs", "mdev", "hwdrivers"):
        assert status.runlevels["sysinit"][svc] == "started", svc
    for svc in ("hostname", "bootmisc", "syslog", "modules", "sysctl", "hwclock"):
        assert status.runlevels["boot"][svc] == "started", svc
    assert status.runlevel_of("networking") is None  # not a default: setup-alpine adds it
    # firstboot ran and removed its own runlevel links: OpenRC now counts it as started by hand
    assert status.runlevels["default"].get("firstboot") is None and status.runlevels["manual"]["firstboot"] == "started"
    assert s["kernel"].split()[1] == "alpinelab" and "labkit-check: marker kept" not in text


@needs_qemu
@pytest.mark.boot
def test_alpine_rehearsal_reports_missing_world_package(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    text, _took, _ = _alpine(runner, kernel, tmp_path, drop="gdisk")
    assert "labkit-rehearsal: ERROR: world package 'gdisk' not found in /media/vda/apks" in text
    _os, s = parse_bundle(text)
    assert "labkit-rehearsal: ERROR: world package 'gdisk' not found" in s["dmesg"]
    # mkinitfs 3.13's order: the warning, then the step's "ok." (apk's status is not the step's)
    warn = kmsg_time(s["dmesg"], "WARNING: apkovl packages install completed with errors...")
    assert kmsg_time(s["dmesg"], "Installing packages to root filesystem: ok.") >= warn
    m = measure_bundle(parse_bundle_text(text, strict=False))
    values = {x.name: x for x in m.metrics}
    assert values["packages_missing"].value == 1 and "gdisk" in values["packages_missing"].source
    assert values["apk_install_errors"].value == 1
    assert "labkit-check: present /sbin/sgdisk" not in text
    assert "labkit-check: present /sbin/mke2fs" in text


@needs_qemu
@pytest.mark.boot
def test_nixos_rehearsal_boots_from_the_store(runner: Runner, kernel: GuestKernel, tmp_path: Path) -> None:
    t0 = time.monotonic()
    build = build_nixos_trees(runner, kernel, tmp_path / "boot", tmp_path / "nix", tmp_path / "data", "default")
    print(f"nixos build {time.monotonic() - t0:.1f} s, {build.installed_size / 2**20:.1f} MiB in the store")
    e = build.entry
    system = build.file("system")
    assert f"init=/nix/{system}/init" in e.cmdline.split()
    disks = [
        mkext4(tmp_path / "boot", tmp_path / "boot.img", "nixboot", "128M"),
        mkext4(tmp_path / "nix", tmp_path / "nix.img", "nix", "768M"),
        mkext4(tmp_path / "data", tmp_path / "data.img", "data", "64M"),
    ]
    text, took = boot(tmp_path / "boot" / e.kernel, tmp_path / "boot" / e.initrd, e.cmdline, disks)
    os_id, s = parse_bundle(text)
    assert os_id == "nixos-rehearsal"
    t_switch = kmsg_time(s["dmesg"], "labkit-rehearsal: switch_root")
    assert kmsg_time(s["dmesg"], "Run /init as init process") < t_switch
    assert f"labkit-rehearsal: stage 2 /nix/{system}" in s["dmesg"]
    df = {ln.split()[-1]: ln.split() for ln in s["df"].splitlines()[1:]}
    assert df["/"][0] == "tmpfs" and "/data" in df
    assert int(df["/nix"][2]) * 1024 >= 0.9 * build.installed_size
    m = re.search(r"activation done: (\d+) programs", text)
    assert m and int(m.group(1)) > 300  # busybox applets + the packages' programs
    # stage 2 execs systemd (Debian's), which runs labkit's probe unit: real systemd-analyze output
    assert re.search(r"^\[\s*[\d.]+\] systemd\[1\]: systemd \S+ running in system mode", s["dmesg"], re.M)
    t = parse_systemd_time(s["systemd_time"])
    assert set(t.phases) == {"kernel", "userspace"} and t.phases["kernel"] > 0 and t.phases["userspace"] > 0
    assert t.target == "multi-user.target" and t.target_s is not None
    assert "systemd_blame" not in s and "systemd_critical_chain" not in s  # costly under TCG, read by nothing
    link = os.readlink(tmp_path / "nix" / build.file("units") / "labkit-probe.service")  # /nix/store/...
    unit = (tmp_path / "nix" / link.removeprefix("/nix/")).read_text()
    assert unit == render_service("labkit-probe", probe_service(NixosSettings()), _UnitPaths(tmp_path / "nix")).text
    print(f"nixos boot {took:.1f} s wall, uptime {s['uptime'].split()[0]} s, {s['systemd_time'].splitlines()[0]}")


class _UnitPaths:
    """Reads back where the rehearsal store put things (labkit.rehearsal.systemd.StoreResolver's choices)."""

    def __init__(self, nix: Path) -> None:
        self.names = {p.name.split("-", 1)[1]: p.name for p in (nix / "store").iterdir()}

    def package(self, expr: str) -> str | None:
        if expr == "systemd":
            return f"/nix/store/{next(v for k, v in self.names.items() if k.startswith('systemd-'))}"
        if expr in ("config.nix.package", "nix"):
            return None
        return f"/nix/store/{next(v for k, v in self.names.items() if k.startswith('busybox-static-'))}"

    def interpolate(self, expr: str) -> str:
        if expr == "pkgs.runtimeShell":
            return f"{self.package('sh')}/bin/sh"
        return f"/nix/store/{self.names['labkit-probe.sh']}"

    def job_script(self, name: str, text: str) -> str:
        return f"/nix/store/{self.names[f'unit-script-{name}']}"


def test_the_same_cpio_is_compressed_once_per_process(tmp_path: Path) -> None:
    """The lab packs the same Alpine-style initramfs for its main image and each load-cost image: the second
    time, gzip -9 does not run again (the run says so) and the bytes are what gzip would have written."""
    from labkit.core.runner import Mode, read_transcript
    from labkit.rehearsal.initramfs import pack_cpio

    def tree(root: Path, text: str) -> Path:
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "motd").write_text(text)
        (root / "init").write_text("#!/bin/sh\n")
        return root

    runner = Runner(Mode.APPLY, tmp_path / "t.jsonl", progress=None)
    first = pack_cpio(runner, tree(tmp_path / "a", f"one {tmp_path}\n"), tmp_path / "a.gz").read_bytes()
    second = pack_cpio(runner, tree(tmp_path / "b", f"one {tmp_path}\n"), tmp_path / "b.gz").read_bytes()
    other = pack_cpio(runner, tree(tmp_path / "c", f"two {tmp_path}\n"), tmp_path / "c.gz").read_bytes()
    gzips = [r for r in read_transcript(tmp_path / "t.jsonl") if r.get("event") == "command" and r["argv"][0] == "gzip"]
    assert len(gzips) == 2 and first == second != other  # a, then c: b reused a's output
    assert any("b.gz: the same cpio" in str(r.get("message")) for r in read_transcript(tmp_path / "t.jsonl"))
    assert subprocess.run(["gzip", "-t"], input=second, check=False).returncode == 0
