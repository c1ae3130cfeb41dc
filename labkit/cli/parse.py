"""``labkit parse FILE [--format F] [--json]``: parse a probe bundle or one raw output into records."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from labkit.core.errors import InputError


def _summary(result: dict[str, Any]) -> str:
    if result["format"] == "bundle":
        lines = [f"bundle: os={result['os']} guest={result['guest']} ok={result['ok']}"]
        for name, rec in result["sections"].items():
            n = len(rec) if isinstance(rec, list | dict) else 1
            lines.append(f"  {name}: {n} record(s)")
        for name, value in result.get("metrics", {}).items():
            lines.append(f"  metric {name} = {value:.6g}")
        for name, why in result.get("missing", {}).items():
            lines.append(f"  metric {name}: missing — {why}")
        return "\n".join(lines)
    rec = result["records"]
    n = len(rec) if isinstance(rec, list | dict) else 1
    return f"{result['format']}: {n} record(s)\n{json.dumps(rec, indent=2, default=str)[:4000]}"


def _cmd_parse(args: argparse.Namespace) -> int:
    from labkit.measure.parsers import parse_text

    path = Path(args.file)
    if str(path) == "-":
        text = sys.stdin.read()
    elif not path.is_file():
        raise InputError(f"no file {path}", "pass a bundle (bundles/<os>-<n>.txt) or a raw output file")
    else:
        text = path.read_bytes().decode("utf-8", errors="replace")
    result = parse_text(text, args.format)
    if args.metrics and result["format"] == "bundle":
        from labkit.measure.bundle import parse_bundle_text
        from labkit.measure.metrics import measure_bundle

        measured = measure_bundle(parse_bundle_text(text))
        result["metrics"] = {m.name: m.value for m in measured.metrics}
        result["missing"] = measured.reasons()  # every metric that applies but has no value: why
    print(json.dumps(result, indent=2, default=str) if args.json else _summary(result))
    return 0


def register(sub: Any) -> None:
    from labkit.measure.parsers import FORMATS

    p = sub.add_parser("parse", help="parse a probe bundle or one raw output (format detected or named)")
    p.add_argument("file", help="the file to parse ('-' for stdin)")
    p.add_argument("--format", choices=["bundle", *FORMATS], help="the format (default: detected)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--metrics", action="store_true", help="for a bundle: also compute its metrics")
    p.set_defaults(func=_cmd_parse)
