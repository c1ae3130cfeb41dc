"""The probe's unit file as NixOS renders it (labkit.systems.nixos.units), checked by the host's systemd."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.core.errors import LabkitError
from labkit.systems.nixos.config import NixosSettings, module_attrs, probe_service
from labkit.systems.nixos.nixexpr import Raw
from labkit.systems.nixos.units import STAGE2_DEFAULT_PATH, nix_indented_string, render_service


class FakeStore:
    """Package ``p`` lives in ``/nix/store/p``; job scripts are written for real under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scripts: dict[str, str] = {}

    def package(self, expr: str) -> str | None:
        return None if expr == "config.nix.package" else f"/nix/store/{expr}"

    def interpolate(self, expr: str) -> str:
        return {"pkgs.runtimeShell": "/bin/sh", "./labkit-probe.sh": "/nix/store/h-labkit-probe.sh"}[expr]

    def job_script(self, name: str, text: str) -> str:
        self.scripts[name] = text
        out = self.root / f"unit-script-{name}"
        (out / "bin").mkdir(parents=True)
        (out / "bin" / name).write_text(text)
        (out / "bin" / name).chmod(0o755)
        return str(out)


def test_probe_unit_text_follows_nixpkgs(tmp_path: Path) -> None:
    store = FakeStore(tmp_path)
    attrs = probe_service(NixosSettings())
    assert attrs == module_attrs(NixosSettings())[("systemd", "services", "labkit-probe")]  # the same attributes
    unit = render_service("labkit-probe", attrs, store)
    lines = unit.text.split("\n")
    # [Unit]: attrsToSection, names sorted (After < Description), then the empty line of commonUnitText
    assert lines[:4] == ["[Unit]", "After=multi-user.target",
                         "Description=labkit probe: one measurement bundle to /data and the serial console", ""]
    assert lines[4] == "[Service]"
    # Environment=<toJSON "NAME=value">, sorted by name; PATH = makeBinPath ++ sbin of path ++ stage-2 defaults
    env = [ln for ln in lines if ln.startswith("Environment=")]
    assert env[0] == 'Environment="LABKIT_PROBE_OUT=/dev/stdout"' and env[1].startswith('Environment="PATH=')
    path = attrs["path"]
    assert isinstance(path, Raw)
    declared = [w for part in path.text.split("++") for w in part.split("[")[1].split("]")[0].split()]
    assert "config.nix.package" in declared  # the module puts Nix on the probe's path (no Nix in the fake store)
    pkgs = [p for p in [*declared, *STAGE2_DEFAULT_PATH] if p != "config.nix.package"]
    assert env[1] == 'Environment="PATH=' + ":".join(f"/nix/store/{p}/bin" for p in pkgs) + ":" + ":".join(
        f"/nix/store/{p}/sbin" for p in pkgs) + '"'
    # ExecStart = jobScripts + " " + scriptArgs: a trailing blank
    job = str(tmp_path / "unit-script-labkit-probe-start" / "bin" / "labkit-probe-start")
    assert f"ExecStart={job} " in lines and unit.exec_start == job
    assert lines[lines.index(f"ExecStart={job} ") + 1:lines.index(f"ExecStart={job} ") + 4] == [
        "StandardOutput=tty", "TTYPath=/dev/ttyS0", "Type=simple"]
    assert unit.text.endswith("\n[Install]\nWantedBy=multi-user.target\n") and unit.wanted_by == ("multi-user.target",)
    # writeShellScriptBin: "#!${runtimeShell}\n" + makeJobScript's "set -e\n\n${text}\n"
    script = store.scripts["labkit-probe-start"]
    assert script.startswith("#!/bin/sh\nset -e\n\n# Type=simple: the start job completes at once")
    assert script.rstrip().endswith("\n/bin/sh /nix/store/h-labkit-probe.sh") and "${" not in script.replace("$(", "")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_host_systemd_accepts_the_unit(tmp_path: Path) -> None:
    store = FakeStore(tmp_path / "store")
    unit = render_service("labkit-probe", probe_service(NixosSettings()), store)
    path = tmp_path / unit.name
    path.write_text(unit.text)
    res = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "Unknown key" not in res.stderr and "Invalid" not in res.stderr and "Failed" not in res.stderr
    # the job script parses as POSIX sh (busybox in the rehearsal, bash on NixOS)
    subprocess.run(["sh", "-n", unit.exec_start], check=True)


def test_nix_indented_strings() -> None:
    assert nix_indented_string("''\n      a\n        b\n\n      c\n    ''") == "a\n  b\n\nc\n"
    assert nix_indented_string("''x''") == "x"
    assert nix_indented_string("''\n  a ''${b}\n''") == "a ${b}\n"


def test_path_expressions() -> None:
    from labkit.systems.nixos.units import _path_list

    assert _path_list(Raw("with pkgs; [ coreutils gawk ]")) == ["coreutils", "gawk"]
    assert _path_list(Raw("(with pkgs; [ a b ]) ++ [ config.nix.package ]")) == ["a", "b", "config.nix.package"]
    assert _path_list(["x", "y"]) == ["x", "y"]
    with pytest.raises(LabkitError, match="not a Nix indented string"):
        nix_indented_string("plain")


def test_unknown_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LabkitError, match="cannot render the option"):
        render_service("x", {"confinement": {"enable": True}}, FakeStore(tmp_path))
    with pytest.raises(LabkitError, match="cannot read the service path"):
        render_service("x", {"path": Raw("pkgs.hello")}, FakeStore(tmp_path))
