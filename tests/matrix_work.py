"""Injectable cell work for the matrix tests (importable on Dask workers: they get this folder on PYTHONPATH).

:func:`synthetic_lab` writes, in seconds, a lab run folder the way :func:`labkit.lab.run.run_lab` writes one
(results.csv from synthetic bundles through labkit's own parsers, boots.csv, environment.json with the
parameters and the matrix's record), so the product's path around it (Dask submission, retries, the folder's
trip back as bytes, merge, report) runs for real. What a cell does is steered by files in the folder named by
``LABKIT_TEST_MATRIX_CONTROL``, one per cell id:

- ``<cell>.hang``: the first attempt writes ``<cell>.pid`` (its worker process) and sleeps, to be killed;
- ``<cell>.qemu``: the first attempt raises :class:`labkit.lab.qemu.QemuStartError`;
- ``<cell>.guest``: every attempt records a boot whose guest failed (no bundle).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import synth

from labkit.core.settings import Settings
from labkit.lab.boot import BootRecord, write_boots_csv
from labkit.lab.qemu import QemuStartError
from labkit.measure.environment import capture_environment, write_environment

CONTROL_ENV = "LABKIT_TEST_MATRIX_CONTROL"


def synthetic_lab(params: Settings, record: Mapping[str, object], progress: TextIO) -> None:
    matrix = record["matrix"]
    assert isinstance(matrix, Mapping)
    cell, attempt = str(matrix["cell"]), int(matrix["attempt"])  # type: ignore[call-overload]
    control = Path(os.environ[CONTROL_ENV])
    print(f"synthetic cell {cell}, attempt {attempt}, memory {params.memory_mib}", file=progress, flush=True)
    if (control / f"{cell}.hang").exists() and attempt == 1:
        (control / f"{cell}.pid").write_text(str(os.getpid()))
        time.sleep(120)
    if (control / f"{cell}.qemu").exists() and attempt == 1:
        raise QemuStartError("qemu-system-x86_64 exited 1 before the firmware wrote anything (test)")
    assert params.out
    out = Path(params.out)
    run_dir = synth.make_run_dir(out, boots=2, run_id=out.name)
    boots = [BootRecord("alpine", b, b == 0, True, "guest powered off", 12.0, "tcg", False,
                        f"serial-alpine-rehearsal-{b}.log", None) for b in range(2)]
    if (control / f"{cell}.guest").exists():
        boots.append(BootRecord("alpine", 2, False, False, "no probe bundle on serial (guest powered off)", 9.0,
                                "tcg", False, "serial-alpine-rehearsal-2.log", None))
    write_boots_csv(boots, run_dir / "boots.csv")
    env = capture_environment(params.as_record(), {**record, "run_id": out.name, "accel": "tcg",
                                                   "guest_kind": "rehearsal"})
    write_environment(env, run_dir)
