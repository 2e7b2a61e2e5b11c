"""Attempt markers: one empty file per attempt at a piece of work, written by the attempt itself
before it starts the work, in a directory on the job's (shared) storage.

A marker survives the loss of the worker or node that wrote it, costs no call that the attempt
waits for (a Ray task blocked in `ray.get` hands its CPU back and the raylet starts one more
worker), and needs no coordinator: the job and its engines count the files afterwards.

    <dir>/<key>.<pid>.<start ns>.<uuid8>.<node>

key: the work's number (a unit's shard group, or an engine's task key); pid: the worker process;
start ns: `time.time_ns()` when the attempt began (orders a retry after the attempt it redoes);
node: where it ran (the Ray node id, or the host name); last, since a host name may hold dots.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class Attempt:
    key: int
    pid: int
    started_ns: int
    node: str


def mark(directory: str | os.PathLike, key: int, node: str | None = None) -> None:
    """Record one attempt at work `key` (creates the directory)."""
    os.makedirs(directory, exist_ok=True)
    node = node or socket.gethostname()
    name = f"{int(key):05d}.{os.getpid()}.{time.time_ns()}.{uuid.uuid4().hex[:8]}.{node}"
    open(os.path.join(directory, name), "w").close()


def read(directory: str | os.PathLike) -> list[Attempt]:
    """Every attempt marked in `directory`, in start order (none if it does not exist)."""
    out = []
    for name in os.listdir(directory) if os.path.isdir(directory) else []:
        key, pid, started, _, node = name.split(".", 4)
        out.append(Attempt(int(key), int(pid), int(started), node))
    return sorted(out, key=lambda a: (a.started_ns, a.key))
