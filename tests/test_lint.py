"""Linters run as tests: ruff and mypy on the code, shellcheck on the guest scripts, clean notebooks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff() -> None:
    res = _run([str(BIN / "ruff"), "check", "labkit", "tests", "benchmarks"])
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy() -> None:
    res = _run([str(BIN / "mypy"), "labkit", "benchmarks"])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing: apt-get install shellcheck")
def test_guest_scripts_are_shellcheck_clean() -> None:
    scripts = sorted([*(ROOT / "labkit" / "data" / "guest").glob("*.sh"), *(ROOT / "tests" / "data").glob("*.sh")])
    assert scripts
    # SC2239: nixos-stage2.sh's shebang is a template (@busybox@/bin/sh) filled with a store path
    res = _run(["shellcheck", "-s", "sh", "-e", "SC2239", *map(str, scripts)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for nb_path in notebooks:
        nb = json.loads(nb_path.read_text())
        cells = nb["cells"]
        dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
        assert not dirty, f"{nb_path.name}: cells {dirty} carry outputs; clear them before committing"
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"


def test_papermill_sees_every_parameter() -> None:
    """papermill skips a parameters line holding two '=' (e.g. in its comment): the chain would then
    never pass that parameter. Every name assigned in the cell must be one papermill declares."""
    import ast

    import papermill

    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        src = "".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
        names = [t.id for n in ast.parse(src).body if isinstance(n, ast.Assign | ast.AnnAssign)
                 for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)]
        seen = set(papermill.inspect_notebook(str(nb_path)))
        assert [n for n in names if n not in seen] == [], f"{nb_path.name}: papermill cannot parse these"


#: A path of one machine: the folders where people's clones and shared files live. A clone can be
#: anywhere, so tests, code, notebooks and scripts find files relative to themselves instead.
MACHINE_PATH = re.compile(r"(?<![\w.~$}-])/(?:work|home/[\w.-]+|root|Users/[\w.-]+|mnt/[a-z])/[\w.-]")
#: Where such a path is legitimate text, not a location labkit opens: /home/<user> inside the
#: Alpine passwd line labkit writes, and /root in a comment copied from Alpine's lbu.conf.
#: The shared folder or the checkout named by an absolute path (a quoted /ANY/shared/... or /ANY/main).
SIBLING_PATH = re.compile(r"[\"']/[A-Za-z0-9_.-]+/(?:shared|main)(?:/|[\"'])")
MACHINE_PATH_ALLOWED = {
    ("labkit/systems/alpine/apkovl.py", "/home/{"),
    ("labkit/systems/alpine/baselayout.py", "/" + "root/config-backups"),
}


def test_no_absolute_path_of_a_machine_in_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    found = []
    for name in files.decode().split("\0"):
        path = ROOT / name
        if not name or name.startswith("tests/fixtures/") or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), start=1):
            for m in [*MACHINE_PATH.finditer(line), *SIBLING_PATH.finditer(line)]:
                if not any(name == f and line[m.start():].startswith(p) for f, p in MACHINE_PATH_ALLOWED):
                    found.append(f"{name}:{n}: {line.strip()[:100]}")
    assert not found, "absolute paths of one machine (find the file relative to the repository):\n" + "\n".join(found)


def test_the_machine_path_check_can_fail() -> None:
    assert MACHINE_PATH.search('FIX = Path("/' + 'work/shared/fixtures")')
    assert MACHINE_PATH.search("cd /" + "home/alice/labkit")
    assert SIBLING_PATH.search('Path("/' + 'srv/shared/x")')
    assert not MACHINE_PATH.search('Path(__file__).parent / "fixtures"')
    assert not MACHINE_PATH.search("~/.cache/labkit and $HOME/x")


#: labkit's layers, lowest first: a module imports only from its own layer or lower ones
#: (docs/architecture.md). Function-level imports count too: a lazy import is still a dependency.
LAYERS = ("core", "targets", "systems", "rehearsal", "phases", "measure", "report", "lab", "guide", "cli")


def _labkit_imports() -> dict[str, set[str]]:
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "labkit").rglob("*.py")):
        mod = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:  # "from labkit.x import sub" depends on the module labkit.x.sub
                    sub = f"{node.module}.{alias.name}"
                    is_module = any((ROOT / Path(*sub.split("."))).with_suffix(s).exists() for s in (".py", ""))
                    deps.add(sub if is_module else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d.startswith("labkit.") and d != mod}
    return graph


def _layer(mod: str) -> int | None:
    parts = mod.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer() -> None:
    loose = [m for m in _labkit_imports() if _layer(m) is None and m not in ("labkit", "labkit.__main__")
             and m.removeprefix("labkit.") not in LAYERS]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"


def test_imports_point_down_the_layers() -> None:
    wrong = [f"{m} -> {d}" for m, deps in _labkit_imports().items() for d in deps
             if (a := _layer(m)) is not None and (b := _layer(d)) is not None and b > a]
    assert not wrong, "imports that point up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = _labkit_imports()
    modules = set(graph)
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            d = d if d in modules else d.rsplit(".", 1)[0]  # "from labkit.x import name" of a package
            if d not in modules:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d):], d]) if d in path else f"{m} -> {d}")
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_parameters_cells_are_rendered_from_the_settings_table() -> None:
    """One declaration: every notebook's parameters cell is exactly what the settings table renders
    (labkit settings --write-notebooks rewrites them)."""
    from labkit.core.settings import NOTEBOOKS, OWN_CELL, parameters_cell

    for name in NOTEBOOKS:
        if name in OWN_CELL:
            continue
        cells = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())["cells"]
        src = "".join(next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))["source"])
        assert src == parameters_cell(name), f"{name}: run `labkit settings --write-notebooks`"
