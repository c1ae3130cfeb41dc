"""Capture the environment a run was measured in (stored next to results.csv)."""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labkit.core.errors import LabkitError
from labkit.core.runner import Runner, atomic_write_text
from labkit.measure.bundle import Bundle

#: Debian packages whose versions decide what was measured.
PACKAGES: tuple[str, ...] = ("qemu-system-x86", "ovmf", "refind", "grub-efi-amd64-bin", "busybox-static")
ENVIRONMENT_FILE = "environment.json"


def labkit_version() -> str:
    """The installed labkit version (works even when labkit is imported as a namespace package)."""
    from importlib import metadata

    try:
        return metadata.version("labkit")
    except metadata.PackageNotFoundError:
        import labkit

        return str(getattr(labkit, "__version__", "unknown"))


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpu_model(root: Path) -> str | None:
    text = _read(root, "proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "model name":
            return val.strip()
    return None


def _mem_total_kib(root: Path) -> int | None:
    text = _read(root, "proc/meminfo") or ""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


def package_versions(runner: Runner, packages: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions via dpkg-query (None: not installed, or no dpkg on this host)."""
    names = list(packages)
    versions: dict[str, str | None] = dict.fromkeys(names)
    try:
        res = runner.run(
            ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n", *names],
            check=False,
            query=True,
        )
    except LabkitError:  # ToolMissing: not a Debian host
        return versions
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] in versions and parts[2].startswith("ii"):
            versions[parts[0]] = parts[1]
    return versions


def guest_kernels(bundles: Iterable[Bundle]) -> dict[str, str]:
    """``uname -a`` of each guest os, from the bundles' ``kernel`` section."""
    return {b.os: b.sections["kernel"].strip() for b in bundles if "kernel" in b.sections}


def capture_environment(
    params: Mapping[str, Any],
    extra: Mapping[str, Any],
    *,
    runner: Runner | None = None,
    root: Path = Path("/"),
) -> dict[str, Any]:
    """Host, tool versions and the run's parameters, as a JSON-able dict.

    ``extra`` carries what only the caller knows: accelerator, guest kernels (see
    :func:`guest_kernels`), kernel command lines, image hashes, ...
    """
    runner = runner or Runner(progress=None)
    uname = platform.uname()
    mem = _mem_total_kib(root)
    debian = _read(root, "etc/debian_version")
    env: dict[str, Any] = {
        "captured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "uname": " ".join([uname.system, uname.node, uname.release, uname.version, uname.machine]),
            "hostname": uname.node,
            "kernel_release": uname.release,
            "machine": uname.machine,
            "cpu_model": _cpu_model(root),
            "nproc": os.cpu_count(),
            "ram_mib": round(mem / 1024) if mem is not None else None,
            "debian_version": debian.strip() if debian else None,
        },
        "python": sys.version.split()[0],
        "labkit_version": labkit_version(),
        "packages": package_versions(runner),
        "guest_kernel": extra.get("guest_kernel"),
        "params": dict(params),
        "extra": {k: v for k, v in extra.items() if k != "guest_kernel"},
    }
    json.dumps(env, default=str)  # fail here, not at write time, on non-JSON values
    return env


def write_environment(env: Mapping[str, Any], run_dir: Path) -> Path:
    path = Path(run_dir) / ENVIRONMENT_FILE
    atomic_write_text(path, json.dumps(env, indent=2, sort_keys=True, default=str) + "\n")
    return path


def load_environment(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / ENVIRONMENT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabkitError(f"no {ENVIRONMENT_FILE} in {run_dir}", "the benchmark writes it with the results") from None
    except json.JSONDecodeError as exc:
        raise LabkitError(f"{path} is not valid JSON: {exc}", "re-run the benchmark to write it again") from None
    if not isinstance(data, dict):
        raise LabkitError(f"{path} must hold a JSON object")
    return data


#: Parameter names a run recorded before the settings table (labkit.lab.run.LabParams), and their names now.
RENAMED_PARAMS = {"world": "package_set", "accel_candidates": "accel"}


def recorded_params(env: Mapping[str, Any]) -> dict[str, Any]:
    """A run's recorded ``params`` under today's setting names: older runs' names mapped
    (:data:`RENAMED_PARAMS`), their ``None`` (no value) written as today's empty value (``max_boots``: 0)."""
    raw = env.get("params")
    params = dict(raw) if isinstance(raw, Mapping) else {}
    for old, new in RENAMED_PARAMS.items():
        if old in params:
            value = params.pop(old)
            params.setdefault(new, value)
    return {k: (0 if k == "max_boots" else "") if v is None else v for k, v in params.items()}


def host_name(env: Mapping[str, Any]) -> str:
    """The host a run was measured on: ``host.hostname``, else the node field of ``host.uname`` (older runs)."""
    host = env.get("host") or {}
    name = host.get("hostname") if isinstance(host, Mapping) else None
    if not name and isinstance(host, Mapping) and isinstance(host.get("uname"), str):
        parts = host["uname"].split()
        name = parts[1] if len(parts) > 1 else None
    return str(name) if name else "unknown-host"


#: Items of environment.json that say on what (host, tools, versions) a run was measured: ``--like`` warns
#: about each one that differs, and the merge lists those that differ between runs.
SETUP_PREFIXES: tuple[str, ...] = ("host.", "python", "labkit_version", "packages.", "extra.host_versions.",
                                   "guest_kernel", "extra.accel", "extra.guest_kind", "extra.guests.")
#: Items that differ on every run and say nothing about the setup.
VOLATILE_KEYS: tuple[str, ...] = ("captured_at", "extra.run_id", "extra.wall_s", "extra.image.", "params.out",
                                  "params.cache_dir", "extra.matrix.", "extra.like.", "extra.boots_ok",
                                  "extra.boots_failed", "extra.qemu_argv_example", "extra.load_cost.rows")


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    """``key`` is one of ``prefixes`` or lies under one (``extra.accel`` matches itself, not ``extra.accel_tried``,
    whose smoke-boot messages differ on every run)."""
    return any(key == p or key.startswith(p if p.endswith(".") else p + ".") for p in prefixes)


def _is_setup(key: str) -> bool:
    return _matches(key, SETUP_PREFIXES) and not _matches(key, VOLATILE_KEYS)


def environment_differences(
    a: Mapping[str, Any], b: Mapping[str, Any], *, setup_only: bool = True
) -> list[tuple[str, str, str]]:
    """``(item, value in a, value in b)`` for every flattened item that differs (``—``: absent).

    ``setup_only``: only the host, tools and versions (:data:`SETUP_PREFIXES`); else every item but the
    volatile ones (time stamps, run ids, durations)."""
    fa, fb = flatten(a), flatten(b)
    out = []
    for key in sorted(set(fa) | set(fb)):
        if _matches(key, VOLATILE_KEYS) or (setup_only and not _is_setup(key)):
            continue
        va, vb = fa.get(key, "—"), fb.get(key, "—")
        if va != vb:
            out.append((key, va, vb))
    return out


def flatten(env: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dict → ``{"host.cpu_model": "...", ...}`` for a two-column table."""
    out: dict[str, str] = {}
    for k, v in env.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = "—" if v is None else (json.dumps(v) if isinstance(v, list | tuple) else str(v))
    return out
