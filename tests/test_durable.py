"""Durable commits: every file of a shard is fsync'd before the rename that commits it and the
shards directory after; `--overwrite` moves the old dataset aside first, so a crash in the middle
leaves an unfinished dataset (no manifest) that the next run cleans, never half a finished one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_pipeline_helpers import job_config


def test_shard_files_are_synced_before_the_commit_rename(bridge_dir, tmp_path, monkeypatch):
    from pipelines.job import run_job

    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src)))
        events.append(("renamed", str(dst)))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    out = tmp_path / "ds"
    run_job(job_config(bridge_dir, **{"source.stop": 6}), out, progress=False)
    commits = [i for i, (k, p) in enumerate(events) if k == "rename" and "/shards/.tmp-shard-" in p]
    assert len(commits) == 2
    for i in commits:
        tmp = events[i][1]
        files = [os.path.join(d, n) for d, _, ns in os.walk(events[i + 1][1]) for n in ns]
        synced = {p.replace(tmp, events[i + 1][1]) for k, p in events[:i] if k == "fsync"}
        assert files and set(files) <= synced  # every committed file reached the disk first
        later = [p for k, p in events[i + 2:] if k == "fsync"]
        assert str(out / "shards") in later  # and the rename itself
    assert ("fsync", str(out / "manifest.parquet")) not in events  # synced under its temporary name
    assert ("fsync", str(out / f".tmp-manifest.parquet-{os.getpid()}")) in events


def test_overwrite_crash_midway_leaves_no_finished_dataset(bridge_dir, tmp_path, monkeypatch):
    import pipelines.job as job

    out = tmp_path / "ds"
    job.run_job(job_config(bridge_dir, **{"source.stop": 3}), out, progress=False)
    assert (out / "manifest.parquet").exists()

    def crash(path, *a, **k):
        raise KeyboardInterrupt("killed while deleting the old dataset")

    with monkeypatch.context() as mp:
        mp.setattr(job.shutil, "rmtree", crash)
        with pytest.raises(KeyboardInterrupt):
            job.run_job(job_config(bridge_dir, **{"source.stop": 3, "seed": 1}), out, progress=False, overwrite=True)
    assert not (out / "manifest.parquet").exists() and not (out / "shards").exists()
    assert len(list(out.glob(".trash-*"))) == 1
    s = job.run_job(job_config(bridge_dir, **{"source.stop": 3, "seed": 1}), out, progress=False, overwrite=True)
    assert s["complete"] and (out / "manifest.parquet").exists() and not list(out.glob(".trash-*"))


def test_resume_refuses_a_changed_source(bridge_dir, tmp_path):
    from pipelines.job import JobError, run_job

    src = tmp_path / "src"
    shutil.copytree(bridge_dir, src)
    for p in src.iterdir():
        p.chmod(0o644)
    out = tmp_path / "ds"
    run_job(job_config(src, **{"source.stop": 3}), out, progress=False)
    val = next(src.glob("*-val.tfrecord-*"))
    val.write_bytes(val.read_bytes()[:-10])  # another file of the source changed
    with pytest.raises(JobError, match="changed since this job started"):
        run_job(job_config(src, **{"source.stop": 3}), out, progress=False)


def test_resume_refuses_shards_of_another_contract(bridge_dir, tmp_path):
    """Shards committed under contract 3.0 (no chunk checksums) and 3.1 must not mix in one dataset."""
    import json

    from pipelines.job import JobError, run_job

    out = tmp_path / "ds"
    cfg = job_config(bridge_dir, **{"source.stop": 3})
    run_job(cfg, out, progress=False)
    state_path = out / ".job" / "job.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "contract_version": "3.0.0"}))
    with pytest.raises(JobError, match="written under data contract 3.0.0, this code writes 3.1.0"):
        run_job(cfg, out, progress=False)
    assert run_job(cfg, out, progress=False, overwrite=True)["complete"]


def test_committed_unit_must_match_its_planned_range():
    from pipelines.job import JobError, check_committed_against_plan
    from pipelines.stages import UnitTask

    units = [UnitTask(0, "train", 0, 3), UnitTask(1, "train", 3, 6)]
    ok = {0: {"episodes": [{"episode_index": 0}, {"episode_index": 2}], "quarantine": [{"episode_index": 1}]}}
    check_committed_against_plan(Path("/out"), ok, units)
    bad = {1: {"episodes": [{"episode_index": 2}, {"episode_index": 4}]}}
    with pytest.raises(JobError, match=r"shard-00001 holds episodes \[2, 5\), but the plan has \[3, 6\)"):
        check_committed_against_plan(Path("/out"), bad, units)
