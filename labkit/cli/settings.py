"""``labkit settings``: the settings table, and the notebooks' parameters cells rendered from it."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _cmd_settings(args: argparse.Namespace) -> int:
    from labkit.core import settings as st

    if args.write_notebooks:
        for path in write_notebook_cells():
            print(f"rewrote the parameters cell of {path}")
        return 0
    rows = [{"name": n, "default": st.default(n), "scopes": sorted(st.meta(n).scopes), "help": st.meta(n).help}
            for n in st.names()]
    if args.json:
        print(json.dumps(rows, indent=2, default=list))
        return 0
    for r in rows:
        print(f"{r['name']:<28} {r['default']!r:<24} [{', '.join(r['scopes'])}] {r['help']}")
    return 0


def write_notebook_cells() -> list[str]:
    """Rewrite every notebook's ``parameters`` cell from the table (nothing else in the notebook changes)."""
    import nbformat

    from labkit.core.data import NOTEBOOKS_DIR
    from labkit.core.settings import NOTEBOOKS, OWN_CELL, parameters_cell

    done = []
    for name in NOTEBOOKS:
        if name in OWN_CELL:
            continue
        path = NOTEBOOKS_DIR / f"{name}.ipynb"
        if not path.is_file():
            continue
        nb = nbformat.read(str(path), as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        cell.source = parameters_cell(name)
        nbformat.write(nb, str(path))
        done.append(str(path))
    return done


def register(sub: Any) -> None:
    p = sub.add_parser("settings", help="every setting, its default and where it is used")
    p.add_argument("--json", action="store_true")
    p.add_argument("--write-notebooks", action="store_true",
                   help="rewrite the notebooks' parameters cells from the table")
    p.set_defaults(func=_cmd_settings)
