"""Durable commits on a POSIX filesystem: data reaches the disk before the rename that makes it
visible, and the rename itself is made durable by syncing the directory that holds it. Without
these, a power loss after a commit could leave a committed name pointing at empty files."""

from __future__ import annotations

import os
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
