"""What a version holds: the files of a dataset directory, their sha256 and sizes, and the
content checksum over them (equal iff every file is equal)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from curation.registry.refs import PublishError
from curation.registry.storage import sha256_file


def content_checksum(files: dict[str, dict]) -> str:
    """sha256 over the sorted 'path sha256 size' lines: equal iff every file is equal."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\t{files[rel]['sha256']}\t{files[rel]['size']}\n".encode())
    return h.hexdigest()


def dataset_files(dataset_dir: str | os.PathLike) -> list[str]:
    """Relative POSIX paths of the files to publish: everything except uncommitted
    shard temporaries (`.tmp-*`) and editor/OS litter (hidden files)."""
    root = Path(dataset_dir)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        # A symlink could make publish upload a file from anywhere (say card/x.png -> ~/.aws/credentials);
        # a device or FIFO has no content to hash. rglob does not follow symlinked directories.
        if p.is_symlink():
            raise PublishError(f"{p}: is a symbolic link (to {os.readlink(p)}); a dataset to publish holds regular files only")
        if p.is_dir():
            continue
        if not p.is_file():
            raise PublishError(f"{p}: not a regular file; a dataset to publish holds regular files only")
        out.append(rel.as_posix())
    return out


def hash_dataset(dataset_dir: str | os.PathLike, progress: bool = True) -> dict[str, dict]:
    """{relative path: {"sha256", "size"}} of every file to publish."""
    from schemas.progress import progress_bar

    root = Path(dataset_dir)
    rels = dataset_files(root)
    sizes = {rel: (root / rel).stat().st_size for rel in rels}
    files = {}
    with progress_bar(total=sum(sizes.values()), unit="B", unit_scale=True, desc="hash", disable=not progress, leave=False) as bar:
        for rel in rels:
            files[rel] = {"sha256": sha256_file(root / rel), "size": sizes[rel]}
            bar.update(sizes[rel])
    return files
