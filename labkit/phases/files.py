"""Putting staged files onto a partition: the step every content phase uses, on every target."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from labkit.core.runner import atomic_write_bytes
from labkit.core.steps import Step
from labkit.targets.base import Files, Target, check_relative


def put_step(target: Target, files: Files, name: str | None = None) -> Step:
    """Copy ``files.tree`` onto its partition; done already when every staged file reads back equal."""
    ext = target.extent(files.role)
    staged = sorted(p.relative_to(files.tree).as_posix() for p in files.tree.rglob("*")
                    if not p.is_dir()) if files.tree.is_dir() else []
    shown = ", ".join(staged[:8]) + (f" and {len(staged) - 8} more files" if len(staged) > 8 else "")
    return Step(name or f"put {files.what} on partition {ext.number} ({ext.partition.label})",
                lambda: target.put_tree(files), lambda: target.has_tree(files), lambda: target.verify_tree(files),
                f"{files.what} → partition {ext.number} ({ext.partition.fs.value} {ext.partition.label})"
                + (f": {shown}" if shown else ""))


def stage(dest: Path, files: Mapping[str, bytes | Path | tuple[bytes, int]]) -> Path:
    """Write ``files`` (path inside the partition → bytes, a host file, or (bytes, mode)) under ``dest``
    (made new), each written atomically; returns ``dest``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name, content in files.items():
        out = dest / check_relative(name)
        out.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, out)
            os.chmod(out, 0o644)
        elif isinstance(content, tuple):
            atomic_write_bytes(out, content[0], mode=content[1])
        else:
            atomic_write_bytes(out, content, mode=0o644)
    return dest
