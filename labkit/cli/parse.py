"""``labkit parse FILE [--format F] [--json]``: parse a probe bundle or one raw output into records."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from labkit.core.errors import InputError
from labkit.core.text import dumps_json

#: A probe bundle is a few hundred KiB; anything much larger is the wrong file.
MAX_PARSE_BYTES = 64 * 1024 * 1024


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
    return f"{result['format']}: {n} record(s)\n{dumps_json(rec, indent=2)[:4000]}"


def _cmd_parse(args: argparse.Namespace) -> int:
    from labkit.core.files import read_user_bytes
    from labkit.measure.parsers import parse_text

    path = Path(args.file)
    if str(path) == "-":
        data = sys.stdin.buffer.read(MAX_PARSE_BYTES + 1)
        if len(data) > MAX_PARSE_BYTES:
            raise InputError(f"the input is over labkit's limit of {MAX_PARSE_BYTES} bytes",
                             "a bundle is a few hundred KiB: check what you piped in")
    else:
        data = read_user_bytes(path, what="the file to parse", limit=MAX_PARSE_BYTES,
                               fix="pass a bundle (bundles/<os>-<n>.txt) or a raw output file")
    text = data.decode("utf-8", errors="replace")
    result = parse_text(text, args.format)
    if args.metrics and result["format"] == "bundle":
        from labkit.measure.bundle import parse_bundle_text
        from labkit.measure.metrics import measure_bundle

        measured = measure_bundle(parse_bundle_text(text))
        result["metrics"] = {m.name: m.value for m in measured.metrics}
        result["missing"] = measured.reasons()  # every metric that applies but has no value: why
    print(dumps_json(result, indent=2) if args.json else _summary(result))
    return 0


def register(sub: Any) -> None:
    from labkit.measure.parsers import FORMATS

    p = sub.add_parser("parse", help="parse a probe bundle or one raw output (format detected or named)")
    p.add_argument("file", help="the file to parse ('-' for stdin)")
    p.add_argument("--format", choices=["bundle", *FORMATS], help="the format (default: detected)")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--metrics", action="store_true", help="for a bundle: also compute its metrics")
    p.set_defaults(func=_cmd_parse)
