"""The thin layer behind ``notebooks/05_benchmark.ipynb``: settings → the lab run (or the disk's boots), or a
matrix of lab runs on Dask when the settings' ``grid`` is not empty (``labkit matrix``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from labkit.core.settings import Settings
from labkit.lab.matrix import MatrixRun, expand_grid, grid_from_mapping, run_matrix
from labkit.lab.run import LabRun, lab_plan, run_lab


def params(s: Settings, *, out: str = "") -> Settings:
    """The lab run's settings: the notebook's, the run folder set, the lab's own checks passed (and the
    matrix's grid, when there is one: every key a lab setting, every cell valid)."""
    p = replace(s, out=out or s.out, load_cost=s.load_cost and bool(s.load_sets))
    p.validate_lab()
    if p.grid:
        expand_grid(grid_from_mapping(p.grid), p)
    return p


def show_plan(p: Settings) -> None:
    if p.target == "disk":
        print(f"- boot {p.device} in QEMU through rEFInd into {', '.join(p.systems)}, {p.boots} time(s) each "
              "(lab VM measurements of the installed disk), then the report")
        return
    if p.grid:
        cells = expand_grid(grid_from_mapping(p.grid), p)
        where = p.scheduler or "a local Dask cluster"
        print(f"matrix: {len(cells)} cell(s), one lab run each, on {where} (one boot per worker at a time):")
        print("\n".join(f"  - cell {c.cell_id}" for c in cells))
        print("each cell:")
    print("\n".join(f"- {line}" for line in lab_plan(p)))


def run(target: str, p: Settings) -> LabRun | MatrixRun | None:
    """``plan``: nothing runs; ``lab``: the lab run (report included), or with a ``grid`` the matrix
    (:func:`labkit.lab.matrix.run_matrix` on ``scheduler``, else a local cluster); ``disk``: the installed disk
    booted in QEMU (``labkit.lab.diskboot.measure_disk``) and reported."""
    if target == "plan":
        print("target=plan: nothing was built or booted")
        return None
    if target == "disk":
        from labkit.core.runner import Runner
        from labkit.lab.diskboot import measure_disk

        out = Path(p.out or "runs/disk-benchmark")
        runner = Runner(transcript=out / "transcript.jsonl", progress=None)
        done = measure_disk(runner, Path(p.device), p.systems, out, boots=p.boots, accel_candidates=p.accel,
                            memory_mib=p.memory_mib, timeout_s=p.boot_timeout_s, report=p.report)
        print(f"{sum(d.record.ok for d in done)}/{len(done)} boots ok; results: {out / 'results.csv'}")
        return None
    if p.grid:
        matrix = run_matrix(grid_from_mapping(p.grid), p, Path(p.out) if p.out else None,
                            scheduler=p.scheduler or None)
        print(f"matrix {matrix.matrix_id}: {len(matrix.cells) - len(matrix.failed)}/{len(matrix.cells)} cells ok; "
              f"report: {matrix.report}")
        return matrix
    result = run_lab(p)
    print(f"run {result.run_id}: {len(result.boots) - len(result.failed)}/{len(result.boots)} boots ok; "
          f"report: {result.report}")
    return result
