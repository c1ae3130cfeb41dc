"""The benchmark matrix: a grid of lab parameters, one lab run per cell, fanned out with Dask distributed.

``labkit matrix --grid memory=384,512 --grid world=small,default --out DIR`` expands the grid into cells
(:func:`expand_grid`; every key is checked by :func:`grid_field`), submits one task per cell
(:func:`run_cell`, which calls :func:`labkit.lab.run.run_lab`) and merges the cells into one folder and one
report (:mod:`labkit.report.merge`).

Where cells run: without a scheduler, a local cluster of ``workers`` worker processes (default 1: one boot at a
time on this host); with ``scheduler="tcp://HOST:8786"``, the workers connected to it, on any machine. Every
cell asks for the resource ``BOOTSLOT: 1`` and every worker offers one (``dask worker tcp://HOST:8786
--nworkers 1 --nthreads 1 --resources BOOTSLOT=1``), so no two boots share a worker and their timings stay
clean.

How results travel: a cell runs into a scratch folder on its worker (``$TMPDIR/labkit-matrix/<matrix>/``)
and returns its run folder as a gzip'd tar in the task's result (:attr:`CellOutcome.payload`: every file but
the work tree and files above :data:`MAX_FILE_BYTES`; a few hundred KiB per cell), which the client unpacks
into ``DIR/cells/<cell-id>/``. The same path serves a local and a remote worker; no shared filesystem is
needed, and the scratch folder is removed once packed.

Failures: a cell whose worker was lost (distributed's ``KilledWorker``, a closed comm) or whose QEMU could not
start (:class:`labkit.lab.qemu.QemuStartError`, a boot marked :data:`labkit.lab.boot.QEMU_START_FAILED`, an
``OSError``, a tool missing on that worker's machine) is an infrastructure failure: it is submitted again, up
to ``retries`` more times, and its failed attempts are kept in ``DIR/attempts/``. A cell whose guest failed
(a boot without a usable bundle, a failed build) is kept as failed, never retried. The local cluster's
scheduler sets ``allowed-failures`` to 0, so a lost worker reaches this code at once instead of being
rescheduled silently; a remote scheduler should be started with
``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0`` (labkit says so when it is not).
"""

from __future__ import annotations

import ast
import contextlib
import io
import itertools
import json
import os
import platform
import re
import secrets
import shutil
import sys
import tarfile
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from labkit.core.errors import InputError, LabkitError, ToolMissing
from labkit.core.runfolder import new_run_id, prepare_run_dir
from labkit.core.runner import atomic_write_text
from labkit.core.settings import Settings, coerce, default, kind, meta, names
from labkit.lab.boot import QEMU_START_FAILED
from labkit.lab.qemu import QemuStartError
from labkit.lab.run import run_lab
from labkit.report.merge import MATRIX_FILE

if TYPE_CHECKING:
    from distributed import Client

BOOTSLOT = "BOOTSLOT"
DEFAULT_RETRIES = 2
CELLS_DIR = "cells"
ATTEMPTS_DIR = "attempts"
CELL_LOG = "cell.log"
#: Lab settings a grid cannot vary: where a run goes and what it writes (the matrix decides those).
NOT_GRIDDABLE = ("out", "cache_dir", "report", "keep_image")
#: A cell sends back every file of its run folder up to this size (the disk image stays on the worker).
MAX_FILE_BYTES = 64 * 1024**2

#: What a cell runs: ``work(params, record, progress)`` must leave a lab run folder in ``params.out``
#: (:func:`lab_work`, i.e. :func:`run_lab`, unless a test injects something faster).
CellWork = Callable[[Settings, Mapping[str, object], TextIO], object]


