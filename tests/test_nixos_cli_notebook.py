"""`labkit nixos config|install --plan`, and notebooks/03_nixos.ipynb under papermill in plan mode."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import synth

from labkit.cli.main import main

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA lab@demo"
SHA512 = "$6$rounds=5000$saltsaltsaltsalt$" + "a" * 86
NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "03_nixos.ipynb"


@pytest.fixture
def meminfo(tmp_path: Path) -> Path:
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:        4000000 kB\n")
    return f


def test_config_writes_a_parsable_module(tmp_path: Path, meminfo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = tmp_path / "hash"
    h.write_text(SHA512 + "\n")
    pub = tmp_path / "id.pub"
    pub.write_text(KEY + "\n")
    out = tmp_path / "cfg" / "labkit.nix"
    argv = ["nixos", "config", "--out", str(out), "--hashed-password-file", str(h), "--ssh-key", str(pub),
            "--tmpfs-size", "1G", "--impermanence", "--home-manager", "lab", "--meminfo", str(meminfo),
            "--impermanence-pin", synth.IMPERMANENCE_PIN_REV, synth.IMPERMANENCE_PIN_SHA256]
    assert main(argv) == 2  # --out in a folder that does not exist: refused, nothing created
    assert "does not exist" in capsys.readouterr().err and not out.parent.exists()
    out.parent.mkdir()
    assert main(argv) == 0
    text = out.read_text()
    assert out.stat().st_mode & 0o777 == 0o600  # it holds the password hash
    assert SHA512 in text and KEY in text and "size=1G" in text and "environment.persistence" in text
    assert (out.parent / "labkit-probe.sh").read_text().startswith("#!/bin/sh")
    if shutil.which("nix-instantiate"):
        subprocess.run(["nix-instantiate", "--parse", str(out)], check=True, capture_output=True)


@pytest.mark.parametrize(("extra", "message"), [
    ([], "neither a password hash nor an SSH key"),
    (["--hashed-password-file", "PLAIN"], "looks like a plaintext password"),
    (["--ssh-key", KEY, "--tmpfs-size", "8G"], "more than the machine's RAM"),
    (["--ssh-key", "ssh-ed25519 garbage!"], "damaged"),
])
def test_config_bad_input_exits_non_zero(tmp_path: Path, meminfo: Path, capsys: pytest.CaptureFixture[str],
                                         extra: list[str], message: str) -> None:
    plain = tmp_path / "plain"
    plain.write_text("hunter2\n")
    extra = [str(plain) if e == "PLAIN" else e for e in extra]
    out = tmp_path / "labkit.nix"
    rc = main(["nixos", "config", "--out", str(out), "--meminfo", str(meminfo), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "fix:" in err
    assert not out.exists()


def test_install_plan_prints_the_steps(tmp_path: Path, meminfo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "mnt"
    rc = main(["nixos", "install", "--root", str(root), "--plan", "--ssh-key", KEY, "--meminfo", str(meminfo)])
    assert rc == 0
    text = capsys.readouterr().out.replace(str(root), "/mnt")
    golden = (Path(__file__).parent / "golden" / "nixos" / "plan-lab-sshkey.txt").read_text()

    def stable(t: str) -> list[str]:
        # the CLI also searches the host's /nix/store for GRUB, and looks the labels up on this host (another
        # disk here may carry them); the golden plan is for the installer (resolve_labels=False)
        return [re.sub(r"(mount -t \S+) /dev/\S+", r"\1 DEV", ln) for ln in t.splitlines()
                if "looked in:" not in ln and "--directory=" not in ln and "$ blkid " not in ln
                and "] # plan: " not in ln and "] # install disk: " not in ln]

    assert stable(text) == stable(golden)
    assert not root.exists()


def test_notebook_is_committed_without_outputs() -> None:
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_in_plan_mode(tmp_path: Path, meminfo: Path) -> None:
    import papermill

    from labkit.report.report import _kernel_name

    out = tmp_path / "03_nixos.out.ipynb"
    log = tmp_path / "t.jsonl"
    papermill.execute_notebook(str(NOTEBOOK), str(out), kernel_name=_kernel_name(), progress_bar=False,
                               parameters={"root": str(tmp_path / "mnt"), "meminfo": str(meminfo),
                                           "transcript": str(log), "impermanence": True},
                               cwd=str(tmp_path), execution_timeout=120)
    text = out.read_text()
    assert "environment.persistence" in text and "nixos-install --root" in text
    assert "nixos-rebuild switch -I nixos-config=/data/etc/nixos/configuration.nix" in text
    assert log.is_file() and not (tmp_path / "mnt").exists()
    # no key, no hash, no pin (the defaults): the refusals are findings of the plan, not a crash
    assert "Finding: the install would be refused." in text
    assert "neither a password hash nor an SSH key" in text and "impermanence would be fetched without" in text
    assert "PLAN ONLY, NOT INSTALLABLE" in text


def test_notebook_takes_a_key_file_and_a_pin(tmp_path: Path, meminfo: Path) -> None:
    import papermill

    from labkit.report.report import _kernel_name

    pub = tmp_path / "id_ed25519.pub"
    pub.write_text(f"# my key\n{KEY}\n")
    out = tmp_path / "03_nixos.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), kernel_name=_kernel_name(), progress_bar=False,
                               parameters={"root": str(tmp_path / "mnt"), "meminfo": str(meminfo),
                                           "ssh_key_file": str(pub), "impermanence": True,
                                           "impermanence_pin": f"{synth.IMPERMANENCE_PIN_REV} "
                                                               f"{synth.IMPERMANENCE_PIN_SHA256}"},
                               cwd=str(tmp_path), execution_timeout=120)
    import nbformat

    outputs = json.dumps([o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])])
    assert "Finding:" not in outputs and "PLAN ONLY" not in outputs
    assert "lab@demo" in outputs and synth.IMPERMANENCE_PIN_SHA256 in outputs


def test_a_bad_tmpfs_size_is_a_short_error(tmp_path: Path, meminfo: Path) -> None:
    """A learner's typo fails the notebook with a few lines naming the parameter and the fix, not a traceback
    through labkit's source (papermill still stops there)."""
    import nbformat
    import papermill

    from labkit.report.report import _kernel_name

    out = tmp_path / "03_nixos.out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as exc:
        papermill.execute_notebook(str(NOTEBOOK), str(out), kernel_name=_kernel_name(), progress_bar=False,
                                   parameters={"root": str(tmp_path / "mnt"), "meminfo": str(meminfo),
                                               "tmpfs_size": "lots"}, cwd=str(tmp_path), execution_timeout=120)
    assert exc.value.ename == "InputError"
    errors = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    (err,) = errors
    lines = "\n".join(err["traceback"]).splitlines()
    assert len(lines) <= 3, lines
    assert "tmpfs size 'lots'" in lines[0] and "tmpfs_size" in "\n".join(lines)
    assert "labkit/" not in "\n".join(lines) and "File " not in "\n".join(lines)
