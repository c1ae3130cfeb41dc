"""The notebooks' first cell: short errors in notebook terms, the run's settings file, the generated form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labkit.core.errors import InputError
from labkit.core.settings import Settings
from labkit.guide.session import error_box, notebook_terms, save, saved, start
from labkit.guide.widgets import DiskChoice, ParamsForm


def test_fixes_are_told_in_notebook_terms() -> None:
    assert notebook_terms("back it up, then pass --wipe --confirm ab12cd34ef56 to format it") == \
        'back it up, then set wipe=True fingerprint="ab12cd34ef56" to format it'
    assert notebook_terms("use --boots 1 or more") == 'use boots="1" or more'
    assert notebook_terms("see --unknown-flag") == "see --unknown-flag"


def test_the_error_box_is_short_and_escapes() -> None:
    box = error_box(InputError("tmpfs_size 'lots' <b>", "pass --wipe"), tb="Traceback ... secret frames")
    assert "tmpfs_size &#x27;lots&#x27; &lt;b&gt;" in box and "wipe=True" in box
    assert "<details>" in box and "Traceback" in box  # folded away, still there for a bug report


def test_settings_file_round_trip_and_start_reads_it_interactively(tmp_path: Path) -> None:
    run = str(tmp_path)
    s = Settings(run_dir=run, target="lab", boots=2, package_set="small")
    path = save(s)
    assert json.loads(path.read_text())["boots"] == 2 and saved(run)["package_set"] == "small"
    # papermill (interactive False): the injected values win over the file
    got = start({"run_dir": run, "target": "plan", "boots": 5, "interactive": False}, "05_benchmark")
    assert (got.target, got.boots) == ("plan", 5)


def test_the_form_checks_the_typed_fingerprint_at_once() -> None:
    disk = DiskChoice("/dev/sdz", "0123456789ab", "/dev/sdz test [ok]", ())
    seen: list[Settings] = []
    form = ParamsForm(Settings(), disks=[disk], fields=("target", "device", "fingerprint", "wipe"),
                      on_valid=seen.append)
    form.target.value = "disk"  # type: ignore[attr-defined]
    form.device.value = "/dev/sdz"  # type: ignore[attr-defined]
    form.fingerprint.value = "0123456789aa"  # type: ignore[attr-defined]
    assert "does not match" in form.match.value and not form.destructive_allowed()
    form.fingerprint.value = "0123456789ab"  # type: ignore[attr-defined]
    assert "matches /dev/sdz" in form.match.value and form.destructive_allowed()
    assert seen and seen[-1].fingerprint == "0123456789ab"  # every valid change is saved
    notes = [c.value for c in form.widget.children if isinstance(getattr(c, "value", None), str)]
    assert any("ERASES" in n for n in notes)  # said beside the wipe switch


def test_a_bad_value_never_reaches_the_saved_file(tmp_path: Path) -> None:
    seen: list[Settings] = []
    form = ParamsForm(Settings(run_dir=str(tmp_path)), disks=[], fields=("boots", "hostname"), on_valid=seen.append)
    n = len(seen)
    form.hostname.value = "bad name!"  # type: ignore[attr-defined]
    assert len(seen) == n and "hostname" in form.status.value
    with pytest.raises(InputError):
        _ = form.params
