"""Reporting helpers shared by every command: `--json` output, tables, bench JSON files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(obj: Any) -> str:
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    """A plain aligned text table of dict rows."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if not math.isfinite(float(v)) else format(float(v), floatfmt)
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def markdown_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f") -> str:
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "nan" if not math.isfinite(float(v)) else format(float(v), floatfmt)
        return "" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def emit(result: dict, as_json: bool, text: str | None = None) -> None:
    """Print `result` as JSON when --json, else the human text (or JSON if none given)."""
    if as_json or text is None:
        print(to_json(result))
    else:
        print(text)


def write_bench_json(name: str, result: dict, path: str | os.PathLike | None = None) -> Path:
    """Write a bench result to PATH (default bench-results/<name>.json) and return the path."""
    out = Path(path) if path else Path("bench-results") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(to_json(result) + "\n")
    return out


def add_report_args(parser, bench: str | None = None) -> None:
    """--json on every reporting command; --out-json on bench commands."""
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    if bench:
        parser.add_argument("--out-json", default=None, help=f"where to write the JSON (default bench-results/{bench}.json)")


def summarise(values: Iterable[float]) -> dict:
    a = np.asarray(list(values), dtype=np.float64)
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "mean": float(a.mean()), "median": float(np.median(a)), "min": float(a.min()), "max": float(a.max())}
