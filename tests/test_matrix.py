"""The benchmark matrix on Dask: grid keys checked against the lab settings, cells on a local cluster and on a
scheduler with worker processes (one killed during a cell), results travelling back as bytes, one report."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import matrix_work
import pandas as pd
import pytest

from labkit.cli import main as cli
from labkit.core.errors import InputError
from labkit.core.settings import Settings
from labkit.lab.matrix import (
    BOOTSLOT,
    MAX_FILE_BYTES,
    expand_grid,
    grid_field,
    grid_from_mapping,
    pack_folder,
    parse_grid,
    run_matrix,
    unpack_folder,
)

TESTS = Path(__file__).resolve().parent
DASK = Path(sys.executable).parent / "dask"
FAST = Settings(boots=1, max_boots=1, warmup=0, systems=("alpine",), load_cost=False)


# -- the grid ------------------------------------------------------------------------------------------
def test_grid_keys_are_lab_settings() -> None:
    assert grid_field("memory") == "memory_mib"
    assert grid_field("memory_mib") == "memory_mib"
    assert grid_field("boot-timeout") == "boot_timeout_s"
    assert grid_field("--world") == "package_set"
    assert grid_field("package_set") == "package_set"
    with pytest.raises(InputError) as exc:
        grid_field("colour")
    assert "not a lab setting" in exc.value.problem and "memory_mib" in (exc.value.fix or "")
    with pytest.raises(InputError, match="not a lab setting"):
        grid_field("device")  # a setting, but not one of the lab's
    with pytest.raises(InputError, match="set by the matrix itself"):
        grid_field("out")


def test_grid_values_take_the_settings_types() -> None:
    grid = parse_grid(["memory=384,512", "systems=alpine+nixos,alpine", "max_boots=0,4", "load-cost=no"])
    assert grid == [("memory_mib", (384, 512)), ("systems", (("alpine", "nixos"), ("alpine",))),
                    ("max_boots", (0, 4)), ("load_cost", (False,))]
    cells = expand_grid(grid, FAST)
    assert len(cells) == 8 and len({c.cell_id for c in cells}) == 8
    assert cells[0].cell_id == "memory_mib-384_systems-alpine+nixos_max_boots-0_load_cost-False"
    assert cells[0].record() == {"memory_mib": 384, "systems": ["alpine", "nixos"], "max_boots": 0,
                                 "load_cost": False}
    # the notebook's grid (a setting: values written as text, or lists) goes through the same checks
    assert grid_from_mapping({"memory_mib": "384,512", "systems": "['alpine+nixos', 'alpine']"}) == grid[:2]


@pytest.mark.parametrize(
    ("specs", "needle"),
    [
        (["memory"], "expected KEY=V1,V2"),
        (["memory="], "no value"),
        (["memory=384,384"], "repeated"),
        (["memory=384", "memory_mib=512"], "given twice"),
        (["memory=big"], "is not a whole number"),
        (["memory=128"], "must be a number of at least 256"),
        (["load_cost=maybe"], "is not true or false"),
        (["systems=alpine+windows"], "'windows' is not one of alpine, nixos"),
        ([], "no --grid"),
    ],
)
def test_bad_grids_are_refused(specs: list[str], needle: str) -> None:
    with pytest.raises(InputError, match=needle):
        parse_grid(specs)


def test_an_invalid_cell_is_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"cell load_cost-True: the load-cost fit needs at least 2"):
        run_matrix(parse_grid(["load_cost=true,false"]), replace(FAST, load_sets=("small",)), tmp_path / "m",
                   log=None)
    assert not (tmp_path / "m").exists()


def test_cli_names_the_bad_grid_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["matrix", "--grid", "colour=red,blue", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and "--grid colour: not a lab setting" in err and "fix: use one of:" in err
    assert not (tmp_path / "m").exists()


def test_a_run_folder_travels_as_bytes_without_its_work_tree(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "serial").mkdir(parents=True)
    (run / "work").mkdir()
    (run / "results.csv").write_text("run_id\n")
    (run / "serial" / "alpine-0.log").write_text("0.1\thello\n")
    (run / "work" / "disk.img").write_bytes(b"\0" * 1024)
    with (run / "huge.bin").open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)
    (tmp_path / "cell.log").write_text("log\n")
    payload = pack_folder(run, {"cell.log": tmp_path / "cell.log"})
    dest = unpack_folder(payload, tmp_path / "back")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "cell.log", "results.csv", "serial/alpine-0.log"]
    assert (dest / "serial" / "alpine-0.log").read_text() == "0.1\thello\n"
    assert len(payload) < 4096


# -- a local cluster -------------------------------------------------------------------------------------
@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "control"
    d.mkdir()
    monkeypatch.setenv(matrix_work.CONTROL_ENV, str(d))
    return d


def test_local_cluster_retries_an_infrastructure_failure_and_keeps_a_failed_guest(
    tmp_path: Path, control: Path
) -> None:
    """QEMU failing to start is retried; a guest that failed is kept as failed, not retried; the report
    (06_report on the matrix folder) covers every cell with results."""
    (control / "memory_mib-512.qemu").touch()
    (control / "memory_mib-640.guest").touch()
    log = io.StringIO()
    out = tmp_path / "m"
    run = run_matrix(parse_grid(["memory=384,512,640"]), FAST, out, work=matrix_work.synthetic_lab, log=log,
                     poll_s=0.2, scratch=str(tmp_path / "scratch"))
    text = log.getvalue()
    states = {c.cell.cell_id: c for c in run.cells}
    assert [states[c].status for c in ("memory_mib-384", "memory_mib-512", "memory_mib-640")] == ["ok", "ok", "failed"]
    assert [a["status"] for a in states["memory_mib-512"].attempts] == ["infra", "ok"]
    assert "QemuStartError" in str(states["memory_mib-512"].attempts[0]["reason"])
    assert [a["status"] for a in states["memory_mib-640"].attempts] == ["failed"]  # never retried
    assert "no probe bundle" in str(states["memory_mib-640"].attempts[0]["reason"])
    assert "local Dask cluster: 1 worker(s)" in text and "retrying (2/3)" in text
    assert "cells: 3/3 done, 0 running, 1 failed, 0 queued, 1 retried" in text
    # every cell's folder came back; the failed attempt's evidence is kept apart
    for cid in states:
        assert (out / "cells" / cid / "results.csv").is_file() and (out / "cells" / cid / "cell.log").is_file()
    assert (out / "attempts" / "memory_mib-512.attempt-1" / "cell.log").is_file()
    assert not (tmp_path / "scratch" / "labkit-matrix").exists() or not any(
        (tmp_path / "scratch" / "labkit-matrix").rglob("*.attempt-*"))
    info = json.loads((out / "matrix.json").read_text())
    assert info["grid"] == {"memory_mib": [384, 512, 640]} and info["retries"] == 2
    assert [c["status"] for c in info["cells"]] == ["ok", "ok", "failed"]
    # one merged folder: results of all three memory values, statistics per cell, one report
    res = pd.read_csv(out / "results.csv")
    assert sorted(res["memory_mib"].unique()) == [384, 512, 640]
    assert res["run_id"].nunique() == 3 and set(res["cell"]) == {"memory_mib=384", "memory_mib=512", "memory_mib=640"}
    per_cell = pd.read_csv(out / "stats_per_cell.csv")
    assert list(dict.fromkeys(per_cell["memory_mib"])) == [384, 512, 640]
    assert sorted(p.name for p in (out / "environments").iterdir()) == [f"{run.matrix_id}-memory_mib-{m}.json"
                                                                       for m in (384, 512, 640)]
    assert run.report is not None
    html = run.report.read_text()
    for m in (384, 512, 640):
        assert f"alpine-rehearsal | memory_mib={m}" in html
    assert "Matrix cells" in html and "#1 infra: QemuStartError" in html


# -- a scheduler and two workers on 127.0.0.1, one killed during a cell ----------------------------------------
@pytest.fixture
def dask_cluster(tmp_path: Path, control: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """``dask scheduler`` + two ``dask worker`` processes, each in its own process group (so the test can kill
    one whole worker, and only its own processes)."""
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    sched_file = tmp_path / "scheduler.json"
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=(logs / f"{name}.out").open("wb"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    try:
        start([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
               "--scheduler-file", str(sched_file)], "scheduler")
        deadline = time.monotonic() + 60
        while not sched_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(sched_file.read_text())["address"]
        workers = [start([str(DASK), "worker", address, "--nworkers", "1", "--nthreads", "1", "--resources",
                          f"{BOOTSLOT}=1", "--host", "127.0.0.1", "--no-dashboard"], f"worker{i}") for i in range(2)]
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address, workers
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def test_a_cell_whose_worker_is_killed_is_retried_and_nothing_else_is_lost(
    tmp_path: Path, control: Path, dask_cluster: tuple[str, list[subprocess.Popen[bytes]]]
) -> None:
    address, workers = dask_cluster
    (control / "memory_mib-384.hang").touch()
    killed: list[int] = []

    def kill_the_worker_running_the_cell() -> None:
        pid_file = control / "memory_mib-384.pid"
        deadline = time.monotonic() + 240
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        if not pid_file.is_file():
            return
        group = os.getpgid(int(pid_file.read_text()))
        owner = next(w for w in workers if w.pid == group)  # one of this test's workers, nothing else
        os.killpg(owner.pid, signal.SIGKILL)
        killed.append(owner.pid)

    killer = threading.Thread(target=kill_the_worker_running_the_cell, daemon=True)
    killer.start()
    log = io.StringIO()
    out = tmp_path / "m"
    t0 = time.monotonic()
    run = run_matrix(parse_grid(["memory=384,512,640"]), FAST, out, scheduler=address,
                     work=matrix_work.synthetic_lab, log=log, poll_s=0.3, report=False,
                     scratch=str(tmp_path / "scratch"))
    wall = time.monotonic() - t0
    killer.join(timeout=5)
    text = log.getvalue()
    assert len(killed) == 1, text
    victim = next(w for w in workers if w.pid == killed[0])
    assert victim.wait(timeout=10) == -signal.SIGKILL
    states = {c.cell.cell_id: c for c in run.cells}
    assert all(c.status == "ok" for c in run.cells), text
    hung = states["memory_mib-384"].attempts
    assert [a["status"] for a in hung] == ["infra", "ok"] and "KilledWorker" in str(hung[0]["reason"]), hung
    assert all(len(states[c].attempts) == 1 for c in ("memory_mib-512", "memory_mib-640")), text
    assert "2 worker(s) with a BOOTSLOT" in text and "retrying (2/3)" in text
    survivor = next(w for w in workers if w.pid != killed[0])
    assert survivor.poll() is None
    # every cell's folder and rows arrived, the retried one once
    res = pd.read_csv(out / "results.csv")
    assert sorted(res["memory_mib"].unique()) == [384, 512, 640] and res["run_id"].nunique() == 3
    for cid in states:
        assert (out / "cells" / cid / "results.csv").is_file()
    env = json.loads((out / "environments" / f"{run.matrix_id}-memory_mib-384.json").read_text())
    assert env["extra"]["matrix"]["attempt"] == 2 and env["params"]["memory_mib"] == 384
    print(f"kill test: matrix of 3 synthetic cells with one worker killed: {wall:.1f} s")


# -- real boots ----------------------------------------------------------------------------------------------
@pytest.mark.boot
def test_matrix_of_two_memory_sizes_boots_on_a_local_cluster(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    t0 = time.monotonic()
    # a fixed boot list: one boot per cell (the adaptive rule would add boots on a busy host)
    rc = cli.main(["matrix", "--grid", "memory=384,512", "--boots", "1", "--max-boots", "1", "--warmup", "0",
                   "--no-load-cost",
                   "--systems", "alpine", "--out", str(out)])
    wall = time.monotonic() - t0
    captured = capsys.readouterr()
    assert rc == 0, captured.err[-3000:]
    assert "cells: 2/2 done, 0 running, 0 failed" in captured.err
    res = pd.read_csv(out / "results.csv")
    assert sorted(res["memory_mib"].unique()) == [384, 512]
    # the factor reached the guest: the kernel saw less RAM in the 384 MiB cell
    mem = res[res["metric"] == "mem_total_mib"].groupby("memory_mib")["value"].median()
    assert mem[384] < mem[512] <= 512
    html = (out / "report.html").read_text()
    assert "alpine-rehearsal | memory_mib=384" in html and "alpine-rehearsal | memory_mib=512" in html
    assert "data:image/png;base64" in html
    for cid in ("memory_mib-384", "memory_mib-512"):
        assert (out / "cells" / cid / "serial" / "alpine-0.log").is_file()
        assert not (out / "cells" / cid / "work").exists()
    print(f"matrix memory=384,512 (1 boot each, TCG): {wall:.0f} s")


def test_benchmark_notebook_plans_a_matrix(tmp_path: Path) -> None:
    import papermill

    nb = TESTS.parent / "notebooks" / "05_benchmark.ipynb"
    out = papermill.execute_notebook(str(nb), str(tmp_path / "o.ipynb"), kernel_name="python3", progress_bar=False,
                                     cwd=str(tmp_path), parameters={"target": "plan", "systems": ["alpine"],
                                                                    "grid": {"memory": [384, 512]},
                                                                    "interactive": False})
    text = "".join(o.get("text", "") for c in out.cells for o in c.get("outputs", []))
    assert "matrix: 2 cell(s)" in text and "cell memory_mib-384" in text and "cell memory_mib-512" in text
    assert "nothing was built or booted" in text and not (tmp_path / "runs").exists()
    with pytest.raises(papermill.PapermillExecutionError, match="not a lab setting"):
        papermill.execute_notebook(str(nb), str(tmp_path / "o2.ipynb"), kernel_name="python3", progress_bar=False,
                                   cwd=str(tmp_path), parameters={"target": "plan", "grid": {"colour": "1,2"},
                                                                  "interactive": False})


@pytest.mark.skipif(Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1",
                    reason="this host overcommits any amount of memory: QEMU would start")
def test_qemu_that_cannot_start_is_retried_then_kept_as_failed(tmp_path: Path) -> None:
    """The real path: the image is built, the accelerator chosen, then QEMU cannot set up 64 TiB of guest RAM
    and exits before the firmware writes a line (QEMU_START_FAILED): the cell is tried once more, then kept as
    failed with the reason and its files."""
    log = io.StringIO()
    run = run_matrix(parse_grid(["memory=67108864"]), FAST, tmp_path / "m", retries=1, log=log, poll_s=0.5,
                     scratch=str(tmp_path / "scratch"))
    (cell,) = run.cells
    assert cell.status == "failed" and [a["status"] for a in cell.attempts] == ["infra", "infra"], log.getvalue()
    reason = str(cell.attempts[0]["reason"])
    assert reason.startswith("alpine #0: QEMU failed to start: qemu exited 1") and "guest memory" in reason
    assert "(after 2 attempts)" in log.getvalue() and "retrying (2/2)" in log.getvalue()
    assert (tmp_path / "m" / "attempts" / "memory_mib-67108864.attempt-1" / "boots.csv").is_file()
    assert (tmp_path / "m" / "cells" / "memory_mib-67108864" / "transcript.jsonl").is_file()
    # the cell's results.csv has no row; the merged folder is made from the cells that measured something
    assert run.report is None or "QEMU failed to start" in run.report.read_text()
