"""Run again like an earlier run: ``labkit lab --like RUN_DIR``.

The parameters come from the run's ``environment.json`` (``params``, written by :func:`labkit.lab.run.run_lab`
from :meth:`labkit.core.settings.Settings.as_record`); every difference in host, tools and versions between that
run and this machine is reported before anything is built (:func:`setup_differences`), and once more after the
run, when the guest kernel, the accelerator and the guests' packages are known (:func:`run_differences`).
``labkit merge OLD NEW`` then says per metric whether the two runs' confidence intervals overlap
(:mod:`labkit.report.merge`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labkit.core.errors import InputError
from labkit.core.runner import Runner
from labkit.core.settings import Settings, coerce, meta, names
from labkit.lab import qemu
from labkit.measure.environment import (
    ENVIRONMENT_FILE,
    capture_environment,
    environment_differences,
    load_environment,
    recorded_params,
)

#: Settings that say where a run goes and what it writes, not what it measures: never taken from the old run
#: (``labkit lab --like`` takes them from its own options).
LOCAL_SETTINGS = ("out", "cache_dir", "report", "keep_image")
#: Settings of the notebooks' chain or of the matrix, not of one lab run.
NOT_LAB = ("run_dir", "interactive", "grid", "scheduler")


def params_from_record(record: Mapping[str, Any], **local: Any) -> tuple[Settings, list[str]]:
    """The settings of a run from its recorded ``params`` (:func:`recorded_params`: older names mapped; the
    local ones, such as ``out`` and ``cache_dir``, from ``local``), and notes on recorded items this labkit does
    not know or that the record lacks."""
    params = recorded_params({"params": record})
    known = set(names())
    notes = [f"recorded parameter {k!r} is unknown to this labkit version: ignored" for k in params if k not in known]
    values = {k: coerce(k, v) for k, v in params.items() if k in known and k not in LOCAL_SETTINGS + NOT_LAB}
    notes += [f"parameter {n!r} is not recorded: this labkit's default is used" for n in names()
              if "lab" in meta(n).scopes and n not in LOCAL_SETTINGS and n not in params]
    values.update({k: coerce(k, v) for k, v in local.items() if v is not None})
    return Settings(**values), sorted(notes)


def load_like(run_dir: Path, **local: Any) -> tuple[Settings, dict[str, Any], list[str]]:
    """The parameters, environment and notes of the run in ``run_dir``."""
    run_dir = Path(run_dir)
    if not (run_dir / ENVIRONMENT_FILE).is_file():
        raise InputError(f"--like {run_dir}: no {ENVIRONMENT_FILE} there",
                         "give the folder of a lab run (it holds environment.json and results.csv)")
    env = load_environment(run_dir)
    record = env.get("params")
    if not isinstance(record, Mapping) or not record:
        raise InputError(f"--like {run_dir}: {ENVIRONMENT_FILE} records no parameters",
                         "give the folder of a run made by `labkit lab` (its environment.json has 'params')")
    params, notes = params_from_record(record, **local)
    params.validate_lab()
    return params, env, notes


def setup_differences(env: Mapping[str, Any], runner: Runner | None = None) -> list[tuple[str, str, str]]:
    """Host, tools and versions that differ between the recorded run and this machine, now."""
    runner = runner or Runner(progress=None)
    here = capture_environment({}, {"host_versions": qemu.host_versions(runner)}, runner=runner)
    known_after_run = ("guest_kernel", "extra.accel", "extra.guest_kind", "extra.guests.")
    return [d for d in environment_differences(env, here) if not d[0].startswith(known_after_run)]


def run_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """After the new run: every setup item (host, tools, versions, guest kernel, accelerator, image) that
    differs between the two runs."""
    return environment_differences(old, new)


def like_record(run_dir: Path, env: Mapping[str, Any]) -> dict[str, object]:
    """What the new run records about the run it repeats (environment.json ``extra.like``)."""
    return {"like": {"run_id": (env.get("extra") or {}).get("run_id"), "folder": str(run_dir)}}
