"""Durable commits on a POSIX filesystem: data reaches the disk before the rename that makes it
visible, and the rename itself is made durable by syncing the directory that holds it. Without
these, a power loss after a commit could leave a committed name pointing at empty files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory `path` (a rename, link or new file in it) durable."""
    fsync_file(path)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file under `root`, then every directory, deepest first."""
    dirs = []
    for d, _, names in os.walk(root):
        dirs.append(d)
        for n in names:
            fsync_file(os.path.join(d, n))
    for d in reversed(dirs):
        fsync_dir(d)


def replace_durably(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """os.replace(tmp, path) with tmp's data synced before and the directory after."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def write_replacing(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` as a new file at `path`: a temporary file beside it, synced, then renamed over
    whatever `path` was. A symlink planted at `path` is replaced, never written through, so a
    writer cannot be made to overwrite the file it points at."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        replace_durably(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def real_directory(path: str | os.PathLike) -> Path:
    """`path` as a directory of its own (created if missing); a symlink there is refused, so files
    written into it land inside the dataset, not wherever the link points."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{path}: is a symlink; refusing to write through it")
    path.mkdir(exist_ok=True)
    return path