# -- the grid ---------------------------------------------------------------------------------------
def grid_field(key: str) -> str:
    """The lab setting a grid key names (:mod:`labkit.core.settings`, scope ``lab``): its name
    (``memory_mib``), its ``labkit lab`` option (``memory``, ``boot-timeout``) or an alias (``world``). The one
    place grid keys are checked."""
    k = key.strip().lstrip("-").replace("-", "_")
    lab = [n for n in names() if "lab" in meta(n).scopes]
    for n in lab:
        m = meta(n)
        spelled = {n, *(o.lstrip("-").replace("-", "_") for o in (m.cli or "", *m.aliases) if o)}
        if k in spelled:
            if n in NOT_GRIDDABLE:
                raise InputError(f"--grid {key}: {n} is set by the matrix itself, not per cell",
                                 "leave it out of the grid (use --out for the matrix folder)")
            return n
    raise InputError(f"--grid {key}: not a lab setting",
                     f"use one of: {', '.join(n for n in lab if n not in NOT_GRIDDABLE)} (or its labkit lab option, "
                     "e.g. memory for memory_mib; `labkit settings` lists them)")


def parse_value(name: str, text: str) -> object:
    """One grid value as the setting's type (:func:`labkit.core.settings.coerce`); a list is written with
    ``+`` between its items (``systems=alpine+nixos``), since ``,`` separates the grid's values."""
    value = coerce(name, text.replace("+", ",") if kind(name) is tuple else text.strip())
    try:
        Settings(**{name: value})
    except InputError as exc:
        raise InputError(f"--grid {name}: {exc.problem}", exc.fix) from None
    return value


