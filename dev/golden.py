"""Golden run: record a set of curated datasets, then compare a later run with it array by array.

    python dev/golden.py record  GOLDEN_DIR DATASET_DIR...   # copy the datasets' contract files in
    python dev/golden.py compare GOLDEN_DIR DATASET_DIR...   # exit 1 on any difference

It reads the datasets with zarr and pyarrow directly (not through this package), so it judges a
refactor of the package without depending on it. Compared per dataset: every manifest row (the
machine-specific `source_file` column dropped), the quarantine and filtered tables, `dataset.json`
(config and its hash), `stats.json`, and every array of every shard (dtype, shape, values).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import zarr

from schemas.dataset import shard_key

TABLES = ("manifest.parquet", "quarantine.parquet", "filtered.parquet")
JSONS = ("dataset.json", "stats.json")
# Columns that name where the source lay on this machine, or hold a traceback text.
MACHINE_COLUMNS = ("source_file", "error")
MACHINE_JSON_KEYS = ("source", "created", "seconds", "wall", "path")


def _table(path: Path) -> list[dict]:
    """Rows without machine columns; sub-shard names without their attempt id (random per run)."""
    t = pq.read_table(path)
    rows = t.drop([c for c in MACHINE_COLUMNS if c in t.column_names]).to_pylist()
    return [{**r, "shard": shard_key(r["shard"])} if "shard" in r else r for r in rows]


def _strip(obj):
    """A JSON document without the keys that hold paths or timings."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not any(m in k for m in MACHINE_JSON_KEYS)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _arrays(dataset: Path) -> dict[str, np.ndarray]:
    out = {}
    for shard in sorted((dataset / "shards").iterdir()):
        if not shard.is_dir() or shard.name.startswith("."):
            continue
        group = zarr.open_group(str(shard), mode="r")
        for name, node in group.members(max_depth=None):
            if isinstance(node, zarr.Array):
                out[f"{shard_key(shard.name)}/{name}"] = node[...]
    return out


def compare(golden: Path, dataset: Path) -> list[str]:
    """Differences between a recorded golden dataset and a new one (empty when identical)."""
    diffs = []
    for name in TABLES:
        a, b = golden / name, dataset / name
        if a.exists() != b.exists():
            diffs.append(f"{name}: present in only one")
        elif a.exists() and _table(a) != _table(b):
            diffs.append(f"{name}: rows differ")
    for name in JSONS:
        a, b = golden / name, dataset / name
        if a.exists() != b.exists():
            diffs.append(f"{name}: present in only one")
        elif a.exists() and _strip(json.loads(a.read_text())) != _strip(json.loads(b.read_text())):
            diffs.append(f"{name}: content differs")
    xa, xb = _arrays(golden), _arrays(dataset)
    if sorted(xa) != sorted(xb):
        diffs.append(f"arrays: names differ: {sorted(set(xa) ^ set(xb))[:8]}")
    for key in sorted(set(xa) & set(xb)):
        a, b = xa[key], xb[key]
        if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            diffs.append(f"array {key}: {a.dtype}{a.shape} vs {b.dtype}{b.shape} or values differ")
    return diffs


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("record", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, golden_root, datasets = argv[0], Path(argv[1]), [Path(d) for d in argv[2:]]
    bad = 0
    for ds in datasets:
        target = golden_root / ds.name
        if mode == "record":
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ds, target)
            print(f"recorded {ds} -> {target} ({len(_arrays(target))} arrays)")
            continue
        diffs = compare(target, ds)
        bad += bool(diffs)
        print(f"{ds.name}: {'IDENTICAL' if not diffs else 'DIFFERENT'} ({len(_arrays(ds))} arrays)")
        for d in diffs:
            print(f"  {d}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
