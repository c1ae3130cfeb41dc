"""The probe's NixOS inventory with the real Nix (Debian's nix-bin) on a small store made here: it measures the
closure of the system it is given — with `nix path-info -rS` when `nix` is on its PATH, else du over
`nix-store -qR` — and the metrics call exactly that the closure."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synth

from labkit.core.data import probe_script
from labkit.measure.bundle import SerialLine, extract_bundles
from labkit.measure.metrics import measure_bundle

NIX = shutil.which("nix")
pytestmark = pytest.mark.skipif(NIX is None or shutil.which("busybox") is None,
                                reason="needs nix (Debian nix-bin) and busybox")


def _nix_env(tmp: Path) -> dict[str, str]:
    """A chroot store under tmp/root: store paths are /nix/store/..., their files tmp/root/nix/store/..."""
    for d in ("state", "log", "conf"):
        (tmp / d).mkdir(exist_ok=True)
    return {"NIX_REMOTE": f"local?root={tmp / 'root'}", "NIX_STATE_DIR": str(tmp / "state"),
            "NIX_LOG_DIR": str(tmp / "log"), "NIX_CONF_DIR": str(tmp / "conf"), "HOME": str(tmp)}


def _store_system(tmp: Path, env: dict[str, str]) -> str:
    """A 'system' store path referring to two others (builtins.toFile records the references)."""
    expr = ('let a = builtins.toFile "libA" "a"; b = builtins.toFile "libB" "${a} bb"; '
            'in builtins.toFile "nixos-system-test" "${a} ${b} system"')
    out = subprocess.run(["nix-instantiate", "--eval", "--read-write-mode", "-E", expr], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return out.strip().strip('"')


def _run_probe(tmp: Path, env: dict[str, str], system: str, tools: dict[str, str]) -> list[SerialLine]:
    root, bindir = tmp / "root", tmp / "bin"
    (root / "proc").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "proc" / "uptime").write_text("14.20 12.00\n")
    (root / "proc" / "meminfo").write_text(synth.MEMINFO.format(shmem=3180) + "\n")
    (root / "proc" / "cmdline").write_text("init=/nix/store/x/init console=ttyS0,115200n8 labkit.settle=0\n")
    (root / "etc" / "labkit-os").write_text("nixos\n")
    bindir.mkdir(exist_ok=True)
    busybox = shutil.which("busybox")
    assert busybox
    for applet in ("sh", "awk", "md5sum", "df", "uname", "cat", "rm", "du", "ls"):
        (bindir / applet).symlink_to(busybox)
    for name, target in tools.items():
        (bindir / name).symlink_to(target)
    probe = tmp / "probe.sh"
    probe.write_bytes(probe_script())
    dmesg = tmp / "dmesg"
    dmesg.write_text("[    1.200000] Run /init as init process\n")
    out = tmp / "console"
    subprocess.run([str(bindir / "sh"), str(probe)], check=True, timeout=60, env={
        **env, "PATH": str(bindir), "LABKIT_PROBE_ROOT": str(root), "LABKIT_PROBE_OUT": str(out),
        "LABKIT_PROBE_DMESG": str(dmesg), "LABKIT_PROBE_SYSTEM": system, "TMPDIR": str(tmp)})
    return [SerialLine(10.0 + i / 1000, t) for i, t in enumerate(out.read_text().split("\n")) if t]


def _nar_closure(env: dict[str, str], system: str) -> tuple[int, int]:
    """Independently of the probe: the paths of the closure and the sum of their NAR sizes (nix-store -q)."""
    e = {**os.environ, **env}
    paths = subprocess.run(["nix-store", "-qR", system], env=e, capture_output=True, text=True,
                           check=True).stdout.split()
    sizes = [int(subprocess.run(["nix-store", "-q", "--size", p], env=e, capture_output=True, text=True,
                                check=True).stdout) for p in paths]
    return len(paths), sum(sizes)


def test_probe_measures_the_closure_with_nix_path_info(tmp_path: Path) -> None:
    env = _nix_env(tmp_path)
    system = _store_system(tmp_path, env)
    assert NIX
    (b,) = extract_bundles(_run_probe(tmp_path, env, system, {"nix": NIX}))
    assert "nix_path_info" in b.sections and "nix_store_du" not in b.sections
    res = measure_bundle(b)
    v = {m.name: m for m in res.metrics}
    n, closure = _nar_closure(env, system)
    assert n == 3
    assert v["package_count"].value == n
    assert v["closure_size_mib"].value == pytest.approx(closure / 1024**2)
    assert v["closure_size_mib"].source == "nix path-info"


def test_probe_without_nix_uses_du_over_the_closure(tmp_path: Path) -> None:
    env = _nix_env(tmp_path)
    system = _store_system(tmp_path, env)
    # an unrelated path in the same store: the closure must not count it
    subprocess.run(["nix-instantiate", "--eval", "--read-write-mode", "-E", 'builtins.toFile "old-generation" "x"'],
                   env={**os.environ, **env}, capture_output=True, check=True)
    assert NIX
    (b,) = extract_bundles(_run_probe(tmp_path, env, system, {"nix-store": NIX}))
    assert "nix_closure_du" in b.sections and "nix_path_info" not in b.sections
    v = {m.name: m for m in measure_bundle(b).metrics}
    assert v["package_count"].value == 3  # the closure's paths, not the 4 in the store
    assert "nix-store -qR" in v["closure_size_mib"].source
    # busybox du -sk: one 4 KiB block per small file
    assert v["closure_size_mib"].value == pytest.approx(3 * 4 / 1024)


def test_module_keeps_itself_and_the_probe_in_the_system(tmp_path: Path) -> None:
    """copySystemConfiguration keeps configuration.nix only: labkit.nix's extraSystemBuilderCmds link it, the
    probe and hardware-configuration.nix into the system. Evaluated with the real Nix (files copied to a store)."""
    from labkit.systems.nixos.config import MODULE_NAME, PROBE_NAME, NixosSettings, User, render_module

    env = _nix_env(tmp_path)
    cfg = tmp_path / "data" / "etc" / "nixos"
    cfg.mkdir(parents=True)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"
    (cfg / MODULE_NAME).write_text(render_module(NixosSettings(user=User(ssh_keys=(key,))), mem_total=4 << 30))
    (cfg / PROBE_NAME).write_bytes(probe_script())
    lib = ("{ mkForce = x: x; mkDefault = x: x; optionalString = c: s: if c then s else \"\"; "
           "concatMapStrings = f: l: builtins.concatStringsSep \"\" (map f l); }")
    expr = (f"(import {cfg / MODULE_NAME} {{ config = {{ nix.package = null; }}; lib = {lib}; pkgs = {{}}; }})"
            ".system.extraSystemBuilderCmds")

    def links() -> list[str]:
        out = subprocess.run(["nix-instantiate", "--eval", "--read-write-mode", "--json", "-E", expr],
                             env={**os.environ, **env}, capture_output=True, text=True, check=True).stdout
        return [ln.strip() for ln in json.loads(out).splitlines() if ln.strip()]

    got = links()  # no hardware-configuration.nix beside it (labkit nixos config --out): skipped, no error
    assert [ln.split()[-1] for ln in got] == [f"$out/{MODULE_NAME}", f"$out/{PROBE_NAME}"]
    assert all(re.fullmatch(r"ln -s /nix/store/[a-z0-9]{32}-\S+ \$out/\S+", ln) for ln in got), got
    (cfg / "hardware-configuration.nix").write_text("{ ... }: { }\n")
    assert links()[-1].endswith("-hardware-configuration.nix $out/hardware-configuration.nix")