def parse_grid(specs: Sequence[str]) -> list[tuple[str, tuple[object, ...]]]:
    """``["memory=384,512", "world=small,default"]`` → ``[("memory_mib", (384, 512)), ("world", (...))]``."""
    grid: list[tuple[str, tuple[object, ...]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--grid {spec!r}: expected KEY=V1,V2", "e.g. --grid memory=384,512")
        name = grid_field(key)
        if name in [k for k, _ in grid]:
            raise InputError(f"--grid {key} is given twice", f"give every value of {name} in one --grid")
        texts = [v for v in values.split(",") if v.strip()]
        if not texts:
            raise InputError(f"--grid {spec!r}: no value", f"e.g. --grid {key.strip()}=V1,V2")
        parsed = tuple(parse_value(name, v) for v in texts)
        if len(set(map(repr, parsed))) < len(parsed):
            raise InputError(f"--grid {spec!r}: a value is repeated", "give each value once")
        grid.append((name, parsed))
    if not grid:
        raise InputError("no --grid given: the matrix has no cells", "e.g. --grid memory=384,512")
    return grid


def grid_from_mapping(grid: Mapping[str, object]) -> list[tuple[str, tuple[object, ...]]]:
    """The settings' ``grid`` (``{"memory_mib": "384,512", "systems": "alpine+nixos,alpine"}``; a value may be a
    list, or a list written as text, as a notebook's dict becomes in the settings) through the same checks as
    ``--grid`` (:func:`parse_grid`)."""
    def text(v: object) -> str:
        return "+".join(map(str, v)) if isinstance(v, list | tuple) else str(v)

    specs = []
    for key, values in grid.items():
        if isinstance(values, str) and values.strip().startswith("["):
            try:
                values = ast.literal_eval(values.strip())
            except (ValueError, SyntaxError):
                raise InputError(f"grid {key}: {values!r} is not a list",
                                 f"write it as text, e.g. {key}: '384,512', or as a list") from None
        vals = values if isinstance(values, list | tuple) else [values]
        specs.append(f"{key}=" + ",".join(text(v) for v in vals))
    return parse_grid(specs)


@dataclass(frozen=True)
class Cell:
    cell_id: str
    factors: tuple[tuple[str, object], ...]

    @property
    def factor_dict(self) -> dict[str, object]:
        return dict(self.factors)

    def record(self) -> dict[str, object]:
        """The factors as JSON values (lists for tuples, strings for paths)."""
        return {k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
                for k, v in self.factors}


def _id_part(v: object) -> str:
    if v is None:
        return "none"
    text = "+".join(map(str, v)) if isinstance(v, tuple) else Path(v).name if isinstance(v, Path) else str(v)
    return re.sub(r"[^A-Za-z0-9.+]", "-", text) or "none"


def base_overrides(base: Settings) -> dict[str, object]:
    """The base's lab settings that differ from the table's defaults (sent to the workers; a worker fills the
    rest with its own defaults, such as its cache folder)."""
    out: dict[str, object] = {}
    for n in names():
        if "lab" not in meta(n).scopes or n in ("out", "report"):
            continue
        v = getattr(base, n)
        if v != default(n):
            out[n] = v
    return out


def cell_params(base: Mapping[str, object], cell: Cell, out: Path | None) -> Settings:
    """A cell's settings: the base, the cell's values, no report (the matrix renders one), its folder."""
    return Settings(**{**base, **cell.factor_dict, "out": str(out) if out else "", "report": False})  # type: ignore[arg-type]


def expand_grid(grid: Sequence[tuple[str, Sequence[object]]], base: Settings) -> list[Cell]:
    """Every combination of the grid's values, as cells (each one's settings validated here, before anything
    is submitted)."""
    names = [k for k, _ in grid]
    cells: list[Cell] = []
    ids: set[str] = set()
    over = base_overrides(base)
    for combo in itertools.product(*[tuple(v) for _, v in grid]):
        factors = tuple(zip(names, combo, strict=True))
        cid = "_".join(f"{k}-{_id_part(v)}" for k, v in factors)
        n = 2
        while cid in ids:
            cid, n = f"{cid}-{n}", n + 1
        ids.add(cid)
        cell = Cell(cid, factors)
        try:
            cell_params(over, cell, None).validate_lab()
        except InputError as exc:
            raise InputError(f"cell {cid}: {exc.problem}", exc.fix) from None
        cells.append(cell)
    return cells


# -- one cell, on a worker --------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    matrix_id: str
    cell: Cell
    base: tuple[tuple[str, object], ...]
    attempt: int = 1
    scratch: str | None = None  # None: the worker's temporary folder

    @property
    def run_id(self) -> str:
        return f"{self.matrix_id}-{self.cell.cell_id}"


@dataclass(frozen=True)
class CellOutcome:
    cell_id: str
    attempt: int
    status: str  # ok | failed (kept, not retried) | infra (retried)
    reason: str
    host: str
    worker: str
    wall_s: float
    boots_ok: int = 0
    boots_failed: int = 0
    payload: bytes | None = None  # the run folder, tar.gz

    def record(self) -> dict[str, object]:
        d = asdict(self)
        d["payload_bytes"] = len(self.payload) if self.payload is not None else 0
        del d["payload"]
        return d


def lab_work(params: Settings, record: Mapping[str, object], progress: TextIO) -> object:
    """What a cell does: one lab run."""
    return run_lab(params, progress=progress, record=record)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "in-process"


def _boots(run_dir: Path) -> list[dict[str, str]]:
    import csv

    path = run_dir / "boots.csv"
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def classify(run_dir: Path) -> tuple[str, str, int, int]:
    """(status, reason, boots ok, boots failed) of a finished lab run folder."""
    boots = _boots(run_dir)
    ok = [b for b in boots if b.get("ok", "").lower() == "true"]
    bad = [b for b in boots if b.get("ok", "").lower() != "true"]
    if any(b.get("reason", "").startswith(QEMU_START_FAILED) for b in bad):
        first = next(b for b in bad if b.get("reason", "").startswith(QEMU_START_FAILED))
        return "infra", f"{first['os']} #{first['boot']}: {first['reason']}", len(ok), len(bad)
    if bad:
        return ("failed", "; ".join(f"{b['os']} #{b['boot']}: {b['reason']}" for b in bad[:3]), len(ok), len(bad))
    if not (run_dir / "results.csv").is_file():
        return "failed", "the run wrote no results.csv", len(ok), len(bad)
    return "ok", "", len(ok), len(bad)


def pack_folder(folder: Path, extra: Mapping[str, Path] = {}) -> bytes:
    """The folder's files as a tar.gz (no ``work/`` tree, nothing above :data:`MAX_FILE_BYTES`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if rel.parts[0] == "work" or not path.is_file() or path.is_symlink():
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                continue
            tar.add(path, arcname=str(rel), recursive=False)
        for name, path in extra.items():
            if path.is_file():
                tar.add(path, arcname=name, recursive=False)
    return buf.getvalue()


def unpack_folder(payload: bytes, dest: Path) -> Path:
    """Unpack a cell's payload into ``dest`` (through a temporary folder: ``dest`` appears whole or not at all)."""
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
        tar.extractall(tmp, filter="data")
    os.replace(tmp, dest)
    return dest


def run_cell(spec: CellSpec, work: CellWork | None = None) -> CellOutcome:
    """Run one cell here (on a Dask worker): the lab run in a scratch folder, classified, packed, removed.

    Never raises for a failed run: the outcome says ``ok``, ``failed`` (the guest or the build failed: kept)
    or ``infra`` (QEMU could not start, an OSError: the client retries)."""
    started = time.monotonic()
    host, worker = platform.node(), _worker_address()
    root = Path(spec.scratch or tempfile.gettempdir()) / "labkit-matrix" / spec.matrix_id
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{spec.cell.cell_id}.attempt-*"):  # left by an attempt whose worker died
        shutil.rmtree(old, ignore_errors=True)
    here = root / f"{spec.cell.cell_id}.attempt-{spec.attempt}"
    here.mkdir()
    run_dir = here / spec.run_id
    log = here / CELL_LOG
    record = {"matrix": {"id": spec.matrix_id, "cell": spec.cell.cell_id, "factors": spec.cell.record(),
                         "attempt": spec.attempt, "worker": worker, "host": host}}
    status, reason, n_ok, n_bad = "ok", "", 0, 0
    try:
        with log.open("w", encoding="utf-8") as progress:
            (work or lab_work)(cell_params(dict(spec.base), spec.cell, run_dir), record, progress)
    except (QemuStartError, ToolMissing, OSError) as exc:  # this worker's machine, not the cell: try again
        status, reason = "infra", f"{type(exc).__name__}: {exc}"
    except LabkitError as exc:
        status, reason = "failed", str(exc)
    except Exception as exc:  # a bug: keep it as a failed cell with its traceback, never as a lost worker
        status, reason = "failed", "".join(traceback.format_exception_only(exc)).strip()
        with log.open("a", encoding="utf-8") as fh:
            fh.write(traceback.format_exc())
    if status == "ok":
        status, reason, n_ok, n_bad = classify(run_dir)
    else:
        n_ok, n_bad = classify(run_dir)[2:] if run_dir.is_dir() else (0, 0)
    payload = pack_folder(run_dir, {CELL_LOG: log}) if run_dir.is_dir() else pack_folder(here, {})
    shutil.rmtree(here, ignore_errors=True)
    with contextlib.suppress(OSError):
        root.rmdir()  # the last cell of this matrix on this host
    return CellOutcome(spec.cell.cell_id, spec.attempt, status, reason, host, worker,
                       round(time.monotonic() - started, 1), n_ok, n_bad, payload)


# -- the cluster ------------------------------------------------------------------------------------
def _infra_errors() -> tuple[type[BaseException], ...]:
    from distributed import CancelledError, KilledWorker
    from distributed.comm.core import CommClosedError
    from distributed.core import RPCClosed

    return (KilledWorker, CommClosedError, RPCClosed, CancelledError, OSError)


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int, *, log: TextIO | None) -> Iterator[Client]:
    """A client of ``scheduler``, or of a local cluster: ``workers`` processes, one thread and one BOOTSLOT
    each, a scheduler that hands a lost worker's task back at once (allowed_failures=0)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler {scheduler}: {exc}",
                             "start it on that host (`dask scheduler`), check the address and the firewall "
                             "(port 8786), or leave --scheduler away for a local cluster") from None
        try:
            yield client
        finally:
            client.close()
        return
    if workers < 1:
        raise InputError(f"--workers {workers}: a local cluster needs at least one worker", "use --workers 1")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, resources={BOOTSLOT: 1},
                           dashboard_address=None, memory_limit=0,
                           # no dashboard; its small HTTP server (health checks) on a free port, not 8787
                           scheduler_kwargs={"allowed_failures": 0, "dashboard": False, "dashboard_address": ":0"})
    client = Client(cluster)
    _note(log, f"local Dask cluster: {workers} worker(s), 1 thread and 1 {BOOTSLOT} each")
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def slot_workers(client: Client) -> dict[str, dict[str, Any]]:
    """The connected workers that offer a BOOTSLOT, by address."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return {a: w for a, w in workers.items() if float((w.get("resources") or {}).get(BOOTSLOT, 0)) >= 1}


def check_workers(client: Client, *, wait_s: float, log: TextIO | None) -> list[str]:
    """Wait for workers offering a BOOTSLOT; say when the setup lets boots share a host or retries hide."""
    deadline = time.monotonic() + wait_s
    address = str(getattr(client.scheduler, "address", "the scheduler"))
    while True:
        slots = slot_workers(client)
        if slots:
            break
        if time.monotonic() > deadline:
            raise InputError(
                f"no worker offers the {BOOTSLOT} resource on {address} "
                f"({len(client.scheduler_info(n_workers=-1).get('workers', {}))} worker(s) connected)",
                f"start one per machine: dask worker {address} --nworkers 1 --nthreads 1 "
                f"--resources {BOOTSLOT}=1")
        time.sleep(1.0)
    for addr, w in slots.items():
        if float(w["resources"][BOOTSLOT]) > 1 or int(w.get("nthreads", 1)) > 1:
            _note(log, f"warning: worker {addr} offers {w['resources'][BOOTSLOT]} {BOOTSLOT}(s) and "
                       f"{w.get('nthreads')} thread(s): boots may run side by side there")
    by_host: dict[str, int] = {}
    for w in slots.values():
        by_host[str(w.get("host"))] = by_host.get(str(w.get("host")), 0) + 1
    for h, n in by_host.items():
        if n > 1:
            _note(log, f"warning: {n} boot slots on host {h}: their boots share its CPUs")
    with contextlib.suppress(Exception):
        allowed = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
        if allowed:
            _note(log, f"note: the scheduler itself reruns a lost worker's cell up to {allowed} time(s) before "
                       "labkit sees it (start it with DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=0 so that "
                       "every retry is counted in matrix.json)")
    return sorted(slots)


# -- the matrix ----------------------------------------------------------------------------------------
@dataclass
class CellState:
    cell: Cell
    attempts: list[dict[str, object]] = field(default_factory=list)
    status: str = "queued"  # queued | running | ok | failed
    folder: str | None = None


@dataclass(frozen=True)
class MatrixRun:
    matrix_id: str
    out: Path
    cells: tuple[CellState, ...]
    report: Path | None
    wall_s: float

    @property
    def failed(self) -> list[CellState]:
        return [c for c in self.cells if c.status != "ok"]


def _note(log: TextIO | None, msg: str) -> None:
    if log is not None:
        print(msg, file=log, flush=True)


def _write_matrix_json(out: Path, matrix_id: str, grid: Sequence[tuple[str, Sequence[object]]],
                       base: Mapping[str, object], states: Sequence[CellState], extra: Mapping[str, object]) -> None:
    def js(v: object) -> object:
        return list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v

    info = {"matrix_id": matrix_id, "grid": {k: [js(x) for x in v] for k, v in grid},
            "base": {k: js(v) for k, v in base.items()}, **extra,
            "cells": [{"cell_id": s.cell.cell_id, "factors": s.cell.record(), "status": s.status,
                       "folder": s.folder, "attempts": s.attempts} for s in states]}
    atomic_write_text(out / MATRIX_FILE, json.dumps(info, indent=2, default=str) + "\n")


def run_matrix(
    grid: Sequence[tuple[str, Sequence[object]]],
    base: Settings,
    out: Path | None = None,
    *,
    runs_root: Path = Path("runs"),
    scheduler: str | None = None,
    workers: int = 1,
    retries: int = DEFAULT_RETRIES,
    work: CellWork | None = None,
    log: TextIO | None = sys.stderr,
    poll_s: float = 1.0,
    wait_workers_s: float = 60.0,
    report: bool = True,
    scratch: str | None = None,
) -> MatrixRun:
    """Run every cell of ``grid`` (on ``base``) on Dask, retry infrastructure failures up to ``retries``
    times, unpack each cell into ``out/cells/<cell-id>/``, merge them into ``out`` and render the report.
    ``out``: a new or empty folder; None: a new ``runs_root/<run-id>``."""
    from distributed import Future

    started = time.monotonic()
    cells = expand_grid(grid, base)
    if retries < 0:
        raise InputError(f"--retries {retries} is negative", "use 0 (no retry) or more")
    _, out = prepare_run_dir(Path(out) if out is not None else None, runs_root)  # new or empty, else runs/<id>
    # cells' run ids are <matrix id>-<cell id>: unique even for matrices started the same second on two machines
    matrix_id = f"{new_run_id()}-{secrets.token_hex(2)}"
    over = base_overrides(base)
    states = {c.cell_id: CellState(c) for c in cells}
    meta: dict[str, object] = {"scheduler": scheduler or f"local ({workers} worker(s))", "retries": retries}
    _write_matrix_json(out, matrix_id, grid, over, list(states.values()), meta)
    _note(log, f"matrix {matrix_id}: {len(cells)} cell(s) → {out}")
    with dask_client(scheduler, workers, log=log) as client:
        slots = check_workers(client, wait_s=wait_workers_s, log=log)
        meta["workers"] = slots
        _note(log, f"{len(slots)} worker(s) with a {BOOTSLOT}: {', '.join(slots)}")
        queue: deque[tuple[Cell, int]] = deque((c, 1) for c in cells)
        active: dict[Future, CellSpec] = {}
        last, capacity, no_worker_since = "", len(slots), None
        while queue or active:
            # at most one cell per free BOOTSLOT is submitted: a worker never holds a queued cell, so losing it
            # loses only the cell it was running (the scheduler assigns by slots offered, not slots free)
            with contextlib.suppress(Exception):
                capacity = len(slot_workers(client))
            now = time.monotonic()
            no_worker_since = None if capacity else (no_worker_since or now)
            if no_worker_since is not None and now - no_worker_since > wait_workers_s:
                for fut, spec in list(active.items()):
                    fut.cancel()
                    queue.append((spec.cell, spec.attempt))
                active.clear()
                for cell, attempt in queue:
                    st = states[cell.cell_id]
                    st.status = "failed"
                    st.attempts.append(CellOutcome(cell.cell_id, attempt, "infra", f"no worker with a {BOOTSLOT} "
                                                   f"for {wait_workers_s:.0f} s", "?", "?", 0.0).record())
                _note(log, f"no worker with a {BOOTSLOT} left for {wait_workers_s:.0f} s: "
                           f"{len(queue)} cell(s) not run")
                queue.clear()
                break
            while queue and len(active) < capacity:
                cell, attempt = queue.popleft()
                spec = CellSpec(matrix_id, cell, tuple(over.items()), attempt, scratch)
                fut = client.submit(run_cell, spec, work, key=f"labkit-cell-{spec.run_id}-attempt-{attempt}",
                                    resources={BOOTSLOT: 1}, pure=False, retries=0)
                active[fut] = spec
            time.sleep(poll_s)
            try:
                running = {str(k) for keys in client.processing().values() for k in keys}
            except Exception:  # the scheduler is briefly unreachable: the futures will say more
                running = set()
            for fut, spec in list(active.items()):
                st = states[spec.cell.cell_id]
                if fut.status in ("pending", "lost"):  # lost: its result is being computed again
                    st.status = "running" if str(fut.key) in running else "queued"
                    continue
                del active[fut]
                outcome = _collect(fut, spec)
                fut.release()
                st.attempts.append(outcome.record())
                if outcome.status == "infra" and spec.attempt <= retries:
                    if outcome.payload:
                        unpack_folder(outcome.payload, _attempt_dir(out, spec))
                    _note(log, f"cell {spec.cell.cell_id}: attempt {spec.attempt} lost to an infrastructure failure "
                               f"({outcome.reason}); retrying ({spec.attempt + 1}/{retries + 1})")
                    queue.appendleft((spec.cell, spec.attempt + 1))
                    st.status = "queued"
                    continue
                if outcome.payload:
                    unpack_folder(outcome.payload, out / CELLS_DIR / spec.cell.cell_id)
                    st.folder = f"{CELLS_DIR}/{spec.cell.cell_id}"
                st.status = "ok" if outcome.status == "ok" else "failed"
                why = "" if outcome.status == "ok" else f" — {outcome.reason}" + (
                    f" (after {spec.attempt} attempts)" if outcome.status == "infra" else "")
                _note(log, f"cell {spec.cell.cell_id}: {st.status} in {outcome.wall_s:.0f} s on {outcome.host} "
                           f"({outcome.worker}), attempt {spec.attempt}{why}")
            line = _progress_line(list(states.values()), time.monotonic() - started)
            if line.split(" (")[0] != last:
                _note(log, line)
                last = line.split(" (")[0]
            _write_matrix_json(out, matrix_id, grid, over, list(states.values()), meta)
    meta["wall_s"] = round(time.monotonic() - started, 1)
    _write_matrix_json(out, matrix_id, grid, over, list(states.values()), meta)
    report_path = _merge_and_report(out, list(states.values()), report=report, log=log)
    wall = time.monotonic() - started
    meta["wall_s"] = round(wall, 1)
    _write_matrix_json(out, matrix_id, grid, over, list(states.values()), meta)
    ok = sum(s.status == "ok" for s in states.values())
    _note(log, f"matrix {matrix_id}: {ok}/{len(states)} cell(s) ok in {wall:.0f} s")
    return MatrixRun(matrix_id, out, tuple(states.values()), report_path, round(wall, 1))


def _attempt_dir(out: Path, spec: CellSpec) -> Path:
    d = out / ATTEMPTS_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{spec.cell.cell_id}.attempt-{spec.attempt}"


def _collect(fut: Any, spec: CellSpec) -> CellOutcome:
    """The task's outcome; a lost worker or a broken connection becomes an ``infra`` outcome."""
    try:
        res = fut.result(timeout=300)
    except _infra_errors() as exc:
        return CellOutcome(spec.cell.cell_id, spec.attempt, "infra", f"{type(exc).__name__}: {exc}", "?", "?", 0.0)
    except Exception as exc:
        return CellOutcome(spec.cell.cell_id, spec.attempt, "failed", f"{type(exc).__name__}: {exc}", "?", "?", 0.0)
    if not isinstance(res, CellOutcome):
        return CellOutcome(spec.cell.cell_id, spec.attempt, "failed", f"the task returned {type(res).__name__}",
                           "?", "?", 0.0)
    return res


def _progress_line(states: Sequence[CellState], elapsed: float) -> str:
    """``cells: 3/8 done, 1 running, 1 failed, 4 queued, 1 retried (312 s)``."""
    done = sum(s.status in ("ok", "failed") for s in states)
    running = sum(s.status == "running" for s in states)
    failed = sum(s.status == "failed" for s in states)
    retried = sum(len(s.attempts) > (1 if s.status in ("ok", "failed") else 0) for s in states)
    return (f"cells: {done}/{len(states)} done, {running} running, {failed} failed, "
            f"{len(states) - done - running} queued, {retried} retried ({elapsed:.0f} s)")


def _merge_and_report(out: Path, states: Sequence[CellState], *, report: bool, log: TextIO | None) -> Path | None:
    from labkit.report.merge import merge_runs

    folders = [out / s.folder for s in states if s.folder and (out / s.folder / "results.csv").is_file()]
    if not folders:
        _note(log, "no cell produced results: nothing to merge")
        return None
    matrix = json.loads((out / MATRIX_FILE).read_text(encoding="utf-8"))
    merged = merge_runs(folders, out, matrix={k: v for k, v in matrix.items() if k != "cells"})
    for n in merged.notes:
        _note(log, f"merge: {n}")
    if merged.rows == 0:
        _note(log, "no cell measured anything (every boot failed): merged, but no report")
        return None
    if not report:
        return None
    from labkit.report.report import render_report

    html = render_report(out)
    _note(log, f"report: {html}")
    return html
