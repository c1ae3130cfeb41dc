"""The widget form, generated from the settings table (:mod:`labkit.core.settings`).

One widget per setting the notebook declares, with the table's help as its tooltip: a choice becomes a
dropdown (the target: toggle buttons), several choices a multi-select, a yes/no a checkbox, a number a
bounded box, a list or mapping a text field (``a,b`` / ``ROLE=SIZE,...``). Only for JupyterLab: the notebooks
build it when ``interactive`` is true (``labkit run`` passes ``interactive=False``) and it never blocks.

The disk picker lists every disk with its fingerprint and each reason labkit would refuse it
(:func:`labkit.targets.safety.check_disk`); the fingerprint field says at once whether it matches the chosen
disk. A destructive step is allowed only when the target is ``disk``, the disk has no refusal and the
typed fingerprint is the chosen disk's (:meth:`ParamsForm.destructive_allowed`). Every valid change is
passed to ``on_valid`` (the session saves it to the run's settings file, which every notebook reads).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as W

from labkit.core.errors import LabkitError
from labkit.core.settings import Settings, kind, meta, names


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
        out.append(DiskChoice(d.path, d.fingerprint, f"{d.path}  {d.model or '?'}  [{mark}]", reasons))
    return out


#: Shown beside the switches that destroy data.
WARNINGS = {
    "wipe": "ERASES every partition of the chosen disk that is not labkit's layout",
    "target": "disk: writes the chosen disk (after the safety checks and the fingerprint you type)",
}
DEFAULT_FIELDS = ("target", "layout", "device", "fingerprint", "wipe", "sizes", "systems", "package_set", "boots",
                  "memory_mib", "hostname")


class ParamsForm:
    """The form. ``form.widget`` is displayed; ``form.params`` validates the current values; every setting's
    widget is an attribute of the same name (``form.boots``)."""

    def __init__(self, initial: Settings | None = None, *, disks: Sequence[DiskChoice] | None = None,
                 fields: Sequence[str] | None = None, on_valid: Callable[[Settings], object] | None = None) -> None:
        p = initial or Settings()
        self._initial = p
        self.fields = [f for f in (fields or DEFAULT_FIELDS) if f in names() and f not in ("run_dir", "interactive")]
        self.on_valid = on_valid
        self.disks = list(disks) if disks is not None else (
            disk_choices(p.layout_name) if "device" in self.fields else [])
        self.widgets: dict[str, W.Widget] = {}
        rows: list[W.Widget] = [W.HTML("<b>labkit settings</b> — the same values the parameters cell and "
                                       "<code>labkit run -p</code> take; every notebook of this run reads them.")]
        for name in self.fields:
            w = self._widget(name, getattr(p, name))
            w.description_tooltip = meta(name).help
            self.widgets[name] = w
            setattr(self, name, w)
            rows.append(w)
            if name in WARNINGS:
                rows.append(W.HTML(f"<span style='color:#a00;font-size:90%'>⚠ {html.escape(WARNINGS[name])}</span>"))
            if name == "device":
                self.refusals = W.HTML()
                rows.append(self.refusals)
            if name == "fingerprint":
                self.match = W.HTML()
                rows.append(self.match)
            w.observe(self._changed, names="value")
        self.status = W.HTML()
        rows.append(self.status)
        self.widget = W.VBox(rows)
        self.widget.add_class("labkit-params-form")
        self._changed(None)

    # -- widgets -----------------------------------------------------------------------------------
    def _widget(self, name: str, value: Any) -> W.Widget:
        style = {"description_width": "10em"}
        lay = W.Layout(width="40em")
        m = meta(name)
        t = kind(name)
        if name == "target":
            return W.ToggleButtons(options=list(m.choices), value=value, description=name, style=style)
        if name == "device":
            options = [("(no disk)", "")] + [(c.label, c.path) for c in self.disks]
            return W.Dropdown(options=options, value=value if value in {c.path for c in self.disks} else "",
                              description=name, style=style, layout=W.Layout(width="60em"))
        if t is bool:
            return W.Checkbox(value=bool(value), description=name, indent=False)
        if t is tuple and m.choices:
            return W.SelectMultiple(options=list(m.choices), value=tuple(value), description=name, style=style,
                                    layout=lay, rows=min(4, len(m.choices)))
        if m.choices:  # all (label, value) pairs: ipywidgets reads a mixed list as bare values ("" would not be one)
            return W.Dropdown(options=[(c or "(auto)", c) for c in m.choices], value=value, description=name,
                              style=style, layout=lay)
        if t is int:
            return W.BoundedIntText(value=int(value), min=int(m.minimum or 0), max=1_000_000, description=name,
                                    style=style, layout=lay)
        if t is float:
            return W.BoundedFloatText(value=float(value), min=float(m.minimum or 0.0), max=1e9, description=name,
                                      style=style, layout=lay)
        if t is dict:
            text = ",".join(f"{k}={v}" for k, v in value.items())
            return W.Text(value=text, description=name, placeholder="ROLE=SIZE,... (layout default)", style=style,
                          layout=lay)
        if t is tuple:
            return W.Text(value=",".join(value), description=name, style=style, layout=lay)
        return W.Text(value=str(value), description=name, style=style, layout=lay)

    # -- values ----------------------------------------------------------------------------------
    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run_dir": self._initial.run_dir, "interactive": True}
        for name, w in self.widgets.items():
            v = w.value
            out[name] = v.strip() if isinstance(v, str) else v
        return out

    @property
    def params(self) -> Settings:
        """The current values, validated (raises :class:`~labkit.core.errors.InputError` with the fix)."""
        return Settings.from_mapping({**self._initial.as_record(), **self.values()})

    def chosen_disk(self) -> DiskChoice | None:
        device = self.widgets.get("device")
        return next((c for c in self.disks if device is not None and c.path == device.value), None)

    def destructive_allowed(self) -> bool:
        """Target disk, a disk chosen, no refusal, and its fingerprint typed exactly."""
        d = self.chosen_disk()
        target = self.widgets.get("target")
        fp = self.widgets.get("fingerprint")
        return (target is not None and target.value == "disk" and d is not None and not d.refusals
                and fp is not None and fp.value.strip().lower() == d.fingerprint)

    def _changed(self, _change: object) -> None:
        d = self.chosen_disk()
        if hasattr(self, "refusals"):
            if d is None:
                self.refusals.value = ""
            elif d.refusals:
                self.refusals.value = ("<span style='color:#a00'>labkit refuses this disk:<br>"
                                       + "<br>".join(_esc(r) for r in d.refusals) + "</span>")
            else:
                self.refusals.value = "<span style='color:#070'>no refusal</span>"
        if hasattr(self, "match"):
            typed = self.widgets["fingerprint"].value.strip().lower()
            if d is None:
                self.match.value = ""
            elif not typed:
                self.match.value = "<span style='color:#555'>type the fingerprint shown by `labkit disks`</span>"
            elif typed == d.fingerprint:
                self.match.value = f"<span style='color:#070'>✓ matches {_esc(d.path)}</span>"
            else:
                self.match.value = (f"<span style='color:#a00'>✗ does not match {_esc(d.path)}: check that it is the "
                                    "disk you mean</span>")
        try:
            p = self.params
        except LabkitError as exc:
            self.status.value = f"<span style='color:#a00'>✗ {_esc(exc.problem)} — {_esc(exc.fix or '')}</span>"
            return
        if self.on_valid is not None:
            self.on_valid(p)
        gate = ("destructive steps allowed (fingerprint typed)" if self.destructive_allowed()
                else "destructive steps stay off until target=disk and the chosen disk's fingerprint is typed")
        self.status.value = (f"<span class='labkit-params-ok' style='color:#070'>✓ target={p.target}, "
                             f"layout={p.layout_name}, boots={p.boots}</span> — {_esc(gate)}")


def _esc(text: str) -> str:
    return html.escape(text)


def params_form(initial: Settings | None = None, **kw: Any) -> ParamsForm:
    """Build and display the form (call it only when ``interactive``)."""
    from IPython.display import display

    form = ParamsForm(initial, **kw)
    display(form.widget)
    return form
