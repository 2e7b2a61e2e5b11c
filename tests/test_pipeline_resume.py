"""A real `curate run` killed with SIGKILL mid-job and started again with the same
arguments finishes the job without redoing committed shards, and the result equals
an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_pipeline_helpers import FAST, assert_same_dataset, cached_run

CURATE = [sys.executable, "-m", "cli.main"]


def _committed(out: Path) -> list[str]:
    from curation.store.writer import read_commit

    d = out / "shards"
    # only committed names: a temporary shard holds its commit record before its rename
    return sorted(p.name for p in d.iterdir() if p.name.startswith("shard-") and read_commit(p) is not None) if d.is_dir() else []


def test_sigkill_then_resume_equals_uninterrupted(bridge_dir, tmp_path):
    reference, _ = cached_run("bridge-local", bridge_dir)
    out = tmp_path / "ds"
    cmd = CURATE + ["run", str(bridge_dir), "--out", str(out), "--runner", "local", "--shard-episodes", "3",
                    "--no-progress", "--json"] + [a for s in FAST for a in ("--set", s)]
    env = {**os.environ, "MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not _committed(out) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _committed(out)
    assert 1 <= len(done_before) < 9
    assert not (out / "manifest.parquet").exists()  # an unfinished dataset has no manifest
    mtimes = {n: (out / "shards" / n / "zarr.json").stat().st_mtime_ns for n in done_before}
    (out / "shards" / ".tmp-shard-00008-deadbeef").mkdir()  # a leftover of a killed writer
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads(res.stdout)
    assert s["complete"] and s["counts"]["units_resumed"] == len(done_before) and s["stale_removed"] >= 1
    assert s["episodes_processed_this_run"] == 25 - 3 * len(done_before)
    assert s["attempts"]["units"] == s["attempts"]["attempts"] == 9 - len(done_before) and s["attempts"]["retries"] == 0
    # Committed shards were not rewritten.
    assert mtimes == {n: (out / "shards" / n / "zarr.json").stat().st_mtime_ns for n in done_before}
    assert not any(p.name.startswith(".tmp") for p in (out / "shards").iterdir())
    assert_same_dataset(reference, out)
