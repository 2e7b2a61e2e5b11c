"""Diff two versions (or local dataset directories): episodes added, removed and changed by
their manifest checksums, and the dataset-level files that differ."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Optional

from curation.registry.content import hash_dataset
from curation.registry.refs import PublishError, parse_ref
from curation.registry.versions import read_index, resolve
from schemas.dataset import MANIFEST


def _manifest_checksums(ref: str, storage_options: Optional[dict]) -> tuple[str, dict[str, str]]:
    """{episode_id: checksum} of a published version, or of a local dataset directory."""
    import pyarrow.parquet as pq

    if "@" not in ref and Path(ref, MANIFEST).is_file():
        table = pq.read_table(Path(ref, MANIFEST), columns=["episode_id", "checksum"])
        label = str(ref)
    else:
        fs, root, version = resolve(ref, storage_options)
        path = posixpath.join(root, MANIFEST)
        if not fs.exists(path):
            raise PublishError(f"{ref}: the version has no {MANIFEST}")
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=["episode_id", "checksum"])
        base_url, name, _ = parse_ref(ref)
        label = f"{base_url.rstrip('/')}/{name}@{version}"
    return label, dict(zip(table.column("episode_id").to_pylist(), table.column("checksum").to_pylist()))


def diff(ref_a: str, ref_b: str, storage_options: Optional[dict] = None) -> dict:
    """Episodes added (in b only), removed (in a only) and changed (same id,
    different checksum) from a to b. Refs are `URL/NAME@V` or local dataset dirs."""
    label_a, a = _manifest_checksums(ref_a, storage_options)
    label_b, b = _manifest_checksums(ref_b, storage_options)
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    changed = sorted(e for e in set(a) & set(b) if a[e] != b[e])
    fa, fb = _file_hashes(ref_a, storage_options), _file_hashes(ref_b, storage_options)
    return {
        "a": label_a,
        "b": label_b,
        "episodes_a": len(a),
        "episodes_b": len(b),
        "added": added,
        "removed": removed,
        "changed": changed,
        "unchanged": len(set(a) & set(b)) - len(changed),
        # dataset-level files (card, stats, config) that differ; shard files follow the episodes
        "files_changed": sorted(f for f in set(fa) | set(fb) if fa.get(f) != fb.get(f) and not f.startswith("shards/")),
    }


def _file_hashes(ref: str, storage_options: Optional[dict]) -> dict[str, str]:
    if "@" not in ref and Path(ref, MANIFEST).is_file():
        return {rel: f["sha256"] for rel, f in hash_dataset(ref, progress=False).items()}
    return {rel: f["sha256"] for rel, f in read_index(ref, storage_options)["files"].items()}
