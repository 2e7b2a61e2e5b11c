"""Verify a published version: every file re-hashed against its index, missing and unexpected
files listed, the index's content checksum recomputed."""

from __future__ import annotations

import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Optional

from curation.registry.content import content_checksum
from curation.registry.storage import IO_THREADS, is_local, sha256_remote
from curation.registry.versions import resolve_index


@dataclass
class VerifyResult:
    ref: str
    ok: bool
    files_checked: int
    bytes_checked: int
    mismatched: list[dict] = field(default_factory=list)  # {path, expected, actual}
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    index_checksum_ok: bool = True  # content_checksum agrees with the file list

    def to_dict(self) -> dict:
        return asdict(self)


def verify(ref: str, storage_options: Optional[dict] = None, progress: bool = True) -> VerifyResult:
    """Re-hash every file of a published version against its index."""
    from schemas.progress import progress_bar

    fs, version_dir, index, base_url = resolve_index(ref, storage_options)
    root = posixpath.join(version_dir, index["data_prefix"])
    files = index["files"]
    fs.invalidate_cache(root)
    present = {posixpath.relpath(p, root): info.get("size") for p, info in fs.find(root, detail=True).items()} if fs.exists(root) else {}
    missing = sorted(rel for rel in files if rel not in present)
    unexpected = sorted(rel for rel in present if rel not in files)
    mismatched = []
    todo = sorted(rel for rel in files if rel in present)

    def check(rel: str) -> Optional[dict]:
        expected = files[rel]
        if present[rel] != expected["size"]:
            return {"path": rel, "expected": f"{expected['size']} bytes", "actual": f"{present[rel]} bytes"}
        digest = sha256_remote(fs, posixpath.join(root, rel))
        if digest != expected["sha256"]:
            return {"path": rel, "expected": expected["sha256"], "actual": digest}
        return None

    total = sum(files[rel]["size"] for rel in todo)
    with progress_bar(total=total, unit="B", unit_scale=True, desc="verify", disable=not progress, leave=False) as bar:
        with ThreadPoolExecutor(max_workers=1 if is_local(fs) else IO_THREADS) as pool:
            for rel, bad in zip(todo, pool.map(check, todo)):
                bar.update(files[rel]["size"])
                if bad:
                    mismatched.append(bad)
    index_ok = content_checksum(files) == index.get("content_checksum")
    full_ref = f"{base_url.rstrip('/')}/{index['name']}@{index['version']}"
    return VerifyResult(
        ref=full_ref,
        ok=not (mismatched or missing or unexpected) and index_ok,
        files_checked=len(todo),
        bytes_checked=total,
        mismatched=mismatched,
        missing=missing,
        unexpected=unexpected,
        index_checksum_ok=index_ok,
    )
