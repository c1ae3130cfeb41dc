"""The structured edit of nixos-generate-config output, on samples of what it writes on UEFI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from labkit.core.errors import InputError
from labkit.systems.nixos.generate import edit_generated

GOLDEN = Path(__file__).parent / "golden" / "nixos"
SAMPLES = ["generated-24.11-uefi-configuration.nix", "generated-23.11-uefi-configuration.nix",
           "oneline-imports-configuration.nix"]


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LABKIT_UPDATE_GOLDEN") or not path.exists():
        path.write_text(text)
    assert text == path.read_text(), f"differs from {path} (LABKIT_UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize("sample", SAMPLES)
def test_edit_removes_systemd_boot_and_imports_labkit(sample: str, tmp_path: Path) -> None:
    original = (GOLDEN / sample).read_text()
    edit = edit_generated(original)
    assert edit.import_added
    assert any("systemd-boot.enable" in r for r in edit.removed)
    assert any("canTouchEfiVariables" in r for r in edit.removed)
    assert "systemd-boot" not in edit.text and "canTouchEfiVariables" not in edit.text
    assert "./labkit.nix" in edit.text and "./hardware-configuration.nix" in edit.text
    assert "system.stateVersion" in edit.text  # the rest is kept
    golden(sample.replace(".nix", ".edited.nix"), edit.text)
    if shutil.which("nix-instantiate"):
        f = tmp_path / "configuration.nix"
        f.write_text(edit.text)
        subprocess.run(["nix-instantiate", "--parse", str(f)], check=True, capture_output=True)
    again = edit_generated(edit.text)  # idempotent
    assert again.text == edit.text and not again.import_added and not again.removed


def test_imports_list_keeps_its_layout() -> None:
    edit = edit_generated((GOLDEN / SAMPLES[0]).read_text())
    lines = edit.text.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.strip() == "./hardware-configuration.nix")
    assert lines[i + 1].startswith("      ./labkit.nix  # added by labkit")
    assert lines[i + 2].strip() == "];"


def test_unknown_form_is_an_error_not_a_guess() -> None:
    text = ("{ ... }:\n{\n  imports = [ ./hardware-configuration.nix ];\n"
            "  boot.loader = { systemd-boot.enable = true; };\n}\n")
    with pytest.raises(InputError, match="line 4 sets systemd-boot") as exc:
        edit_generated(text)
    assert "by hand" in str(exc.value.fix)
    with pytest.raises(InputError, match=r"no `\./hardware-configuration\.nix` import"):
        edit_generated("{ ... }:\n{\n  system.stateVersion = \"24.11\";\n}\n")
