"""An ipywidgets form that fills the same :class:`~labkit.guide.params.Settings` papermill takes.

Only for JupyterLab: the notebooks build it when ``interactive`` is true (the chain passes
``interactive=False``), and it never blocks — its values are read when a later cell asks for
``form.params``. The disk picker lists every disk with its fingerprint and each reason labkit
would refuse it (:func:`labkit.targets.safety.check_disk`); a destructive step is allowed only when the
fingerprint typed in the form equals the chosen disk's (:meth:`ParamsForm.destructive_allowed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W

from labkit.core.errors import LabkitError
from labkit.core.layout import LAYOUTS, ROLE_KEYS
from labkit.core.pkgsets import PACKAGE_SET_NAMES
from labkit.core.settings import SYSTEMS, TARGETS, Settings


@dataclass(frozen=True)
class DiskChoice:
    path: str
    fingerprint: str
    label: str
    refusals: tuple[str, ...]


def disk_choices(layout_name: str = "seed", disks: Sequence[Any] | None = None) -> list[DiskChoice]:
    """Every disk with its fingerprint and refusal reasons (read-only: discovery only)."""
    from labkit.core.layout import LAYOUTS
    from labkit.targets.safety import check_disk

    if disks is None:
        from labkit.core.runner import Runner
        from labkit.targets.disks import discover

        try:
            disks = discover(Runner(progress=None))
        except (LabkitError, OSError):
            disks = ()
    layout = LAYOUTS[layout_name]
    out = []
    for d in disks:
        found = check_disk(d, layout, confirm=d.fingerprint)
        reasons = tuple(f"{f.code.value}: {f.message}" for f in found)
        mark = "REFUSED" if reasons else "ok"
        out.append(DiskChoice(d.path, d.fingerprint, f"{d.path}  {d.fingerprint}  {d.describe()}  [{mark}]", reasons))
    return out


class ParamsForm:
    """The form. ``form.widget`` is displayed; ``form.params`` validates the current values."""

    def __init__(self, initial: Settings | None = None, *, disks: Sequence[DiskChoice] | None = None) -> None:
        p = initial or Settings()
        self.disks = list(disks) if disks is not None else disk_choices(p.layout_name)
        style = {"description_width": "9em"}
        lay = W.Layout(width="34em")
        self.target = W.ToggleButtons(options=list(TARGETS), value=p.target, description="target", style=style)
        # all (label, value) pairs: ipywidgets reads a mixed list as bare values ("" would not be one)
        self.layout = W.Dropdown(options=[("auto: lab for target lab, else seed", ""),
                                          *((n, n) for n in tuple(LAYOUTS))],
                                 value=p.layout, description="layout",
                                 style=style, layout=lay)
        self.device = W.Dropdown(options=[("(no disk)", "")] + [(c.label, c.path) for c in self.disks],
                                 value=p.device if p.device in {c.path for c in self.disks} else "",
                                 description="disk", style=style, layout=W.Layout(width="60em"))
        self.refusals = W.HTML()
        self.fingerprint = W.Text(value=p.fingerprint, description="fingerprint", placeholder="type it from the table",
                                  style=style, layout=lay)
        self.wipe = W.Checkbox(value=p.wipe, description="wipe existing partitions", indent=False)
        self.sizes = {role: W.Text(value=p.sizes.get(role, ""), description=role, placeholder="layout default",
                                   style=style, layout=lay) for role in ROLE_KEYS}
        self.boots = W.BoundedIntText(value=p.boots, min=1, max=50, description="boots", style=style, layout=lay)
        self.systems = W.SelectMultiple(options=list(SYSTEMS), value=tuple(p.systems), description="systems",
                                        style=style, layout=lay, rows=2)
        self.package_set = W.Dropdown(options=list(PACKAGE_SET_NAMES), value=p.package_set,
                                      description="package set", style=style, layout=lay)
        self.memory_mib = W.BoundedIntText(value=p.memory_mib, min=256, max=65536, step=128,
                                           description="guest MiB", style=style, layout=lay)
        self.hostname = W.Text(value=p.hostname, description="hostname", style=style, layout=lay)
        self.status = W.HTML()
        self._run_dir = p.run_dir
        for w in (self.target, self.layout, self.device, self.fingerprint, self.wipe, self.boots, self.systems,
                  self.package_set, self.memory_mib, self.hostname, *self.sizes.values()):
            w.observe(self._changed, names="value")
        self.widget = W.VBox([
            W.HTML("<b>labkit parameters</b> — the same values papermill takes; run the cells below again "
                   "after a change."),
            self.target, self.layout,
            W.HTML("<i>Disk (target disk only): each disk with its fingerprint and why labkit would refuse it.</i>"),
            self.device, self.refusals, self.fingerprint, self.wipe,
            W.Accordion(children=[W.VBox(list(self.sizes.values()))], titles=("partition sizes",)),
            self.boots, self.systems, self.package_set, self.memory_mib, self.hostname, self.status,
        ])
        self.widget.add_class("labkit-params-form")
        self._changed(None)

    # -- values ---------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        return {
            "target": self.target.value, "run_dir": self._run_dir, "layout": self.layout.value,
            "device": self.device.value, "fingerprint": self.fingerprint.value.strip(), "wipe": self.wipe.value,
            "sizes": {k: w.value.strip() for k, w in self.sizes.items() if w.value.strip()},
            "boots": int(self.boots.value), "systems": tuple(self.systems.value),
            "package_set": self.package_set.value, "memory_mib": int(self.memory_mib.value),
            "hostname": self.hostname.value.strip(), "interactive": True,
            "confirmed": self.destructive_allowed(),
        }

    @property
    def params(self) -> Settings:
        """The current values, validated (raises :class:`~labkit.core.errors.InputError` with the fix)."""
        return Settings.from_mapping(self.values())

    def chosen_disk(self) -> DiskChoice | None:
        return next((c for c in self.disks if c.path == self.device.value), None)

    def destructive_allowed(self) -> bool:
        """Target disk, a disk chosen, no refusal, and its fingerprint typed exactly."""
        d = self.chosen_disk()
        return (self.target.value == "disk" and d is not None and not d.refusals
                and self.fingerprint.value.strip().lower() == d.fingerprint)

    def _changed(self, _change: object) -> None:
        d = self.chosen_disk()
        if d is None:
            self.refusals.value = ""
        elif d.refusals:
            self.refusals.value = ("<span style='color:#a00'>labkit refuses this disk:<br>"
                                   + "<br>".join(_esc(r) for r in d.refusals) + "</span>")
        else:
            self.refusals.value = f"<span style='color:#070'>no refusal; fingerprint {d.fingerprint}</span>"
        try:
            p = Settings.from_mapping(self.values())
        except LabkitError as exc:
            self.status.value = f"<span style='color:#a00'>✗ {_esc(exc.problem)} — {_esc(exc.fix or '')}</span>"
            return
        gate = ("destructive step allowed (fingerprint typed)" if self.destructive_allowed()
                else "destructive steps stay off until target=disk and the chosen disk's fingerprint is typed")
        self.status.value = (f"<span class='labkit-params-ok' style='color:#070'>✓ target={p.target}, "
                             f"layout={p.layout_name}, boots={p.boots}</span> — {_esc(gate)}")


def _esc(text: str) -> str:
    import html

    return html.escape(text)


def params_form(initial: Settings | None = None, **kw: Any) -> ParamsForm:
    """Build and display the form (call it only when ``interactive``)."""
    from IPython.display import display

    form = ParamsForm(initial, **kw)
    display(form.widget)
    return form
