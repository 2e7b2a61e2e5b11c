"""Reporting helpers shared by every command: `--json` output, bench JSON files (the tables and
JSON text come from curation.formats)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from curation.formats import format_table, markdown_table, to_json

__all__ = ["add_report_args", "emit", "format_table", "markdown_table", "summarise", "to_json", "write_bench_json"]


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
