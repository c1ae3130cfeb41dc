"""The thin layer behind ``notebooks/05_benchmark.ipynb``: parameters → LabParams, plan, run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from labkit.core.errors import InputError
from labkit.lab.run import LabParams, LabRun, lab_plan, run_lab

TARGETS = ("plan", "lab")


def params(systems: Sequence[str], boots: int, warmup: int, world: str, load_sets: Sequence[str],
           out: str = "") -> LabParams:
    """Validate the notebook's parameters at once into a :class:`LabParams`."""
    p = LabParams(out=Path(out) if out else None, boots=int(boots), warmup=int(warmup), systems=tuple(systems),
                  world=world, load_cost=bool(load_sets), load_sets=tuple(load_sets) or ("small", "medium", "large"))
    p.validate()
    return p


def show_plan(p: LabParams) -> None:
    print("\n".join(f"- {line}" for line in lab_plan(p)))


def run(target: str, p: LabParams) -> LabRun | None:
    """``plan``: nothing runs; ``lab``: :func:`labkit.lab.run.run_lab` (report included)."""
    if target not in TARGETS:
        raise InputError(f"target {target!r} is not one of {', '.join(TARGETS)}", "use target='plan' or 'lab'")
    if target == "plan":
        print("target=plan: nothing was built or booted")
        return None
    result = run_lab(p)
    print(f"run {result.run_id}: {len(result.boots) - len(result.failed)}/{len(result.boots)} boots ok; "
          f"report: {result.report}")
    return result
