"""The dataset directory's lock: a job writing the dataset holds it exclusively, a publish (which
reads the dataset) holds it shared. flock is released by the OS when the holder dies (even by
SIGKILL), so a killed run never blocks its restart. POSIX advisory locks: the output directory
must be on a filesystem that honours flock (local disks, NFSv4 with locking; not object stores)."""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path

JOB_DIR = ".job"  # job state inside the dataset directory; hidden, so never published
LOCK_FILE = "lock"


class DatasetBusy(RuntimeError):
    """Another process holds the dataset's lock in a conflicting mode."""


@contextmanager
def dataset_lock(out_dir: Path, shared: bool = False):
    """Hold `out_dir`'s lock (exclusive for a writer, shared for a reader); yields the job dir."""
    job_dir = Path(out_dir) / JOB_DIR
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        fh = open(job_dir / LOCK_FILE, "a")
    except PermissionError:
        if not shared:
            raise
        yield job_dir  # a directory this process cannot write: no job of ours can be writing it either
        return
    try:
        fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise DatasetBusy(f"{out_dir}: a curate run is writing this dataset (lock {job_dir / LOCK_FILE})") from None
    try:
        yield job_dir
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()
