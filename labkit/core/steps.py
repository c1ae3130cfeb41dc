"""The one step model: every phase of the install is a list of :class:`Step` run by :func:`run_steps`.

A step is ``check`` → ``apply`` → ``verify``:

- ``check()`` reads the real state (read-only queries only) and says whether the step is done
  already; a step whose check holds is skipped, so a second run on a finished target executes
  nothing that changes it;
- ``apply()`` does the work, through the :class:`~labkit.core.runner.Runner` (in plan mode the
  runner records the commands and runs none);
- ``verify()`` checks the post-condition on the real target after ``apply`` (never in plan mode).

Plan mode records and runs nothing: checks are consulted until the first step is planned (a planned
step changed nothing, so what follows cannot be read off the target), then every step is planned.

The state to resume lives in a small JSON file per phase (``<phase>.steps.json``, written atomically
after each change): each step's last status (``started`` / ``done``) and when. The checks are the
truth; the state says which step a killed run was in, so the next run tells the user and checks that
step again before going on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from labkit.core.runner import Mode, PlannedCommand, Runner, atomic_write_text


def _never() -> bool:
    return False


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Step:
    name: str
    apply: Callable[[], None]
    check: Callable[[], bool] = _never  # done already? (reads only)
    verify: Callable[[], None] = _nothing  # the post-condition (apply mode only)
    describe: str = ""  # one line for the plan: what it does
    erases: str = ""  # what this step destroys, said beside it in every plan ("" = nothing)


@dataclass(frozen=True)
class StepOutcome:
    name: str
    status: str  # "done already" | "applied" | "planned"
    duration_s: float
    describe: str = ""
    erases: str = ""


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    mode: Mode
    outcomes: tuple[StepOutcome, ...]
    planned: tuple[PlannedCommand, ...] = field(default=())
    interrupted: tuple[str, ...] = ()  # steps a previous run started and never finished

    @property
    def ran(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if o.status != "done already")

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outcomes if o.status == "done already")

    @property
    def mutating(self) -> tuple[PlannedCommand, ...]:
        """The commands that change something (queries left out): what a plan must show."""
        return tuple(c for c in self.planned if not c.query)


class StepState:
    """Per-phase resume state: ``{"phase": ..., "steps": {name: {"status": ..., "at": ...}}}``."""

    def __init__(self, path: Path | None, phase: str) -> None:
        self.path = path
        self.phase = phase
        self.steps: dict[str, dict[str, object]] = {}
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("phase") == phase and isinstance(data.get("steps"), dict):
                    self.steps = data["steps"]
            except (OSError, ValueError):
                self.steps = {}

    def interrupted(self) -> list[str]:
        return [name for name, s in self.steps.items() if s.get("status") == "started"]

    def mark(self, name: str, status: str) -> None:
        self.steps[name] = {"status": status, "at": round(time.time(), 3)}
        if self.path is not None:
            atomic_write_text(self.path, json.dumps({"phase": self.phase, "steps": self.steps}, indent=2) + "\n")


def run_steps(runner: Runner, phase: str, steps: Iterable[Step], *, state_dir: Path | None = None,
              verify: Callable[[], None] | None = None) -> PhaseResult:
    """Run (or, in plan mode, record) every step of ``phase`` whose check does not hold; then, in apply
    mode, ``verify`` (the phase's own post-condition: the whole result read back), even when every
    step was done already."""
    plan = runner.mode is Mode.PLAN
    state = StepState(None if plan or state_dir is None else state_dir / f"{_slug(phase)}.steps.json", phase)
    interrupted = tuple(state.interrupted())
    outcomes: list[StepOutcome] = []
    first = len(runner.planned)
    pending = False
    with runner.step(phase):
        for name in interrupted:
            runner.note(f"step {name!r} was interrupted in an earlier run: its state is checked again")
        for s in steps:
            start = time.monotonic()
            with runner.step(s.name):
                if s.erases:
                    runner.note(f"ERASES: {s.erases}")
                if not pending and s.check():
                    runner.note("done already: nothing to do")
                    outcomes.append(StepOutcome(s.name, "done already", time.monotonic() - start, s.describe, s.erases))
                    state.mark(s.name, "done") if not plan else None
                    continue
                if not plan:
                    state.mark(s.name, "started")
                s.apply()
                if plan:
                    pending = True
                    outcomes.append(StepOutcome(s.name, "planned", 0.0, s.describe, s.erases))
                    continue
                s.verify()
                state.mark(s.name, "done")
                outcomes.append(StepOutcome(s.name, "applied", time.monotonic() - start, s.describe, s.erases))
        if verify is not None and not plan:
            with runner.step("read back"):
                verify()
    return PhaseResult(phase, runner.mode, tuple(outcomes), tuple(runner.planned[first:]), interrupted)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-") or "phase"


def plan_lines(result: PhaseResult) -> list[str]:
    """A phase's plan as shell lines, each step headed by its name (and what it erases)."""
    lines: list[str] = []
    by_step: dict[str, list[PlannedCommand]] = {}
    for c in result.mutating:
        by_step.setdefault(c.step.rsplit(" / ", 1)[-1], []).append(c)
    for o in result.outcomes:
        head = f"# {o.name}" + (f" — ERASES {o.erases}" if o.erases else "") + (
            " (done already)" if o.status == "done already" else "")
        lines.append(head)
        if o.describe:
            lines.append(f"#   {o.describe}")
        lines += [c.shell() for c in by_step.get(o.name, [])]
    return lines
