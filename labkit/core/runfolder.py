"""Run folders: every command that writes results makes a new one and never overwrites a run.

``runs/<run-id>`` (a UTC timestamp, ``-2``, ``-3`` ... when taken) with ``runs/latest`` pointing at the newest,
or the folder the user names with ``--out`` (missing or empty; one that holds a run is refused, naming the
fix). The lab (``labkit lab``), the notebook chain (``labkit run``) and ``labkit merge`` all use this module.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from labkit.core.errors import InputError
from labkit.core.files import check_output_dir

#: Files whose presence means a folder already holds a run.
RUN_MARKERS = ("transcript.jsonl", "environment.json", "results.csv", "boots.csv", "run.json", "chain.json")


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(out: Path | None, runs_root: Path = Path("runs")) -> tuple[str, Path]:
    """Pick the run directory; never reuse one that holds a run.

    ``out`` given: it must be missing or empty (a directory holding a run is refused, naming
    the fix). ``out`` None: a new ``runs/<run-id>`` is made (and ``runs/latest`` points at it).
    """
    if out is None:
        run_id = new_run_id()
        run_dir = runs_root / run_id
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = runs_root / f"{run_id}-{n}"
        run_id = run_dir.name
        check_output_dir(run_dir, what="the run directory")
        latest = runs_root / "latest"
        try:
            if latest.is_symlink() or not latest.exists():
                tmp = runs_root / f".latest-{os.getpid()}"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(run_id)
                os.replace(tmp, latest)
        except OSError:
            pass
        return run_id, run_dir
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory", "choose a new directory for the run")
    if out.is_dir():
        held = [m for m in RUN_MARKERS if (out / m).exists()]
        if held:
            raise InputError(
                f"--out {out} already holds a run ({', '.join(held)}); labkit never overwrites a run",
                f"choose a new directory (e.g. --out {out}-2), or leave --out away to get a new runs/<run-id>",
            )
        if any(out.iterdir()):
            raise InputError(f"--out {out} is not empty", "choose a new or empty directory for the run")
    check_output_dir(out, what="the run directory (--out)")
    return out.resolve().name, out


