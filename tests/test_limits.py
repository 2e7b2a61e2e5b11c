"""Limits on one episode: past source.max_steps / max_frame_pixels / max_episode_bytes it is
quarantined with reason `limit`, the rest of the job goes on; quarantine rows name no home
directory or host."""

from __future__ import annotations

import os
import socket

import pyarrow.parquet as pq

from test_pipeline_helpers import job_config


def test_episode_past_a_limit_is_quarantined_with_reason_limit(bridge_dir, tmp_path):
    from pipelines.job import run_job

    cfg = job_config(bridge_dir, **{"source.stop": 6, "source.max_frame_pixels": 64 * 64 - 1})
    s = run_job(cfg, tmp_path / "px", progress=False)
    assert s["counts"]["written"] == 0 and s["counts"]["quarantined"] == 6
    rows = pq.read_table(tmp_path / "px" / "quarantine.parquet").to_pylist()
    assert {r["stage"] for r in rows} == {"limit"}
    assert rows[0]["reason"] == "limit: 4096 pixels per frame > source.max_frame_pixels = 4095"

    cfg = job_config(bridge_dir, **{"source.stop": 3, "source.max_steps": 9})
    s = run_job(cfg, tmp_path / "steps", progress=False)
    rows = pq.read_table(tmp_path / "steps" / "quarantine.parquet").to_pylist()
    assert [r["reason"] for r in rows] == ["limit: 10 steps > source.max_steps = 9"] * 3


def test_quarantine_rows_name_no_home_or_host():
    from pipelines.stages import _short_tb

    home, host = os.path.expanduser("~"), socket.gethostname()
    try:
        raise ValueError(f"cannot open {home}/data/x on {host}")
    except ValueError as exc:
        text = _short_tb(exc)
    assert "~/data/x on <host>" in text and home + "/" not in text and host not in text
