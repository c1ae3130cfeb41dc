"""One phase of the install from a notebook: the same steps as ``labkit install``, on the notebook's target.

- ``target='plan'``: the plan target — every command on the chosen device, or on a named placeholder
  (``/dev/sdX``) when none is chosen; nothing runs but read-only queries;
- ``target='lab'``: the image target, one disk image per run (``<run_dir>/lab-disk/disk.img``): 01 makes
  it, 02-04 fill it, 05/06 measure;
- ``target='disk'``: the device target, after the safety checks and the typed fingerprint.

:func:`plan` shows what a phase would run on that target; :func:`apply` runs it (nothing in plan mode) and
reads the result back. Both record a JSONL transcript in ``<run_dir>/install/``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from labkit.core.layout import LAYOUTS, Layout, parse_size
from labkit.core.runner import Mode, Runner
from labkit.core.settings import Settings
from labkit.core.steps import PhaseResult, plan_lines
from labkit.phases.install import InstallOptions, InstallResult, alpine_login, run_install
from labkit.targets.base import Target
from labkit.targets.device import DeviceTarget, PlanTarget
from labkit.targets.image import ImageTarget

PHASES = ("disk", "refind", "nixos", "alpine")
NEXT = {
    "disk": "02_refind — put rEFInd and its ext4 driver on the ESP",
    "refind": "03_nixos — NixOS with a tmpfs root, GRUB on the ESP",
    "nixos": "04_alpine — Alpine diskless: boot/, apks/ and the apkovl",
    "alpine": "05_benchmark — boot both systems and measure them",
}


def run_dir(s: Settings) -> Path:
    return Path(s.run_dir or ".")


def layout(s: Settings) -> Layout:
    base = LAYOUTS[s.layout_name]
    return base.with_sizes(**{k: parse_size(v) for k, v in s.sizes.items()}) if s.sizes else base


def lab_image(s: Settings) -> Path:
    return run_dir(s) / "lab-disk" / "disk.img"


def install_options(s: Settings, phase: str = "alpine") -> InstallOptions:
    """The install's options from the notebook's settings. The Alpine phase on a real disk needs its owner's
    way in (asked there: the other phases' notebooks do not declare it)."""
    login = None
    if s.target == "disk" and "alpine" in s.systems and phase == "alpine":  # a real disk is somebody's
        login = alpine_login(s.path("alpine_root_password_hash_file"), s.alpine_ssh_keys)
    elif s.target == "plan" and (s.alpine_root_password_hash_file or s.alpine_ssh_keys):
        login = alpine_login(s.path("alpine_root_password_hash_file"), s.alpine_ssh_keys)
    return InstallOptions(alpine_login=login, systems=s.systems, world=s.package_set, cache_dir=s.path("cache_dir"),
                          alpine_iso=s.path("alpine_iso"), alpine_iso_sha256=s.alpine_iso_sha256 or None,
                          alpine_rootfs=s.path("alpine_rootfs"),
                          alpine_world=s.alpine_world, alpine_media=s.alpine_media or "vda4", hostname=s.hostname,
                          plan_real_alpine=s.target == "plan")


def open_target(s: Settings, runner: Runner) -> Target:
    lay = layout(s)
    if s.target == "lab":
        return ImageTarget(runner, lay, lab_image(s), work=lab_image(s).with_name("image.d"))
    state, mnt = run_dir(s) / "install" / "disk-state.json", run_dir(s) / "install" / "mnt"
    if runner.mode is Mode.PLAN:
        return PlanTarget(runner, lay, s.device or "/dev/sdX", confirm=s.fingerprint or None, wipe=s.wipe,
                          allow_removable=s.allow_removable, state_path=state, work=mnt)
    return DeviceTarget(runner, lay, s.device, confirm=s.fingerprint or None, wipe=s.wipe,
                        allow_removable=s.allow_removable, state_path=state, work=mnt)


@dataclass(frozen=True)
class PhaseView:
    """What a notebook shows of one phase: the commands (plan) or what ran (apply), and what comes next."""

    phase: str
    target: str
    result: PhaseResult | None
    executed: bool
    staging: tuple[str, ...] = ()  # the commands that stage the phase's files on this host (into the run folder)

    def lines(self) -> list[str]:
        head = ["# staging the files on this host (into the run folder)", *self.staging] if self.staging else []
        return head + (plan_lines(self.result) if self.result is not None else [])

    def _repr_markdown_(self) -> str:
        if self.result is None:
            return f"*{self.phase}: nothing to do on this target*"
        what = "ran" if self.executed else "would run (nothing was executed)"
        body = "\n".join(self.lines()) or "# (every step is done already)"
        done = ", ".join(self.result.skipped) or "none"
        return (f"**{self.phase} phase on {html.escape(self.target)}** — commands that {what}:\n\n"
                f"```sh\n{body}\n```\n\nSteps done already: {done}.\n\n**Next:** {NEXT.get(self.phase, 'the report')}")


def _run(s: Settings, phase: str, mode: Mode) -> PhaseView:
    if phase not in PHASES:
        raise ValueError(phase)
    rd = run_dir(s) / "install"
    runner = Runner(mode=mode, transcript=rd / (f"plan-{phase}.jsonl" if mode is Mode.PLAN else "transcript.jsonl"),
                    progress=None)
    target = open_target(s, runner)
    res: InstallResult = run_install(target, install_options(s, phase), rd / "work", wipe=s.wipe, phases=(phase,))
    result = res.phases[0] if res.phases else None
    return PhaseView(phase, target.describe(), result, mode is Mode.APPLY, tuple(c.shell() for c in res.staging))


def plan(s: Settings, phase: str) -> PhaseView:
    """The phase's commands on the notebook's target, as they would run now (reads only)."""
    return _run(s, phase, Mode.PLAN)


def apply(s: Settings, phase: str) -> PhaseView:
    """Run the phase on the lab image or the disk and read it back; with ``target='plan'`` only plan it."""
    return _run(s, phase, Mode.PLAN if s.target == "plan" else Mode.APPLY)
