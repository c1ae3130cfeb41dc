"""The unit file NixOS writes for a ``systemd.services.<name>`` definition, rendered in Python.

labkit's NixOS module gives its probe service as attributes (:func:`labkit.systems.nixos.config.probe_service`);
the NixOS-style rehearsal guest runs real systemd with the unit these attributes become on NixOS, so this
module follows nixpkgs' own rendering, step by step (NixOS/nixpkgs@013635633ffe ``nixos/lib/systemd-lib.nix``,
@515c8fb59bc1 ``nixos/lib/systemd-unit-options.nix``):

- ``unitConfig`` (systemd-lib.nix ``unitConfig``): ``Requires``/``Wants``/``After``/``Before``... from the
  lists (``toString``: blank separated), ``Description``;
- ``environment.PATH = "${makeBinPath path}:${makeSearchPathOutput "bin" "sbin" path}"`` when ``path`` is not
  empty (``serviceConfig``), ``path`` being the service's list followed by the stage-2 defaults coreutils,
  findutils, gnugrep, gnused and systemd (``stage2ServiceConfig``, ``mkAfter``);
- ``script`` becomes ``ExecStart = <job script> + " " + scriptArgs`` (systemd-unit-options.nix, the
  ``config.script != ""`` block), the job script being ``makeJobScript``'s ``writeShellScriptBin`` named
  ``<name>-start`` in a store path ``unit-script-<name>-start``, with the text ``set -e\\n\\n<script>\\n``
  (systemd-lib.nix ``makeJobScript``) after ``#!${runtimeShell}\\n`` (nixpkgs
  pkgs/build-support/trivial-builders ``writeShellScriptBin``);
- the text (``serviceToUnit``, ``commonUnitText``): ``[Unit]`` then ``attrsToSection unitConfig`` and an empty
  line, ``[Service]`` with one ``Environment=<toJSON "NAME=value">`` per variable (sorted by name), then
  ``attrsToSection serviceConfig``, then, with ``wantedBy``, an empty line, ``[Install]`` and
  ``WantedBy=<units>``; ``attrsToSection`` writes ``Name=value`` lines in attribute-name order (Nix sorts
  attribute sets), a list giving one line per element, ``true``/``false`` for booleans;
- ``generateUnits``: ``<target>.wants/<unit>`` links ``../<unit>`` for each ``wantedBy``.

What a whole NixOS system adds from other modules (``systemd.globalEnvironment``: ``LOCALE_ARCHIVE`` from
i18n, ``TZDIR``) is not part of labkit's module and is left out. Nix expressions that need a real Nix
(package attributes, ``${...}`` interpolations) go through a :class:`NixResolver`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from labkit.core.errors import LabkitError
from labkit.systems.nixos.nixexpr import Raw

#: nixos/lib/systemd-lib.nix stage2ServiceConfig: appended (mkAfter) to every stage-2 service's path
STAGE2_DEFAULT_PATH = ("coreutils", "findutils", "gnugrep", "gnused", "systemd")
#: systemd-lib.nix unitConfig: option → [Unit] key (lists joined with blanks)
_UNIT_LISTS = {"requires": "Requires", "wants": "Wants", "upholds": "Upholds", "after": "After",
               "before": "Before", "bindsTo": "BindsTo", "partOf": "PartOf", "conflicts": "Conflicts",
               "requisite": "Requisite", "documentation": "Documentation", "onFailure": "OnFailure",
               "onSuccess": "OnSuccess"}
_KNOWN = {*_UNIT_LISTS, "description", "wantedBy", "path", "environment", "serviceConfig", "script", "unitConfig"}


class NixResolver(Protocol):
    """Stands in for Nix evaluation: where a package or an interpolated expression lives in the store."""

    def package(self, expr: str) -> str | None:
        """The store path of a package expression of ``path`` (``coreutils``, ``config.nix.package``);
        None leaves it out."""

    def interpolate(self, expr: str) -> str:
        """The value of ``${expr}`` in a script (``pkgs.runtimeShell``, ``./labkit-probe.sh``)."""

    def job_script(self, name: str, text: str) -> str:
        """Store ``text`` as the executable ``bin/<name>`` of a store path; return that store path."""


@dataclass(frozen=True)
class RenderedUnit:
    name: str  # "labkit-probe.service"
    text: str  # the unit file
    wanted_by: tuple[str, ...]  # generateUnits: <target>.wants/<name> -> ../<name>
    exec_start: str  # the job script's path (or "")


def nix_indented_string(raw: str) -> str:
    """The value of a Nix ``''...''`` string (no interpolation): the first line dropped when blank, the
    smallest indentation of the non-blank lines removed, a last line of blanks dropped."""
    body = raw.strip()
    if not (body.startswith("''") and body.endswith("''")):
        raise LabkitError(f"not a Nix indented string: {raw[:40]!r}...", "give the script as Raw(\"''...''\")")
    body = body[2:-2]
    lines = body.split("\n")
    if lines and not lines[0].strip():
        lines = lines[1:]
    if lines and not lines[-1].strip():
        lines[-1] = ""
    indent = min((len(ln) - len(ln.lstrip(" ")) for ln in lines if ln.strip()), default=0)
    return "\n".join(ln[indent:] if ln.strip() else "" for ln in lines).replace("''$", "$").replace("'''", "''")


def _interpolate(text: str, resolver: NixResolver) -> str:
    return re.sub(r"\$\{([^}]+)\}", lambda m: resolver.interpolate(m.group(1).strip()), text)


def _path_list(value: object) -> list[str]:
    """A service's ``path`` → the package expressions, in order: a list of names, or a Nix list expression,
    ``with pkgs; [ coreutils gawk ]``, lists joined with ``++`` (``(with pkgs; [ ... ]) ++ [ config.nix.package ]``)."""
    if isinstance(value, Raw):
        items: list[str] = []
        for part in value.text.split("++"):
            m = re.fullmatch(r"\s*\(?\s*(?:with\s+pkgs\s*;\s*)?\[(?P<items>[^\]]*)\]\s*\)?\s*", part)
            if not m:
                raise LabkitError(f"cannot read the service path {value.text!r}",
                                  "write it as [ pkg1 pkg2 ], with pkgs; [ ... ], or lists joined with ++")
            items += m["items"].split()
        return items
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [str(v) for v in value]
    raise LabkitError(f"cannot read the service path {value!r}", "give a list of packages")


def _to_option(x: object) -> str:
    if x is True:
        return "true"
    if x is False:
        return "false"
    return str(x)


def _attrs_to_section(attrs: Mapping[str, object]) -> str:
    """systemd-lib.nix attrsToSection: ``name=value`` lines, names sorted, one line per list element."""
    out = []
    for name in sorted(attrs):
        value = attrs[name]
        for x in value if isinstance(value, list | tuple) else [value]:
            out.append(f"{name}={_to_option(x)}\n")
    return "".join(out)


def _strs(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(x) for x in value]
    raise LabkitError(f"expected a list, got {value!r}", "give the unit option as a list")


def _mapping(value: object) -> dict[str, object]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    raise LabkitError(f"expected an attribute set, got {value!r}", "give the unit option as a dict")


def render_service(name: str, attrs: Mapping[Any, object], resolver: NixResolver) -> RenderedUnit:
    """The unit NixOS writes for ``systemd.services.<name> = attrs`` (see the module docstring)."""
    unknown = {str(k) for k in attrs} - _KNOWN
    if unknown:
        raise LabkitError(f"service {name}: cannot render the option(s) {sorted(unknown)} like NixOS",
                          "teach labkit.systems.nixos.units the option (read nixos/lib/systemd-lib.nix)")
    unit: dict[str, object] = {}
    for opt, key in _UNIT_LISTS.items():
        items = _strs(attrs.get(opt))
        if items:
            unit[key] = " ".join(items)
    if attrs.get("description"):
        unit["Description"] = attrs["description"]
    unit.update(_mapping(attrs.get("unitConfig")))
    env = {k: str(v) for k, v in _mapping(attrs.get("environment")).items()}
    path = [*_path_list(attrs.get("path", [])), *STAGE2_DEFAULT_PATH]
    stores = [s for s in (resolver.package(p) for p in path) if s is not None]
    if stores:
        env["PATH"] = ":".join(f"{s}/bin" for s in stores) + ":" + ":".join(f"{s}/sbin" for s in stores)
    service = _mapping(attrs.get("serviceConfig"))
    exec_start = ""
    if attrs.get("script"):
        script = attrs["script"]
        text = nix_indented_string(script.text if isinstance(script, Raw) else f"''{script}''")
        job_name = f"{name}-start".replace("\\", "-").replace("@", "_")
        body = f"#!{resolver.interpolate('pkgs.runtimeShell')}\nset -e\n\n{_interpolate(text, resolver)}\n\n"
        exec_start = f"{resolver.job_script(job_name, body)}/bin/{job_name}"
        service["ExecStart"] = exec_start + " "  # jobScripts + " " + config.scriptArgs (empty)
    text = "[Unit]\n" + _attrs_to_section(unit) + "\n[Service]\n"
    for var in sorted(env):
        text += "Environment=" + json.dumps(f"{var}={env[var]}", ensure_ascii=False) + "\n"
    text += _attrs_to_section(service)
    wanted = tuple(_strs(attrs.get("wantedBy")))
    if wanted:
        text += "\n[Install]\nWantedBy=" + " ".join(wanted) + "\n"
    return RenderedUnit(f"{name}.service", text, wanted, exec_start)
