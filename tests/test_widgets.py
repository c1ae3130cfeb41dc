"""The ipywidgets form builds (no browser) and its values validate into Settings."""

from __future__ import annotations

from labkit.core.settings import Settings
from labkit.guide.widgets import DiskChoice, ParamsForm


def test_form_builds_with_defaults_and_fills_the_parameters() -> None:
    form = ParamsForm(Settings(), disks=[])
    assert form.params.layout == "" and form.params.layout_name == "seed"
    form.target.value = "lab"
    form.boots.value = 3
    form.hostname.value = "browserlab"
    assert "target=lab, layout=lab, boots=3" in form.status.value
    p = form.params
    assert (p.target, p.layout_name, p.boots, p.hostname) == ("lab", "lab", 3, "browserlab")
    form.layout.value = "seed"
    assert form.params.layout_name == "seed"


def test_destructive_step_needs_the_typed_fingerprint() -> None:
    disk = DiskChoice("/dev/sdz", "0123456789ab", "/dev/sdz  0123456789ab  test disk  [ok]", ())
    form = ParamsForm(Settings(), disks=[disk])
    form.target.value = "disk"
    form.device.value = "/dev/sdz"
    assert not form.destructive_allowed()
    form.fingerprint.value = "0123456789ab"
    assert form.destructive_allowed() and form.params.fingerprint == "0123456789ab"
